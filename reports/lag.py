"""The report's replication and CDC section, from the run directory alone:
heartbeats.csv, replication.csv, cdc_lag.csv, cdc_backlog.csv and results.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .charts import FAULT_COLOR, legend, nonnegative, png, shade
from .verdicts import with_unit

__all__ = ["lag_section"]


REPLICA_FIGURES = (("heartbeats", "heartbeats", None), ("replica_lag_p50_ms", "lag p50", "ms"),
                   ("replica_lag_p99_ms", "lag p99", "ms"), ("replica_lag_peak_ms", "lag peak", "ms"),
                   ("replica_catch_up_s", "catch-up after the heal", "s"),
                   ("replica_lag_p99_outside_faults_ms", "lag p99 outside the faults", "ms"))


def _csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame()
    df = pd.read_csv(path)
    return df


def replica_chart(beats: pd.DataFrame, repl: pd.DataFrame, windows: list[dict], t0: float,
                  slo: dict) -> str | None:
    if beats.empty and repl.empty:
        return None
    fig, ax = plt.subplots(figsize=(9, 3))
    if not beats.empty:
        ax.plot(beats["committed"] - t0, beats["lag_ms"], ".", ms=2, alpha=0.6,
                label="heartbeat lag, each beat (commit → visible on the replica)")
    if not repl.empty:
        r = repl.dropna(subset=["hb_lag_ms"])
        ax.plot(r["time"] - t0, r["hb_lag_ms"], lw=1.1, label="current lag, 1 Hz (oldest unseen beat)")
        rl = repl.dropna(subset=["replay_lag_ms"])
        if not rl.empty:
            ax.plot(rl["time"] - t0, rl["replay_lag_ms"], lw=0.8, ls="--",
                    label="pg_stat_replication.replay_lag")
    if slo.get("replica_lag_ms_max"):
        ax.axhline(slo["replica_lag_ms_max"], color=FAULT_COLOR, lw=0.8, ls=":",
                   label=f"SLO {slo['replica_lag_ms_max']:g} ms")
    shade(ax, windows)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("lag, ms (symlog)")
    ax.set_title("Streaming replica lag")
    legend(ax, outside="below")
    return png(fig)


def cdc_chart(lag: pd.DataFrame, backlog: pd.DataFrame, windows: list[dict], t0: float) -> str | None:
    if lag.empty and backlog.empty:
        return None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 4.6), sharex=True)
    for name, g in lag.groupby("consumer"):
        a1.plot(g["commit_ms"] / 1000 - t0, g["lag_ms"], ".", ms=2, alpha=0.6, label=name)
    a1.set_yscale("symlog", linthresh=10)
    a1.set_ylabel("CDC lag, ms (symlog)")
    a1.set_title("CDC lag per consumer (commit at the source → visible in the target), by commit time")
    shade(a1, windows)
    legend(a1, outside=True)
    for name, g in backlog.groupby("consumer"):
        a2.plot(g["time"] - t0, g["backlog"], lw=1.1, label=name)
    shade(a2, windows)
    if not backlog.empty:
        nonnegative(a2, backlog["backlog"])
    a2.set_ylabel("backlog, events")
    a2.set_xlabel("seconds since the first request")
    a2.set_title("Events published and not yet applied, per consumer group")
    legend(a2, outside=True)
    return png(fig)


def lag_section(run_dir: Path, t0: float, windows: list[dict], metrics: dict, slo: dict) -> dict | None:
    beats = _csv(run_dir / "heartbeats.csv")
    repl = _csv(run_dir / "replication.csv")
    lag = _csv(run_dir / "cdc_lag.csv")
    backlog = _csv(run_dir / "cdc_backlog.csv")
    if beats.empty and lag.empty:
        return None
    stale = metrics.get("stale_reads_by_routing") or {}
    return {
        "charts": [c for c in (("Streaming replica lag", replica_chart(beats, repl, windows, t0, slo)),
                               ("CDC lag and backlog", cdc_chart(lag, backlog, windows, t0))) if c[1]],
        "replica": {k: metrics.get(k) for k in ("heartbeats", "replica_lag_p50_ms", "replica_lag_p99_ms",
                                                 "replica_lag_peak_ms", "replica_catch_up_s",
                                                 "replica_lag_p99_outside_faults_ms")},
        "replica_rows": [(label, with_unit(metrics.get(k), unit)) for k, label, unit in REPLICA_FIGURES],
        "replica_faults": metrics.get("replica_faults") or [],
        "stale": [{"routing": k, **v} for k, v in stale.items()],
        "consumers": [{"consumer": k, **v} for k, v in (metrics.get("cdc_consumers") or {}).items()],
        "cdc": {k: metrics.get(k) for k in ("cdc_events_applied", "cdc_lag_p50_ms", "cdc_lag_p99_ms",
                                             "cdc_lag_max_ms", "cdc_catch_up_s", "cdc_quiesce_s")},
    }
