"""The lag monitor: replica lag and CDC lag, measured beside a run.

A separate process (`python -m harness.run.lagmon`), so that its timing does not
depend on the Locust process's event loop; it stops on SIGTERM/SIGINT and
when its parent run disappears.

Streaming replica (every run):
- heartbeat: every 100 ms a writer bumps `msdb_heartbeat.seq` on the primary
  (database `postgres`, direct admin connection: the heartbeat is the
  instrument, not the system under test) and notes when the commit returned;
  a poller reads the replica every 5 ms and notes when each seq became
  visible.  heartbeats.csv: one row per beat, lag = visible - committed, to
  5 ms + one query (≤ 10 ms).
- replication.csv at 1 Hz: `hb_lag_ms` = how long the oldest committed but
  not yet visible beat has been waiting (grows 1 s per s while the replica is
  stopped), or the last beat's measured lag when all are visible; and from
  pg_stat_replication write/flush/replay lag and the replay byte lag.
  `replay_lag` is NULL once the standby has caught up: then it is 0 if the
  replayed LSN equals the sent LSN (`replay_lag_note=caught-up`), and left
  empty (`unknown`) otherwise, never guessed.

CDC (when the stack has the relay):
- cdc_lag.csv: every applied change event of every consumer (commit time at
  the source, time visible in the target), read from the consumers'
  `/admin/cdc/<name>/lag` with a cursor per process boot;
- cdc_backlog.csv at 1 Hz: per consumer group, events published on its topic
  and not yet delivered, plus delivered but unacknowledged (pending), as the
  consuming service reports them (`GET /admin/cdc/<group>/backlog`) on a
  Kafka bus, where there is no outside reader to ask (Tansu's ListOffsets
  under-counts, docs/engines-adapters.md): while that service is down its
  rows are empty.  On a Redis bus, from Redis directly (`cdc_backlog`), as
  before: it sees a stopped consumer's backlog grow (the endpoint answers
  too, while its service runs).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

import psycopg
import orjson
import redis
import requests

from system_under_test.common.bus import SEQ_KEY

from ..stack.info import StackInfo
from ..stack.topology import CDC_CONSUMERS as CONSUMERS
from .children import serve
from .rundir import CsvTable

__all__ = ["LagMonitor", "cdc_backlog", "cdc_backlog_http", "bus_is_redis", "CONSUMERS", "HEARTBEAT_COLUMNS", "REPLICATION_COLUMNS",
           "CDC_LAG_COLUMNS", "CDC_BACKLOG_COLUMNS"]

log = logging.getLogger("msdb.lagmon")

HEARTBEAT_COLUMNS = ["seq", "committed", "visible", "lag_ms"]
REPLICATION_COLUMNS = ["time", "hb_lag_ms", "last_beat_lag_ms", "pending_beats", "write_lag_ms",
                       "flush_lag_ms", "replay_lag_ms", "replay_lag_note", "replay_byte_lag",
                       "state", "replica_up"]
CDC_LAG_COLUMNS = ["consumer", "boot", "i", "table", "lsn", "commit_ms", "applied_ms", "lag_ms"]
CDC_BACKLOG_COLUMNS = ["time", "consumer", "source", "published", "backlog", "pending", "up"]

BEAT_S = 0.1
POLL_S = 0.005


def cdc_backlog(r, group: str, source: str) -> tuple[int, int, int]:
    """(published, backlog, pending) of one consumer group, from Redis alone:
    backlog = events published on the topic and not yet delivered to the group
    (the relay numbers them: `seq`) + delivered but unacknowledged (pending)."""
    stream = f"bus:cdc.{source}"
    published = int(r.get(SEQ_KEY.format(source=source)) or 0)
    if not r.exists(stream):
        return published, 0, 0
    g = next((g for g in r.xinfo_groups(stream) if g["name"] in (group, group.encode())), None)
    if g is None:
        return published, published, 0
    pending = int(g["pending"])
    last = g["last-delivered-id"]
    delivered_seq = 0
    if last not in (b"0-0", "0-0"):
        entry = r.xrange(stream, min=last, max=last, count=1)
        if entry:
            delivered_seq = int(orjson.loads(entry[0][1][b"e"]).get("seq", 0))
    return published, max(0, published - delivered_seq) + pending, pending


def cdc_backlog_http(session: requests.Session, url: str, group: str,
                     timeout_s: float = 2.0) -> tuple[int | None, int | None, int | None, bool]:
    """(published, backlog, pending, up) of one consumer group, as its service
    reports it from the bus.  Raises requests' errors (the service is down)."""
    resp = session.get(f"{url}/admin/cdc/{group}/backlog", timeout=timeout_s)
    resp.raise_for_status()
    d = resp.json()
    return d.get("published"), d.get("backlog"), d.get("pending"), bool(d.get("up"))


