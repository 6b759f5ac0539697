"""The drills on real PostgreSQL: the numbers they report are checked against
what happened, counted independently from the restored database.

Six drills run at once, each on its own fresh stack and port block
(20900..21320), as `msdb drill` processes:
- restore, --wal archive, archive_timeout 15 min, disaster after a few seconds:
  the disaster falls inside the archive window, so acknowledged writes are
  lost, and the RPO is the time since the last archived segment;
- restore, --wal stream-sync: no acknowledged write may be lost;
- restore, --wal stream (asynchronous): at most what was in flight is lost,
  and the figures match an independent count;
- restore --from geo: the disaster also destroys this region's backups and
  archive; the geo copy (synced at the base backup, encrypted) is all that is
  left, decrypted for the restore;
- pitr and masked, which carry their own checks.
The four restore drills keep their stacks so that the tests can query the
restored instances themselves; teardown purges them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import psycopg
import pytest

from fix_cli import msdb
from harness.stack.pg import PgRuntime
from harness.utc import epoch

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _restored(d: dict) -> psycopg.Connection:
    r = json.loads((d["out"] / "restored.json").read_text())
    pw = json.loads((Path(d["state"]) / "secrets.json").read_text())["postgres"]
    return psycopg.connect(host="127.0.0.1", port=r["port"], dbname=r["database"], user="postgres",
                           password=pw, sslmode="disable", autocommit=True, connect_timeout=5)


def _acks(d: dict) -> list[dict]:
    return [json.loads(ln) for ln in (d["out"] / "acks.jsonl").read_text().splitlines()]


def _independent_missing(d: dict) -> list[str]:
    """Acknowledged ids (from the client's own record) that the restored
    database does not hold as completed orders: a query of our own."""
    with _restored(d) as c:
        completed = {r[0] for r in c.execute("SELECT idempotency_key FROM sagas WHERE state = 'COMPLETED' "
                                             "AND idempotency_key LIKE 'drill-%'")}
    return [a["id"] for a in _acks(d) if a["id"] not in completed]


def _lost_ids(d: dict) -> list[str]:
    """What the drill recorded as lost: before the restore (lost.json, the
    RPO's) and after it (lost_after_restore.json, which must be empty)."""
    return sorted(a["id"] for f in ("lost.json", "lost_after_restore.json")
                  for a in json.loads((d["out"] / f).read_text()))


def _ok(d: dict) -> dict:
    assert d["results"] is not None, d["log"]
    assert d["rc"] in (0, 1), d["log"]
    return d["results"]


def test_archive_disaster_inside_the_window_loses_acknowledged_writes(drills):
    d = drills["archive"]
    res = _ok(d)
    m = res["metrics"]
    assert m["acked_writes"] > 20, d["log"]
    assert m["rpo_lost_writes"] > 0
    # Nothing was archived after the base backup (15 min timeout, < 16 MB of WAL):
    # everything acknowledged since the last archived segment is gone.  The RPO
    # runs from the last recoverable point, recomputed here from the client's
    # acks and this test's own query of the restored database.
    assert m["last_archived_utc"] is not None
    missing = set(_independent_missing(d))
    disaster = epoch(m["disaster_utc"])
    recovered = [a["ack_ts"] for a in _acks(d) if a["id"] not in missing and a["ack_ts"] < disaster]
    archived = disaster - m["seconds_since_last_archive"]
    # With no recovered ack at all (the writers got going after the archival),
    # the RPO runs from the end of the base backup, the last recoverable point.
    # (The backup ends after its last segment is archived: pg_backup_stop waits.)
    if recovered:
        assert max(recovered) <= archived + 0.5, (max(recovered), archived)
        ref = max(recovered)
    else:
        ref = m["base_backup"]["finished_at"]
        assert ref >= archived - 0.5, (ref, archived)
    assert m["rpo_seconds"] == pytest.approx(disaster - ref, abs=0.01), m
    # and so it is close to the time since the last archived segment: never
    # more, and less by the time from that archival to the last recoverable
    # point (the backup's end, or the last recovered ack): 0.85x in CI with six
    # drills at once, where the writers started 4 s after the backup's end.
    assert 0.5 * m["seconds_since_last_archive"] <= m["rpo_seconds"] \
        <= m["seconds_since_last_archive"] + 0.5, m
    assert m["rpo_seconds"] >= 4.0
    # The RTO parts are contiguous: they add up to the total.
    parts = [m[k] for k in ("rto_destroy_s", "rto_copy_s", "rto_wal_replay_s", "rto_promotion_s",
                            "rto_reconnect_s")]
    assert all(p is not None and p >= 0 for p in parts), m
    assert sum(parts) == pytest.approx(m["rto_seconds"], abs=0.01)
    assert res["verdict"] == "pass"      # 6 s << 15 min, a few s << 2 h
    assert {c["name"] for c in res["checks"]} >= {"rpo-seconds", "rto-seconds"}
    html = (d["out"] / "report.html").read_text()
    assert "WAL strategies side by side" in html and "Five-year RTO projection" in html
    assert f">{m['rpo_lost_writes']}<" in html


def test_archive_lost_count_matches_an_independent_count(drills):
    d = drills["archive"]
    m = _ok(d)["metrics"]
    missing = _independent_missing(d)
    assert sorted(missing) == _lost_ids(d)
    # every write acknowledged after the repoint is in the restored database
    assert m["acked_after_restore"] >= 1 and m["acked_after_restore_lost"] == 0, m
    assert len(missing) == m["rpo_lost_writes"]
    # and the service really writes to the restored instance now
    with _restored(d) as c:
        probe = [a["id"] for a in _acks(d) if a["phase"] == "after-restore"]
        assert probe and c.execute("SELECT count(*) FROM sagas WHERE idempotency_key = ANY(%s)",
                                   (probe,)).fetchone()[0] == len(probe)


def test_stream_sync_loses_no_acknowledged_write(drills):
    d = drills["sync"]
    res = _ok(d)
    m = res["metrics"]
    assert m["acked_writes"] > 20, d["log"]
    assert m["rpo_lost_writes"] == 0 and m["rpo_seconds"] == 0.0
    assert _independent_missing(d) == []
    assert m["wal_chain_last_partial"] is True        # the receiver's partial segment was replayed
    check = next(c for c in res["checks"] if c["name"] == "sync-no-acked-write-lost")
    assert check["verdict"] == "pass" and check["measured"] == 0
    assert res["verdict"] == "pass"


def test_stream_async_loses_at_most_what_was_in_flight(drills):
    d = drills["stream"]
    res = _ok(d)
    m = res["metrics"]
    assert m["acked_writes"] > 20, d["log"]
    missing = _independent_missing(d)
    assert sorted(missing) == _lost_ids(d)
    # every write acknowledged after the repoint is in the restored database
    assert m["acked_after_restore"] >= 1 and m["acked_after_restore_lost"] == 0, m
    assert len(missing) == m["rpo_lost_writes"]
    # pg_receivewal gets the WAL as the primary sends it: only writes acknowledged
    # in the last moment before the kill can be missing.
    assert m["rpo_seconds"] <= 1.0, m
    assert m["wal_chain_last_partial"] is True        # the receiver's partial segment was replayed
    assert res["verdict"] == "pass"


def test_geo_restore_has_only_what_reached_the_other_region(drills):
    d = drills["geo"]
    res = _ok(d)
    m = res["metrics"]
    assert m["restored_from"] == "geo" and m["region_lost"]["base_backups"] >= 1, m
    assert m["acked_writes"] > 10, d["log"]
    # The geo copy was synced at the base backup, before the first write: every
    # acknowledged write is lost, and the RPO runs from the backup's end.
    missing = _independent_missing(d)
    assert len(missing) == m["rpo_lost_writes"] == m["acked_writes"]
    assert m["rpo_seconds"] == pytest.approx(epoch(m["disaster_utc"]) - m["base_backup"]["finished_at"],
                                             abs=0.01)
    # This region's backups are gone; the restored instance serves the service.
    root = PgRuntime.for_state_dir(Path(d["state"])).data_root
    assert not list((root / "backups").glob("*/base/*.json")) and list((root / "geo").glob("*/base/*.json"))
    with _restored(d) as c:
        probe = [a["id"] for a in _acks(d) if a["phase"] == "after-restore"]
        assert probe and c.execute("SELECT count(*) FROM sagas WHERE idempotency_key = ANY(%s)",
                                   (probe,)).fetchone()[0] == len(probe)
    assert res["verdict"] == "pass"      # 4 s of loss is within 15 min
    assert "the geo copy (this region" in (d["out"] / "report.html").read_text()


def test_geo_copy_is_encrypted_and_restored_through_its_decryption(drills):
    """The geo copy holds no plaintext: the drill's marker, which the control
    scan finds in this region's unencrypted backup, is nowhere in its bytes,
    and this test's own scan of the copy agrees; the restore decrypted it,
    in an RTO part of its own; the generated key stayed out of the run
    directory."""
    d = drills["geo"]
    res = _ok(d)
    m, checks = res["metrics"], {c["name"]: c for c in res["checks"]}
    assert checks["geo-copy-encrypted"]["verdict"] == "pass" and checks["geo-leak-scan"]["verdict"] == "pass"
    scan = json.loads((d["out"] / "geo_scan.json").read_text())
    assert scan["geo"]["files"] > 10 and scan["geo"]["bytes"] > 1_000_000 and scan["geo"]["matches"] == 0
    assert scan["control"]["matches"] > 0, scan["control"]        # the scan can see the marker
    assert scan["encryption"]["encrypted"] == scan["encryption"]["files"] == scan["geo"]["files"]
    # this test's own scan of the copy as it is now, and of the restored instance's data
    marker = scan["marker"].encode()
    root = PgRuntime.for_state_dir(Path(d["state"])).data_root
    geo_files = [p for p in (root / "geo").rglob("*") if p.is_file()]
    assert geo_files and all(p.read_bytes()[:8] == b"MSDBGEO\x00" for p in geo_files)
    assert not any(marker in p.read_bytes() for p in geo_files)
    restored = json.loads((d["out"] / "restored.json").read_text())
    assert any(marker in p.read_bytes() for p in (root / restored["instance"]).rglob("*")
               if p.is_file() and p.stat().st_size < 64 << 20), "the marker did not come back"
    # the decrypt is a named RTO part, and the parts still add up
    assert m["rto_decrypt_s"] is not None and m["rto_decrypt_s"] > 0 and m["geo_decrypt"]["files"] > 0
    parts = [m[k] for k in ("rto_destroy_s", "rto_decrypt_s", "rto_copy_s", "rto_wal_replay_s",
                            "rto_promotion_s", "rto_reconnect_s")]
    assert sum(parts) == pytest.approx(m["rto_seconds"], abs=0.01)
    assert "decrypt geo copy" in (d["out"] / "report.html").read_text()
    # the generated key: in the state dir, private, and in no file of the run directory or its log
    key_file = Path(d["state"]) / "geo.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and m["geo_key_source"] == f"generated {key_file}"
    text = key_file.read_text().strip()
    raw = base64.b64decode(text)
    for p in [*d["out"].rglob("*")]:
        if p.is_file():
            body = p.read_bytes()
            assert text.encode() not in body and raw not in body and raw.hex().encode() not in body, p
    assert text not in d["log"]


def test_pitr_brings_deleted_rows_back_and_nothing_after(drills):
    d = drills["pitr"]
    res = _ok(d)
    m = res["metrics"]
    assert m["deleted_rows"] > 0 and m["deleted_rows_back"] == m["deleted_rows"]
    assert m["acked_after_target"] > 0 and m["acked_after_target_present"] == 0
    assert m["rows_created_after_target"] == 0
    assert res["verdict"] == "pass", json.dumps(res["checks"], indent=1)


def test_masked_copy_holds_no_original_email(drills):
    d = drills["masked"]
    res = _ok(d)
    m = res["metrics"]
    assert m["original_emails"] > 0
    assert m["emails_in_unmasked_dump"] == m["original_emails"]   # the scan can see them
    assert m["original_emails_in_masked_dump"] == 0 and m["masked_rows"] >= m["original_emails"]
    dump = (d["out"] / "masked-users.sql").read_text()
    emails = [json.loads(ln)["id"] for ln in (d["out"] / "acks.jsonl").read_text().splitlines()]
    assert emails and not any(e in dump for e in emails)
    assert "@masked.invalid" in dump
    assert res["verdict"] == "pass"


@pytest.mark.parametrize("name", ["archive", "sync", "geo", "pitr", "masked"])
def test_msdb_check_rejudges_a_drill_from_its_run_directory(drills, name):
    d = drills[name]
    res = _ok(d)
    r = msdb("check", d["out"], "--json", timeout=120)
    assert r.returncode == {"pass": 0, "fail": 1}[res["verdict"]], r.stderr
    again = json.loads(r.stdout)
    assert [(c["name"], c["verdict"], c["measured"]) for c in again["checks"]] == \
        [(c["name"], c["verdict"], c["measured"]) for c in res["checks"]]
    if name in ("archive", "sync"):
        tight = d["out"].parent / f"tight-{name}.yaml"
        tight.write_text("drill: {rpo_seconds_max: 0, rto_seconds_max: 0.001}\n")
        assert msdb("check", d["out"], "--slo", tight, timeout=120).returncode == 1
