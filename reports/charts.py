"""Charts (matplotlib, Agg) as inline PNG data URIs.

Every time chart shades the fault windows from the journal (`windows` from
analysis.chart_windows), so latency, pools and lag line up with the faults.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["throughput_chart", "latency_chart", "endpoint_chart", "capacity_chart", "pool_chart",
           "pool_figure", "db_chart", "redis_chart", "tps_chart", "shade", "png", "legend",
           "nonnegative", "FAULT_COLOR"]

FAULT_COLOR = "#e4572e"
plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                     "axes.spines.top": False, "axes.spines.right": False})


def png(fig, *, layout: bool = True) -> str:
    buf = io.BytesIO()
    if layout:
        fig.tight_layout()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def shade(ax, windows: list[dict], t_max: float | None = None) -> None:
    for i, w in enumerate(windows):
        end = w["end_s"] if w["end_s"] is not None else (t_max or w["start_s"] + 1)
        ax.axvspan(w["start_s"], end, color=FAULT_COLOR, alpha=0.15, lw=0,
                   label=f"fault: {w['kind']} on {w['target']}" if i < 3 else None)


def legend(ax, *, outside: str | bool = False) -> None:
    """A legend that does not sit on the data: beside the axes (`outside`
    True or "right"), under them ("below"), or where it covers least, on a
    mostly opaque box."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if outside == "below":
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=7, frameon=False)
    elif outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
                  borderaxespad=0)
    else:
        ax.legend(loc="best", fontsize=7, frameon=True, framealpha=0.85, edgecolor="#ddd")


def throughput_chart(sec: pd.DataFrame, windows: list[dict]) -> str | None:
    if sec.empty:
        return None
    fig, ax = plt.subplots(figsize=(9, 2.8))
    ax.plot(sec["second"], sec["requests"], lw=1.2, label="requests/s")
    ax.plot(sec["second"], sec["errors"], lw=1.2, color=FAULT_COLOR, label="failed/s")
    shade(ax, windows, sec["second"].max())
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("per second")
    ax.set_title("Throughput")
    legend(ax)
    return png(fig)


def latency_chart(sec: pd.DataFrame, windows: list[dict]) -> str | None:
    if sec.empty:
        return None
    fig, ax = plt.subplots(figsize=(9, 3))
    for q, lw in (("p50", 1.0), ("p95", 1.0), ("p99", 1.4)):
        ax.plot(sec["second"], sec[q], lw=lw, label=q)
    shade(ax, windows, sec["second"].max())
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("Latency percentiles per second (all endpoints)")
    legend(ax)
    return png(fig)


def endpoint_chart(sec: pd.DataFrame, endpoint: str, windows: list[dict], *,
                   before_ms: float | None = None, injected_ms: float | None = None) -> str | None:
    """Where the fault was aimed: one endpoint's median and p95 per second,
    its failures, the baseline before the fault and the latency expected
    during it (baseline + injected)."""
    if sec.empty:
        return None
    fig, ax = plt.subplots(figsize=(9, 2.7))
    ax.plot(sec["second"], sec["p50"], lw=1.6, color="#1f77b4", marker=".", ms=4, label="median")
    ax.plot(sec["second"], sec["p95"], lw=0.9, color="#9467bd", label="p95")
    if before_ms is not None:
        ax.axhline(before_ms, color="#3bb273", lw=0.9, ls="--",
                   label=f"median before the fault: {before_ms:.3g} ms")
        if injected_ms:
            ax.axhline(before_ms + injected_ms, color=FAULT_COLOR, lw=0.9, ls="--",
                       label=f"expected during it: + {injected_ms:g} ms injected")
    shade(ax, windows, sec["second"].max())
    if injected_ms:
        # linear: the added milliseconds are what the check judges
        top = max(float(sec["p95"].max()), (before_ms or 0) + injected_ms)
        ax.set_ylim(0, max(top * 1.1, 1.0))
    else:
        ax.set_yscale("log")
    if sec["errors"].sum() > 0:
        ax2 = ax.twinx()
        ax2.bar(sec["second"], sec["errors"], width=0.8, color=FAULT_COLOR, alpha=0.5, label="failed/s")
        nonnegative(ax2, sec["errors"], min_top=1.0)
        ax2.set_ylabel("failed requests/s", fontsize=7)
        ax2.grid(False)
        ax2.spines["right"].set_visible(True)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=7,
                  frameon=False, borderaxespad=0)
    else:
        legend(ax, outside=True)
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("latency, ms" + ("" if injected_ms else " (log)"))
    ax.set_title(f"{endpoint}: the endpoint the fault check judges")
    return png(fig)


