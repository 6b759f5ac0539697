"""Checks of the backup and restore drills, from what each drill recorded
(drill.json, lost.json, geo_scan.json) and the SLO's recovery objectives
(seed §7.2: RPO 15 min, RTO 2 h); the geo copy's encryption at rest (seed
§8: AES-256) from its leak scan."""

from __future__ import annotations

from dataclasses import dataclass

from reports.rundata import Run

from ..drills.rpo_rto import GROWTH_GB_PER_YEAR, combined_projection, project_rto
from .core import Check, at_least, at_most

__all__ = ["RestoreChecks", "PitrChecks", "MaskedChecks", "MigrationChecks", "DRILL_CHECKS",
           "RECOVERY_KEYS", "MIGRATION_KEYS", "geo_checks"]

RECOVERY_KEYS = ("rpo_seconds_max", "rto_seconds_max")
MIGRATION_KEYS = ("migration_blocked_ms_max", "migration_errors_max")
PARTS = ("rto_destroy_s", "rto_decrypt_s", "rto_copy_s", "rto_wal_replay_s", "rto_promotion_s",
         "rto_reconnect_s")     # rto_decrypt_s: restores from the geo copy (None otherwise, or absent)


def _recorded(run: Run) -> dict:
    d = run.json("drill.json")
    if d is None:
        raise FileNotFoundError(f"{run.path}/drill.json: the drill recorded no measurements")
    return d


@dataclass(frozen=True)
class RestoreChecks:
    """RPO and RTO against the objectives; with a stream-sync strategy no
    acknowledged write may be lost; with a target time, what is before it is
    back and what is after it is not.  A run of several strategies has one
    child run directory per strategy, each judged on its own first."""
    keys = RECOVERY_KEYS

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        modes = run.info.get("matrix") or []
        if modes:
            return self._strategies(run, modes, slo)
        d = _recorded(run)
        m = dict(d["metrics"])
        lost = run.json("lost.json", []) or []
        checks = [
            at_most("rpo-seconds", m["rpo_seconds"], slo["rpo_seconds_max"],
                    lost_writes=m["rpo_lost_writes"], wal=m["wal"]),
            at_most("rto-seconds", m["rto_seconds"], slo["rto_seconds_max"],
                    **{k: m.get(k) for k in PARTS if k in m}),
        ]
        if "acked_after_restore_lost" in m:     # (drills recorded before it have no such count)
            later = run.json("lost_after_restore.json", []) or []
            checks.append(at_most("no-ack-lost-after-restore", m["acked_after_restore_lost"], 0,
                                  acked_after_restore=m["acked_after_restore"],
                                  lost=[a["id"] for a in later][:20]))
        target = d.get("target")
        if m["wal"] == "stream-sync" and target is None:
            checks.append(at_most("sync-no-acked-write-lost", len(lost), 0,
                                  lost=[a["id"] for a in lost][:20]))
        if target is not None:
            checks.append(at_most("target-before-present", len(target["early_missing"]), 0,
                                  missing=target["early_missing"][:20]))
            checks.append(at_most("target-after-absent", len(target["late_present"]), 0,
                                  present=target["late_present"][:20]))
        scan = run.json("geo_scan.json")
        if scan is not None:
            checks += geo_checks(scan)
            m["geo_scan"] = {"geo_files": scan["geo"]["files"], "geo_bytes": scan["geo"]["bytes"],
                             "geo_matches": scan["geo"]["matches"],
                             "control_matches": scan["control"]["matches"],
                             "encrypted_files": scan["encryption"]["encrypted"]}
        r = d["rates"]
        m["projection"] = project_rto(copy_mb_s=r["copy_mb_s"], replay_mb_s=r["replay_mb_s"],
                                      wal_per_data_byte=r["wal_per_data_byte"],
                                      growth_gb_per_year=GROWTH_GB_PER_YEAR[m["db"]],
                                      fixed_s=r["fixed_s"], target_s=slo["rto_seconds_max"])
        return checks, m

    def _strategies(self, run: Run, modes: list[str], slo: dict) -> tuple[list[Check], dict]:
        checks, strategies = [], {}
        for mode in modes:
            res = run.children.get(mode) or (Run(run.path / mode).results
                                             if (run.path / mode / "run.json").exists() else None)
            if res is None:
                checks.append(Check(f"{mode}: measured", "unknown", None, None,
                                    {"reason": f"the {mode} drill left no verdict"}))
                continue
            checks += [Check(f"{mode}: {c['name']}", c["verdict"], c["measured"], c["threshold"],
                             c.get("details", {})) for c in res["checks"]]
            if res.get("metrics", {}).get("rto_seconds") is not None:
                strategies[mode] = res["metrics"]
        ms = list(strategies.values())
        projection = combined_projection(ms, ms[0]["db"], slo["rto_seconds_max"]) if ms else None
        return checks, {"strategies": strategies, "projection": projection}