def bus_is_redis(info: StackInfo) -> bool:
    """Whether the CDC bus is Redis Streams (a stack that names no bus engine
    and has Redis: yes, as before engines were recorded)."""
    bus = next((e for e in info.engines if e.name == "bus"), None)
    return "redis" in bus.kind if bus is not None else info.redis is not None


class LagMonitor:
    def __init__(self, info: StackInfo, out: Path, *, beat_s: float = BEAT_S, poll_s: float = POLL_S):
        # A targets file may leave out the replica (no heartbeats) or Redis (no
        # CDC backlog); what it leaves out is not measured, and says so by absence.
        rep = info.replica
        names = {i.name for i in info.instances}
        self.repl_on = rep is not None and {rep.primary, rep.instance} <= names
        self.primary_dsn = info.instance(rep.primary).admin_dsn if self.repl_on else None
        self.replica_dsn = info.instance(rep.instance).admin_dsn if self.repl_on else None
        self.standby = rep.instance if rep is not None else None   # its application_name
        self.services = info.urls
        # Redis is read directly only for a Redis bus (above).
        self.redis_url = info.redis.url if info.redis is not None and bus_is_redis(info) else None
        self.beat_s, self.poll_s = beat_s, poll_s
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.committed: dict[int, float] = {}   # seq -> commit returned (epoch s)
        self.seen_seq = 0                        # newest seq visible on the replica
        # When the first poll that reached the replica began: a beat committed
        # before it was not watched on time (the monitor was still connecting),
        # so its apparent lag is the monitor's start-up, not the replica's.
        self.watching_since: float | None = None
        self.last_beat_lag_ms: float | None = None
        self.replica_up = False
        self.beats = CsvTable(out / "heartbeats.csv", HEARTBEAT_COLUMNS)
        self.repl = CsvTable(out / "replication.csv", REPLICATION_COLUMNS)
        self.cdc_on = "cdc" in self.services
        if self.cdc_on:
            self.cdc_lag = CsvTable(out / "cdc_lag.csv", CDC_LAG_COLUMNS)
            self.backlog_table = CsvTable(out / "cdc_backlog.csv", CDC_BACKLOG_COLUMNS)
        self.cursors: dict[str, tuple[str, int]] = {}
        self.published_seen: dict[str, int] = {}     # per group, on a Kafka bus
        self.threads: list[threading.Thread] = []

    # -- heartbeat --------------------------------------------------------------

    def _connect(self, dsn: str) -> psycopg.Connection:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=2)

    def _writer(self) -> None:
        conn = None
        seq = 0
        next_t = time.monotonic()
        while not self.stop_event.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self._connect(self.primary_dsn)
                    conn.execute("CREATE TABLE IF NOT EXISTS msdb_heartbeat "
                                 "(id int PRIMARY KEY, seq bigint NOT NULL, ts timestamptz NOT NULL)")
                    row = conn.execute("SELECT seq FROM msdb_heartbeat WHERE id = 1").fetchone()
                    seq = max(seq, row[0] if row else 0)
                seq += 1
                # The beat's time is taken before it is sent, not after the
                # answer: a thread that got the GIL back 35 ms late made a beat
                # through a 200 ms link look 165 ms late (CI, 2026-12-02).  So
                # a lag is never under-stated; it may include the commit's own
                # round trip (~1 ms).  (This client's clock on both ends, not
                # the row's clock_timestamp(): a target's database may be on a
                # host whose clock differs.)
                sent = time.time()
                conn.execute("INSERT INTO msdb_heartbeat VALUES (1, %s, clock_timestamp()) "
                             "ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, ts = EXCLUDED.ts",
                             (seq,))
                with self.lock:
                    self.committed[seq] = sent
            except psycopg.Error as e:
                log.debug("heartbeat write failed: %s", e)
                conn = None
            next_t += self.beat_s
            self.stop_event.wait(max(0.0, next_t - time.monotonic()))
        if conn is not None:
            conn.close()

    def _poller(self) -> None:
        conn = None
        while not self.stop_event.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self._connect(self.replica_dsn)
                started = time.time()
                row = conn.execute("SELECT seq FROM msdb_heartbeat WHERE id = 1").fetchone()
                now = time.time()
                self.replica_up = True
                if self.watching_since is None:
                    with self.lock:
                        self.watching_since = started
                if row and row[0] > self.seen_seq:
                    self._visible(row[0], now)
            except psycopg.Error as e:
                self.replica_up = False
                log.debug("heartbeat poll failed: %s", e)
                conn = None
                self.stop_event.wait(0.2)
            self.stop_event.wait(self.poll_s)
        if conn is not None:
            conn.close()

    def _visible(self, seq: int, now: float) -> None:
        with self.lock:
            newly = sorted(s for s in self.committed if self.seen_seq < s <= seq)
            self.seen_seq = seq
            for s in newly:
                c = self.committed.pop(s)
                if self.watching_since is None or c < self.watching_since:
                    continue        # committed before anyone watched: not a measurement
                lag = max(0.0, (now - c) * 1000)
                self.beats.row(s, round(c, 4), round(now, 4), round(lag, 2))
                self.last_beat_lag_ms = round(lag, 2)   # the newest visible beat's, in the end
            for s in [s for s in self.committed if s <= seq]:   # beats written before a restart
                self.committed.pop(s)

    def hb_lag_ms(self, now: float) -> tuple[float | None, int]:
        """(current lag, beats waiting): the larger of the newest visible beat's
        measured lag and the age of the oldest committed beat not yet visible
        (which keeps growing while the replica is stopped)."""
        with self.lock:
            if self.watching_since is None:
                return None, 0      # not watching the replica yet: nothing measured
            waiting = [c for s, c in self.committed.items()
                       if s > self.seen_seq and c >= self.watching_since]
            age = round((now - min(waiting)) * 1000, 2) if waiting else None
            known = [v for v in (age, self.last_beat_lag_ms) if v is not None]
            return (max(known) if known else None), len(waiting)

    # -- 1 Hz samples ---------------------------------------------------------------

    def _sampler(self) -> None:
        pconn = None
        next_t = time.monotonic()
        session = None
        while not self.stop_event.is_set():
            now = time.time()
            lag, waiting = self.hb_lag_ms(now)
            if self.repl_on:
                w = f = r = note = blag = state = ""
                try:
                    if pconn is None or pconn.closed:
                        pconn = self._connect(self.primary_dsn)
                    row = pconn.execute(
                        "SELECT extract(epoch FROM write_lag) * 1000, extract(epoch FROM flush_lag) * 1000, "
                        "extract(epoch FROM replay_lag) * 1000, pg_wal_lsn_diff(sent_lsn, replay_lsn), "
                        "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), state "
                        "FROM pg_stat_replication WHERE application_name = %s", (self.standby,)).fetchone()
                    if row is None:
                        state = "not-connected"
                    else:
                        wl, fl, rl, sent_vs_replay, blag_v, state = row
                        w = "" if wl is None else round(float(wl), 3)
                        f = "" if fl is None else round(float(fl), 3)
                        blag = "" if blag_v is None else int(blag_v)
                        if rl is not None:
                            r, note = round(float(rl), 3), "measured"
                        elif sent_vs_replay == 0:
                            r, note = 0.0, "caught-up"
                        else:
                            note = "unknown"
                except psycopg.Error as e:
                    log.debug("pg_stat_replication failed: %s", e)
                    pconn = None
                    state = "primary-down"
                self.repl.row(round(now, 3), "" if lag is None else lag,
                              "" if self.last_beat_lag_ms is None else self.last_beat_lag_ms,
                              waiting, w, f, r, note, blag, state, int(self.replica_up))
            if self.cdc_on:
                session = self._sample_cdc(session, now)
            next_t += 1.0
            self.stop_event.wait(max(0.0, next_t - time.monotonic()))
        if pconn is not None:
            pconn.close()

    def _sample_cdc(self, session, now: float):
        if session is None:
            session = requests.Session()
            session.trust_env = False
            self._redis = None if self.redis_url is None else \
                redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)
        for group, (svc, source) in CONSUMERS.items():
            up = 1
            try:
                boot, since = self.cursors.get(group, ("", 0))
                resp = session.get(f"{self.services[svc]}/admin/cdc/{group}/lag",
                                   params={"since": since}, timeout=2)
                resp.raise_for_status()
                doc = resp.json()
                if doc["boot"] != boot:   # a new process: its cursor starts again
                    since = 0
                    if boot:
                        resp = session.get(f"{self.services[svc]}/admin/cdc/{group}/lag",
                                           params={"since": 0}, timeout=2)
                        doc = resp.json()
                for it in doc["items"]:
                    self.cdc_lag.row(group, doc["boot"], it["i"], it["table"], it["lsn"],
                                     it["commit_ms"], it["applied_ms"],
                                     round(it["applied_ms"] - it["commit_ms"], 3))
                    since = max(since, it["i"])
                self.cursors[group] = (doc["boot"], since)
            except (requests.RequestException, ValueError, KeyError) as e:
                log.debug("cdc lag of %s: %s", group, e)
                up = 0
            published = backlog = pending = ""
            if self._redis is not None:     # a Redis bus: read Redis, the service may be down
                try:
                    published, backlog, pending = cdc_backlog(self._redis, group, source)
                except redis.RedisError as e:
                    log.debug("cdc backlog of %s: %s", group, e)
            else:
                try:
                    p, b, pe, bus_up = cdc_backlog_http(session, self.services[svc], group)
                    # End offsets never go back: a restarted consumer reports
                    # less (even 0, "caught up") until its first fetch tells it
                    # where the topic ends; not a figure yet.
                    seen = self.published_seen.get(group, 0)
                    if bus_up and p is not None and p >= seen:
                        self.published_seen[group] = p
                        published, backlog, pending = ("" if v is None else v for v in (p, b, pe))
                except (requests.RequestException, ValueError, KeyError) as e:
                    log.debug("cdc backlog of %s from its service: %s", group, e)
            self.backlog_table.row(round(now, 3), group, source, published, backlog, pending, up)
        return session

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        for fn in ((self._writer, self._poller) if self.repl_on else ()) + (self._sampler,):
            t = threading.Thread(target=fn, name=fn.__name__, daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=10)
        for t in (self.beats, self.repl, *((self.cdc_lag, self.backlog_table) if self.cdc_on else ())):
            t.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.run.lagmon")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--parent", type=int, default=None, help="exit when this PID is gone")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    mon = LagMonitor(StackInfo.load(args.state_dir), Path(args.out))
    mon.start()
    serve(args.parent, log)
    mon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