def capacity_chart(sec: pd.DataFrame, steps: list[dict], knee_rps: float | None,
                   p99_slo: float | None) -> str | None:
    """steps: the per-step rows of every endpoint together (results.json)."""
    if sec.empty:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.scatter(sec["requests"], sec["p99"], s=6, alpha=0.35, label="p99 of each second")
    if steps:
        rows = sorted(steps, key=lambda r: r["users"])
        ax.plot([r["throughput"] for r in rows], [r["p99_ms"] for r in rows], "o-", lw=1.5,
                color="#2e86ab", label="p99 per load step (all endpoints)")
        for r in rows:
            ax.annotate(f"{int(r['users'])}u", (r["throughput"], r["p99_ms"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        if knee_rps is not None:
            ax.axvline(knee_rps, color="#3bb273", ls="--", label=f"knee: {knee_rps:.0f} req/s")
    if p99_slo:
        ax.axhline(p99_slo, color=FAULT_COLOR, ls=":", label=f"p99 SLO {p99_slo:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("throughput, requests/s")
    ax.set_ylabel("p99 latency, ms (log)")
    ax.set_title("Latency against throughput (capacity curve)")
    legend(ax)
    return png(fig)


def nonnegative(ax, values, *, min_top: float = 1.0) -> None:
    """Counts, sizes and waits are never negative: the y axis starts at 0 and
    spans at least `min_top` (a series flat at zero keeps a readable axis)."""
    vals = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    top = float(vals.max()) if not vals.empty else 0.0
    ax.set_ylim(0, max(top * 1.08, min_top))


def pool_figure(pools: pd.DataFrame, windows: list[dict]):
    """The pool chart's figure (tests read its axes); None without pool samples."""
    if pools.empty:
        return None
    prim = pools[pools["pool"] == "primary"]
    services = sorted(prim["service"].unique())
    if not services:
        return None
    fig, axes = plt.subplots(len(services), 1, figsize=(9, 1.5 * len(services) + 0.9), sharex=True)
    axes = axes if len(services) > 1 else [axes]
    twins = []
    for ax, svc in zip(axes, services):
        g = prim[prim["service"] == svc]
        # size as a wide pale band, available as a thin dashed line on top:
        # when they coincide (an idle pool) both stay visible
        ax.plot(g["t"], g["pool_size"], lw=4, alpha=0.35, color="#1f77b4", label="size")
        ax.plot(g["t"], g["pool_available"], lw=1.1, ls="--", color="#1f4e79", marker=".", ms=3,
                label="available")
        ax.plot(g["t"], g["requests_waiting"], lw=1.2, color=FAULT_COLOR, label="waiting")
        nonnegative(ax, pd.concat([g["pool_size"], g["pool_available"], g["requests_waiting"]]))
        if "requests_wait_ms_per_s" in g:
            ax2 = ax.twinx()
            twins.append(ax2)
            ax2.plot(g["t"], g["requests_wait_ms_per_s"], lw=0.8, color="#888", ls=":",
                     label="wait, ms/s")
            nonnegative(ax2, g["requests_wait_ms_per_s"], min_top=10.0)
            ax2.set_ylabel("wait, ms/s", fontsize=7)
            ax2.grid(False)
            ax2.spines["right"].set_visible(True)
        shade(ax, windows, g["t"].max())
        ax.set_ylabel(svc)
    seen: dict = {}
    for a in [axes[0], *twins[:1]]:
        for h, lab in zip(*a.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=len(seen), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    axes[0].set_title("Connection pools (psycopg_pool, primary): size, available and waiting "
                      "connections; dotted: time spent waiting")
    axes[-1].set_xlabel("seconds since the first request")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def pool_chart(pools: pd.DataFrame, windows: list[dict]) -> str | None:
    fig = pool_figure(pools, windows)
    return png(fig, layout=False) if fig is not None else None


def _lines(df: pd.DataFrame, group: str | None, y: str, windows: list[dict], *, title: str,
           ylabel: str, log: bool = False, height: float = 2.6, scale: float = 1.0,
           ylim: tuple | None = None) -> str:
    """A time chart: one line per `group` (or one line), fault windows shaded."""
    fig, ax = plt.subplots(figsize=(9, height))
    for label, g in (df.groupby(group) if group else [(None, df)]):
        ax.plot(g["t"], g[y] * scale, lw=1.0, label=label)
    shade(ax, windows, df["t"].max())
    if log:
        ax.set_yscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    legend(ax)
    return png(fig)


def db_chart(db: pd.DataFrame, windows: list[dict]) -> str | None:
    if db.empty:
        return None
    return _lines(db, "query", "mean_ms", windows, log=True, height=3,
                  title="Database query latency (busiest named queries)",
                  ylabel="mean ms in the database (log)")


def redis_chart(hits: pd.DataFrame, windows: list[dict]) -> str | None:
    if hits.empty or hits["hit_rate"].dropna().empty:
        return None
    return _lines(hits, None, "hit_rate", windows, scale=100, ylim=(0, 105),
                  title="Redis keyspace hit rate", ylabel="hit rate, %")


def tps_chart(tps: pd.DataFrame, windows: list[dict]) -> str | None:
    if tps.empty:
        return None
    return _lines(tps, "instance", "tps", windows, title="PostgreSQL transactions per second",
                  ylabel="transactions/s")
