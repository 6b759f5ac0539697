"""RPO and RTO arithmetic of the restore drill: pure functions of what the
drill recorded, unit-tested on made-up figures.

- RPO: the acknowledged writes missing from the restored database, and the
  time from the last recovered acknowledgement (or, if none was recovered,
  from the base backup's end) to the disaster.
- RTO: disaster to the first write acknowledged by the restored instance,
  in contiguous parts (destroy, copy, WAL replay, promotion, reconnection)
  that add up to the total.
- The five-year projection: copy the database at its size then, replay a
  backup interval's WAL, plus the measured fixed parts (seed §7 growth).
"""

from __future__ import annotations

import math

__all__ = ["project_rto", "combined_projection", "rpo", "rto_parts", "GROWTH_GB_PER_YEAR",
           "MIN_REPLAY_BYTES"]

# Seed §7 growth estimates, GB per year, per database.
GROWTH_GB_PER_YEAR = {"users": 10.0, "orders": 50.0}
MIN_REPLAY_BYTES = 4 * 1024 * 1024    # below this a replay rate is start-up noise


def rpo(*, acked: list[dict], present: set[str], disaster: float, backup_end: float) -> dict:
    """acked: {"id", "ack_ts"} of every write acknowledged before the disaster;
    present: the ids the restored database holds."""
    lost = [a for a in acked if a["id"] not in present]
    recovered = [a for a in acked if a["id"] in present]
    last = max((a["ack_ts"] for a in recovered), default=None)
    seconds = max(0.0, disaster - (last if last is not None else backup_end)) if lost else 0.0
    return {"lost": lost, "recovered": recovered, "last_recovered_ack": last, "rpo_s": seconds}


def rto_parts(*, disaster: float, destroyed: float, copy_end: float, redo_done: float | None,
              read_write: float, first_write: float) -> dict:
    """Contiguous parts from the disaster to the first write served again;
    without a logged end of redo, replay runs until read-write and promotion
    is unknown (None)."""
    return {
        "rto_destroy_s": destroyed - disaster,
        "rto_copy_s": copy_end - destroyed,
        "rto_wal_replay_s": (redo_done if redo_done else read_write) - copy_end,
        "rto_promotion_s": (read_write - redo_done) if redo_done else None,
        "rto_reconnect_s": first_write - read_write,
    }


def project_rto(*, copy_mb_s: float | None, replay_mb_s: float | None, wal_per_data_byte: float,
                growth_gb_per_year: float, fixed_s: float, target_s: float,
                backup_interval_days: float = 1.0, years: int = 5) -> dict:
    """RTO in years 1..N: copy the database at its size then + replay one backup
    interval's WAL + the measured fixed parts (promotion, reconnection)."""
    if not copy_mb_s or not replay_mb_s or copy_mb_s <= 0 or replay_mb_s <= 0:
        return {"years": [], "breaks_in_year": None,
                "note": "not projected: " + ("copy" if not copy_mb_s else "WAL replay") +
                        " throughput was not measured (a replay rate needs at least "
                        f"{MIN_REPLAY_BYTES // 2**20} MB of WAL replayed)"}
    rows = []
    wal_mb = growth_gb_per_year * 1024 / 365 * backup_interval_days * wal_per_data_byte
    replay_s = wal_mb / replay_mb_s
    for y in range(1, years + 1):
        size_mb = growth_gb_per_year * 1024 * y
        copy_s = size_mb / copy_mb_s
        rto = copy_s + replay_s + fixed_s
        rows.append({"year": y, "size_gb": round(size_mb / 1024, 1), "copy_s": round(copy_s, 1),
                     "wal_replay_s": round(replay_s, 1), "fixed_s": round(fixed_s, 2),
                     "rto_s": round(rto, 1), "meets_target": rto <= target_s})
    breaks = next((r["year"] for r in rows if not r["meets_target"]), None)
    # Beyond the horizon: the year (size grows linearly) copying alone would break it.
    per_year = growth_gb_per_year * 1024 / copy_mb_s
    beyond = math.floor((target_s - replay_s - fixed_s) / per_year) + 1 if per_year > 0 else None
    if beyond is not None and beyond < 1:
        beyond = 1
    return {"years": rows, "breaks_in_year": breaks,
            "breaks_in_year_extrapolated": beyond if breaks is None else breaks,
            "assumptions": {"growth_gb_per_year": growth_gb_per_year, "copy_mb_s": round(copy_mb_s, 1),
                            "wal_replay_mb_s": round(replay_mb_s, 1),
                            "wal_bytes_per_data_byte": round(wal_per_data_byte, 2),
                            "wal_replayed_per_restore_mb": round(wal_mb, 1),
                            "backup_interval_days": backup_interval_days,
                            "fixed_s": round(fixed_s, 2), "target_s": target_s}}


def combined_projection(ms: list[dict], db: str, target_s: float) -> dict:
    """One projection over several strategies' runs, from the slowest measured
    rates (copy; replay where enough WAL was replayed) and the largest fixed
    parts and WAL volume: a planning figure should not flatter."""
    copies = [m for m in ms if m.get("copy_mb_s")]
    replays = [m for m in ms if m.get("wal_replay_mb_s")]
    slow_copy = min(copies, key=lambda m: m["copy_mb_s"], default=None)
    slow_replay = min(replays, key=lambda m: m["wal_replay_mb_s"], default=None)
    fixed = max((m["rto_promotion_s"] or 0) + m["rto_reconnect_s"] + m["rto_destroy_s"] for m in ms)
    out = project_rto(copy_mb_s=slow_copy and slow_copy["copy_mb_s"],
                      replay_mb_s=slow_replay and slow_replay["wal_replay_mb_s"],
                      wal_per_data_byte=max(m["wal_bytes_per_data_byte"] for m in ms),
                      growth_gb_per_year=GROWTH_GB_PER_YEAR[db], fixed_s=fixed, target_s=target_s)
    out["from"] = {"copy": slow_copy and slow_copy["wal"], "wal_replay": slow_replay and slow_replay["wal"]}
    return out


