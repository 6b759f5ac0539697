"""Samplers that run beside the load: each service's /metrics at 1 Hz.

Rows are tidy (one value per row) so pandas can pivot them:
    time, service, metric, labels, value
`labels` is `k=v;k=v` sorted by key.  A scrape that fails writes the
Prometheus-style row `up = 0` for that service (and `up = 1` otherwise), so
a gap in the data is visible rather than silent.
"""

from __future__ import annotations

import threading
import time

import psycopg
from psycopg.conninfo import make_conninfo
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from reports.rundata import (HEALTH_COLUMNS, METRICS_COLUMNS, PG_COLUMNS, REDIS_COLUMNS,
                             STATEMENT_COLUMNS)

from ..stack.info import StackInfo
from .rundir import CsvTable

__all__ = ["MetricsSampler", "HealthSampler", "StoreSampler", "write_statement_deltas",
           "METRICS_COLUMNS", "HEALTH_COLUMNS", "PG_COLUMNS", "REDIS_COLUMNS", "STATEMENT_COLUMNS"]


class _Periodic:
    """Calls sample_once() every `interval` seconds in a thread until stop()."""
    INTERVAL_S = 1.0

    def __init__(self, table: CsvTable, interval: float | None):
        self.table = table
        self.interval = interval or self.INTERVAL_S
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self):
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))


class MetricsSampler(_Periodic):
    TIMEOUT_S = 2.0

    def __init__(self, services: dict[str, str], table: CsvTable, *, interval: float | None = None):
        super().__init__(table, interval)
        self.services = services    # name -> base URL
        self._session = requests.Session()
        self._session.trust_env = False   # no proxy lookups in the environment on every scrape

    def sample_once(self) -> None:
        for name, url in self.services.items():
            ts = round(time.time(), 3)
            try:
                r = self._session.get(url + "/metrics", timeout=self.TIMEOUT_S)
                r.raise_for_status()
                text = r.text
            except requests.RequestException:
                self.table.row(ts, name, "up", "", 0)
                continue
            self.table.row(ts, name, "up", "", 1)
            # Histogram buckets are dropped before parsing: nothing downstream uses
            # them (exact percentiles come from requests.csv), and they were most
            # of the sampler's CPU (benchmarks/bench_samplers.py).
            text = "\n".join(line for line in text.splitlines()
                              if "_bucket{" not in line and "_created" not in line
                              and not line.startswith("# HELP"))
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name.endswith("_created"):
                        continue
                    labels = ";".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                    self.table.row(ts, name, s.name, labels, s.value)


class HealthSampler(_Periodic):
    """Every part's health at 1 Hz (the same probe as `msdb status`), so that
    recovery after a heal is measured to the second, not guessed."""

    def __init__(self, probe, table: CsvTable, *, interval: float | None = None):
        super().__init__(table, interval)
        self.probe = probe          # () -> list of PartStatus-like objects

    def sample_once(self) -> bool:
        ts = round(time.time(), 3)
        try:
            parts = self.probe()
        except Exception as e:  # the probe itself failing is an unhealthy sample
            self.table.row(ts, "stack", "stack", 0, f"{type(e).__name__}: {e}"[:200])
            return False
        for p in parts:
            self.table.row(ts, p.name, p.kind, int(p.healthy), p.detail)
        return all(p.healthy for p in parts)


