"""The live panels: the same samplers `msdb run` uses (MetricsSampler,
HealthSampler, StoreSampler), driven once a second, their newest rows kept
in memory for the panels and, while a UI test runs, every row also written
to the run directory's CSV files.

The samplers run while a test runs, or while someone looks at the panels
(a status asked for in the last `IDLE_S` seconds): an idle cockpit costs
the stack nothing.  Replica lag comes from pg_stat_replication and CDC
backlog and lag from Redis and the consumers, each second, the way the lag
monitor measures them; the lag monitor itself runs beside a UI test (its
heartbeat lag, to 10 ms, goes to the run's tables and the report).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import psycopg
import redis
import requests

from reports.rundata import HEALTH_COLUMNS, METRICS_COLUMNS, PG_COLUMNS, REDIS_COLUMNS

from ..run.lagmon import CONSUMERS, cdc_backlog
from ..run.rundir import CsvTable
from ..run.samplers import HealthSampler, MetricsSampler, StoreSampler
from ..stack.backend import StackBackend
from ..stack.status import StatusProbe
from ..utc import utc

__all__ = ["LatestTable", "Live"]

POOL_STATS = {"pool_size": "size", "pool_available": "available", "requests_waiting": "waiting",
              "pool_min": "min", "pool_max": "max", "requests_wait_ms_total": "wait_ms_total",
              "requests_num_total": "requests_total", "requests_errors_total": "errors_total"}


class LatestTable:
    """A sampler's table: the newest row per key (the first `keys` columns
    after `time`) in memory, and every row to `sink` (a run's CSV) if set."""

    def __init__(self, columns: list[str], keys: int):
        self.columns = columns
        self.keys = keys
        self.latest: dict[tuple, tuple] = {}
        self.sink: CsvTable | None = None
        self._lock = threading.Lock()

    def row(self, *values) -> None:
        with self._lock:
            self.latest[values[1:1 + self.keys]] = values
            sink = self.sink
        if sink is not None:
            sink.row(*values)

    def rows(self) -> list[dict]:
        with self._lock:
            return [dict(zip(self.columns, v)) for v in self.latest.values()]

    def close(self) -> None:   # the samplers' tables are closed by whoever opened their sinks
        pass


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else round(f, 2)


class Live:
    IDLE_S = 30.0          # keep sampling this long after the panels last asked
    INTERVAL_S = 1.0

    def __init__(self, backend: StackBackend):
        self.backend = backend
        info = backend.info()
        self.info = info
        self.metrics = LatestTable(METRICS_COLUMNS, 3)
        self.health = LatestTable(HEALTH_COLUMNS, 1)
        self.postgres = LatestTable(PG_COLUMNS, 3)
        self.redis = LatestTable(REDIS_COLUMNS, 1)
        self.probe = StatusProbe()
        self.samplers = {
            "metrics": MetricsSampler(info.urls, self.metrics),
            "health": HealthSampler(lambda: backend.status(self.probe), self.health),
            "stores": StoreSampler(info, self.postgres, self.redis),
        }
        self.cdc: dict[str, dict] = {}
        self.replica: dict = {}
        self._cursors: dict[str, tuple[str, int]] = {}
        self._http = requests.Session()
        self._http.trust_env = False
        self._pg = None
        self.testing = False
        self.last_asked = 0.0
        self._pools_prev: dict[tuple, tuple[float, float, float]] = {}
        self._pool_wait: dict[tuple, float | None] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._redis = None

    # -- the loops ---------------------------------------------------------------------

    def wanted(self) -> bool:
        return self.testing or time.monotonic() - self.last_asked < self.IDLE_S

    def start(self) -> None:
        loops: dict[str, Callable[[], object]] = {n: s.sample_once for n, s in self.samplers.items()}
        loops["cdc"] = self._sample_cdc
        loops["replica"] = self._sample_replica
        for name, fn in loops.items():
            t = threading.Thread(target=self._loop, args=(fn,), name=f"cockpit-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _loop(self, fn) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self.wanted():
                try:
                    fn()
                except Exception as e:  # a sampler must never end the loop; the panel shows the gap
                    print(f"msdb cockpit: sampler {fn} failed: {type(e).__name__}: {e}")
            next_t = max(next_t + self.INTERVAL_S, time.monotonic())
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def sample_now(self) -> None:
        """One sample of everything (the first status, and before judging)."""
        for s in self.samplers.values():
            s.sample_once()
        self._sample_cdc()
        self._sample_replica()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        self.samplers["stores"].close()
        self.probe.close()
        self._http.close()
        if self._pg is not None:
            self._pg.close()

    def _sample_cdc(self) -> None:
        """Per consumer: backlog (lagmon's `cdc_backlog`, from Redis) and the lag
        of the events applied since the last sample (the consumer's own
        /admin/cdc/<name>/lag, read from a cursor as the lag monitor reads it)."""
        if self.info.redis is None or "cdc" not in self.info.urls:
            return
        now = time.time()
        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self.info.redis.url, socket_timeout=1,
                                                   socket_connect_timeout=1)
            backlogs = {g: cdc_backlog(self._redis, g, src) for g, (_svc, src) in CONSUMERS.items()}
            error = None
        except redis.RedisError as e:
            self._redis, backlogs, error = None, {}, f"redis: {str(e)[:100]}"
        for group, (svc, source) in CONSUMERS.items():
            row = self.cdc.setdefault(group, {"source": source, "lag_ms": None, "lag_ms_max": None})
            published, backlog, pending = backlogs.get(group, (None, None, None))
            row.update(time=now, published=published, backlog=backlog, pending=pending, error=error)
            try:
                boot, since = self._cursors.get(group, ("", None))
                doc = self._get(f"{self.info.urls[svc]}/admin/cdc/{group}/lag",
                                {"since": since if since is not None else 0})
                if doc["boot"] != boot and boot:      # the consumer restarted: its counter too
                    doc = self._get(f"{self.info.urls[svc]}/admin/cdc/{group}/lag", {"since": 0})
                lags = [it["applied_ms"] - it["commit_ms"] for it in doc["items"]]
                if lags:
                    row.update(lag_ms=round(lags[-1], 1), lag_ms_max=round(max(lags), 1))
                elif since is not None:
                    row.update(lag_ms_max=None)     # nothing applied in the last second
                self._cursors[group] = (doc["boot"], max([since or 0] + [it["i"] for it in doc["items"]]))
            except (requests.RequestException, ValueError, KeyError) as e:
                row["error"] = row["error"] or f"{svc}: {type(e).__name__}"

    def _get(self, url: str, params: dict) -> dict:
        r = self._http.get(url, params=params, timeout=2)
        r.raise_for_status()
        return r.json()

    def _sample_replica(self) -> None:
        """The streaming replica as the lag monitor samples it: write/flush/replay
        lag and the replay byte lag, from the primary's pg_stat_replication."""
        rep = self.info.replica
        if rep is None:
            return
        row = {"time": time.time(), "state": None, "replay_lag_ms": None, "write_lag_ms": None,
               "byte_lag": None, "error": None}
        try:
            if self._pg is None or self._pg.closed:
                self._pg = psycopg.connect(self.info.instance(rep.primary).admin_dsn, autocommit=True,
                                           connect_timeout=2)
            got = self._pg.execute(
                "SELECT state, extract(epoch FROM write_lag) * 1000, extract(epoch FROM replay_lag) * 1000, "
                "pg_wal_lsn_diff(sent_lsn, replay_lsn), pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) "
                "FROM pg_stat_replication WHERE application_name = %s", (rep.instance,)).fetchone()
            if got is None:
                row["state"] = "not connected"
            else:
                state, wl, rl, sent_vs_replay, blag = got
                # replay_lag is NULL once the standby has caught up (MACHINE.md)
                row.update(state=state, write_lag_ms=_num(wl), byte_lag=_num(blag),
                           replay_lag_ms=_num(rl) if rl is not None else (0 if sent_vs_replay == 0 else None))
        except (psycopg.Error, KeyError) as e:
            self._pg = None
            row.update(state="primary unreachable", error=str(e).strip().splitlines()[0][:120] if str(e) else "")
        self.replica = row

    # -- the panels --------------------------------------------------------------------

    def attach(self, tables: dict[str, CsvTable] | None) -> None:
        """A test started (the run's tables) or stopped (None)."""
        self.metrics.sink = tables and tables["metrics.csv"]
        self.health.sink = tables and tables["health.csv"]
        self.postgres.sink = tables and tables["postgres.csv"]
        self.redis.sink = tables and tables["redis.csv"]
        self.testing = tables is not None

    def health_panel(self) -> list[dict]:
        rows = self.health.rows()
        if not rows:
            return []
        newest = max(r["time"] for r in rows)
        return [{"part": r["part"], "kind": r["kind"], "healthy": bool(r["healthy"]),
                 "detail": r["detail"], "time": utc(r["time"])}
                for r in rows if r["time"] == newest]

    def pools_panel(self) -> list[dict]:
        rows = self.metrics.rows()
        up = {r["service"]: r for r in rows if r["metric"] == "up"}
        pools: dict[tuple, dict] = {}
        for r in rows:
            stat = r["metric"][len("psycopg_pool_"):] if r["metric"].startswith("psycopg_pool_") else None
            svc = r["service"]
            if stat not in POOL_STATS or svc not in up or up[svc]["value"] != 1 \
                    or r["time"] != up[svc]["time"]:
                continue
            pool = dict(kv.split("=", 1) for kv in r["labels"].split(";") if "=" in kv).get("pool", "")
            p = pools.setdefault((svc, pool), {"service": svc, "pool": pool, "time": utc(r["time"]),
                                               "_t": r["time"]})
            p[POOL_STATS[stat]] = _num(r["value"])
        out = []
        for key, p in sorted(pools.items()):
            t, wait, num = p.pop("_t"), p.get("wait_ms_total"), p.get("requests_total")
            prev = self._pools_prev.get(key)
            if prev is not None and prev[0] != t and None not in (wait, num):
                dn = num - prev[2]
                self._pool_wait[key] = round((wait - prev[1]) / dn, 1) if dn > 0 else 0.0
            if prev is None or prev[0] != t:
                self._pools_prev[key] = (t, wait, num)
            p["wait_ms_per_request"] = self._pool_wait.get(key)
            out.append(p)
        down = [{"service": s, "pool": "", "error": "no /metrics answer"}
                for s, r in sorted(up.items()) if r["value"] != 1]
        return out + down

    def lag_panel(self) -> dict:
        rep = self.info.replica
        replica = None if rep is None else \
            {"standby": rep.instance, "link": rep.link, **{k: v for k, v in self.replica.items() if k != "time"},
             "time": utc(self.replica["time"]) if self.replica.get("time") else None}
        cdc = [{"consumer": g, **{k: v for k, v in c.items() if k != "time"}, "time": utc(c["time"])}
               for g, c in sorted(self.cdc.items())]
        return {"replica": replica, "cdc": cdc}