def geo_checks(scan: dict) -> list[Check]:
    """The geo copy's encryption, from geo_scan.json: every file has the
    msdb-geo header and authenticates with the key (geo-copy-encrypted), and
    the drill's marker is nowhere in its bytes while the same scan finds it in
    this region's unencrypted backup or archive (geo-leak-scan; without that
    control, finding nothing proves nothing: unknown)."""
    enc, geo, control = scan["encryption"], scan["geo"], scan["control"]
    planted = {"planted": "the geo copy was written unencrypted on purpose"} \
        if scan.get("planted_plaintext") else {}
    if not enc["files"]:
        encrypted = Check("geo-copy-encrypted", "unknown", None, 0,
                          {"reason": "the geo copy held no file: nothing to judge", **planted})
    else:
        encrypted = at_most("geo-copy-encrypted", enc["plaintext_files"] + enc["failed_files"], 0,
                            files=enc["files"], encrypted=enc["encrypted"], plaintext=enc["plaintext"][:20],
                            failed=enc["failed"][:20], format=enc["format"], key_source=scan["key_source"],
                            **planted)
    details = {"marker": scan["marker"], "files": geo["files"], "bytes": geo["bytes"],
               "matched_files": geo["matched_files"][:20], "control_matches": control["matches"],
               "control_files": control["files"], "control_bytes": control["bytes"], **planted}
    if not geo["files"]:
        leak = Check("geo-leak-scan", "unknown", geo["matches"], 0,
                     {"reason": "the geo copy held no file: nothing was scanned", **details})
    elif not control["matches"]:
        leak = Check("geo-leak-scan", "unknown", geo["matches"], 0,
                     {"reason": "the control scan of this region's unencrypted backup and archive did "
                                "not find the marker either: finding nothing in the geo copy proves "
                                "nothing", **details})
    else:
        leak = at_most("geo-leak-scan", geo["matches"], 0, **details)
    return [encrypted, leak]


@dataclass(frozen=True)
class PitrChecks:
    keys = ()

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        d = _recorded(run)
        m, ev = d["metrics"], d["evidence"]
        return [
            at_least("deleted-rows-back", m["deleted_rows_back"], m["deleted_rows"],
                     missing=ev["deleted_missing"]),
            at_least("accident-deleted-rows", m["deleted_rows"], 1,
                     reason="an accident that deleted nothing proves nothing"),
            at_most("nothing-after-target", m["rows_created_after_target"] + m["acked_after_target_present"],
                    0, rows_created_after_target=m["rows_created_after_target"],
                    acked_after_target_present=ev["late_present"]),
            at_least("writes-after-accident", m["acked_after_target"], 1,
                     reason="without writes after the target, 'nothing after it' proves nothing"),
            at_most("acked-before-target-present", m["acked_before_target_missing"], 0,
                    missing=ev["early_missing"]),
        ], m


@dataclass(frozen=True)
class MaskedChecks:
    keys = ()

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        d = _recorded(run)
        m, ev = d["metrics"], d["evidence"]
        return [
            at_least("check-sees-originals", m["emails_in_unmasked_dump"], m["original_emails"],
                     reason="the scan must find every original email in the unmasked restore, "
                            "or finding none after masking proves nothing"),
            at_least("masked-copy-complete", m["masked_rows"], m["original_emails"]),
            at_most("no-original-email-in-table", m["original_emails_in_masked_table"], 0),
            at_most("no-original-email-in-dump", m["original_emails_in_masked_dump"], 0,
                    leaked=ev["in_dump"]),
            at_most("no-original-name-in-dump", m["original_names_in_masked_dump"], 0,
                    leaked=ev["names_left"]),
        ], m


@dataclass(frozen=True)
class MigrationChecks:
    """A schema change under load (seed §10.1): the longest lock wait it
    imposed on the workload's queries, the workload's failed requests while
    it ran, every step done, and squawk's lint (fails on a finding whose rule
    means a lock that stops reads or writes; the others are listed only)."""
    keys = MIGRATION_KEYS

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        d = _recorded(run)
        m = dict(d["metrics"])
        w = d.get("longest_wait") or {}
        lint = d.get("lint") or {}
        blocking = [f for f in lint.get("findings", []) if f.get("blocking")]
        checks = [
            at_most("migration-blocked-ms", m["blocked_ms_max"], slo["migration_blocked_ms_max"],
                    step=w.get("step"), mode=w.get("mode"), relation=w.get("relation"),
                    query=w.get("query"), waits=m["blocked_waits"], samples=m["lock_samples"],
                    sample_interval_ms=m["lock_sample_interval_ms"]),
            at_most("migration-errors", m["failed_during_change"], slo["migration_errors_max"],
                    errors=(d.get("windows") or {}).get("during", {}).get("errors", [])),
            Check("migration-steps-completed", "pass" if m["steps_completed"] else "fail",
                  sum(s["status"] == "ok" for s in d.get("steps", [])), len(d.get("steps", [])),
                  {"steps": [f"{s['name']}: {s['status']}" for s in d.get("steps", [])]}),
        ]
        if lint.get("error"):
            checks.append(Check("migration-lint", "unknown", None, 0, {"reason": lint["error"]}))
        else:
            checks.append(at_most("migration-lint", len(blocking), 0,
                                  findings=[f"{f['step']}: {f['rule']}" for f in blocking],
                                  informational=[f"{f['step']}: {f['rule']}" for f in lint["findings"]
                                                 if not f.get("blocking")]))
        return checks, m


DRILL_CHECKS = {"drill-restore": (RestoreChecks(),), "drill-pitr": (PitrChecks(),),
                "drill-masked": (MaskedChecks(),), "drill-migration": (MigrationChecks(),)}