class StoreSampler(_Periodic):
    """PostgreSQL and Redis at 1 Hz, over direct admin connections (never
    through the fault proxies, so a fault on a link does not blind it).

    postgres.csv: up; backends by state and database (pg_stat_activity);
    xact_commit / xact_rollback / blks_hit / blks_read per database (counters:
    rates are computed in analysis); replication lag in bytes per standby.
    redis.csv: up, keyspace_hits, keyspace_misses, connected_clients,
    used_memory, instantaneous_ops_per_sec.
    """

    def __init__(self, info: StackInfo, pg_table: CsvTable, redis_table: CsvTable, *,
                 interval: float | None = None):
        super().__init__(pg_table, interval)
        self.instances = {i.name: i.admin_dsn for i in info.instances}
        self.redis_url = info.redis.url if info.redis is not None else None
        self.redis_table = redis_table
        self._conns: dict = {}
        self._redis = None

    def _conn(self, name: str):
        c = self._conns.get(name)
        if c is None or c.closed:
            c = psycopg.connect(self.instances[name], autocommit=True, connect_timeout=2)
            self._conns[name] = c
        return c

    def sample_once(self) -> None:
        ts = round(time.time(), 3)
        row = self.table.row
        for name in self.instances:
            try:
                c = self._conn(name)
                row(ts, name, "up", "", 1)
                for state, datname, n in c.execute(
                        "SELECT coalesce(state, 'background'), coalesce(datname, ''), count(*) "
                        "FROM pg_stat_activity GROUP BY 1, 2").fetchall():
                    row(ts, name, "backends", f"datname={datname};state={state}", n)
                for datname, commit, rollback, hit, read in c.execute(
                        "SELECT datname, xact_commit, xact_rollback, blks_hit, blks_read "
                        "FROM pg_stat_database WHERE datname IS NOT NULL "
                        "AND datname NOT IN ('template0', 'template1')").fetchall():
                    lab = f"datname={datname}"
                    row(ts, name, "xact_commit", lab, commit)
                    row(ts, name, "xact_rollback", lab, rollback)
                    row(ts, name, "blks_hit", lab, hit)
                    row(ts, name, "blks_read", lab, read)
                for app, lag in c.execute(
                        "SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) "
                        "FROM pg_stat_replication WHERE NOT pg_is_in_recovery()").fetchall():
                    row(ts, name, "replication_lag_bytes", f"standby={app}", lag if lag is not None else "")
            except psycopg.Error:
                self._conns.pop(name, None)
                row(ts, name, "up", "", 0)
        if self.redis_url is None:
            return      # a targets file without Redis
        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)
            info = self._redis.info()
            self.redis_table.row(ts, "up", 1)
            for k in ("keyspace_hits", "keyspace_misses", "connected_clients", "used_memory",
                      "instantaneous_ops_per_sec", "total_commands_processed"):
                self.redis_table.row(ts, k, info.get(k, ""))
        except redis.RedisError:
            self._redis = None
            self.redis_table.row(ts, "up", 0)

    def statements(self) -> dict:
        """A pg_stat_statements snapshot: (instance, db, queryid) -> (query, calls, ms, rows)."""
        out = {}
        for name, dsn in self.instances.items():
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as c:
                    if c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        continue
                    dbs = [r[0] for r in c.execute(
                        "SELECT datname FROM pg_database WHERE datname LIKE '%%_service_db'").fetchall()]
                for db in dbs:
                    with psycopg.connect(make_conninfo(dsn, dbname=db), autocommit=True,
                                         connect_timeout=2) as c:
                        for qid, q, calls, ms, rows in c.execute(
                                "SELECT queryid, query, calls, total_exec_time, rows FROM pg_stat_statements "
                                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                        ).fetchall():
                            out[(name, db, qid)] = (q, calls, ms, rows)
            except psycopg.Error:
                continue
        return out

    def close(self) -> None:
        for c in self._conns.values():
            try:
                c.close()
            except Exception:  # closing a broken connection may itself fail
                pass
        self._conns.clear()


def write_statement_deltas(before: dict, after: dict, table: CsvTable, top: int = 50) -> None:
    """The top queries by time spent during the run (end snapshot minus start)."""
    rows = []
    for key, (q, calls, ms, nrows) in after.items():
        b = before.get(key, (q, 0, 0.0, 0))
        dc, dms, dr = calls - b[1], ms - b[2], nrows - b[3]
        if dc > 0:
            rows.append((key[0], key[1], key[2], " ".join(q.split())[:500], dc, round(dms, 3),
                         round(dms / dc, 4), dr))
    for r in sorted(rows, key=lambda r: -r[5])[:top]:
        table.row(*r)
