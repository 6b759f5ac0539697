"""The health of every part of a stack (`msdb status`, the health sampler).

A part is healthy when its process runs (where the backend has PIDs) and
it answers as it should: PostgreSQL in the right recovery state, the
replica streaming, every proxy present and enabled, Redis answering PING,
the seed engines' stand-ins answering their protocol, each service's
/health 200.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
import requests

from . import engines as seed_engines
from . import procs
from .info import StackInfo

__all__ = ["PartStatus", "StatusProbe", "status", "status_of"]


@dataclass
class PartStatus:
    name: str
    kind: str
    endpoint: str
    pid: int | None
    healthy: bool
    detail: str = ""


class StatusProbe:
    """What `status` talks through, with connections kept between calls.

    The health sampler asks every second; a fresh SCRAM login per instance
    and a fresh HTTP connection per service cost more CPU than the checks
    themselves (measured: benchmarks/bench_samplers.py).
    """

    def __init__(self):
        self._info: tuple[float, StackInfo] | None = None   # (mtime, stack.json)
        self._pg: dict[str, psycopg.Connection] = {}
        self._redis: dict[str, redis.Redis] = {}
        self.http = requests.Session()
        self.http.trust_env = False   # loopback only: skip the per-request proxy lookup

    @contextmanager
    def pg(self, dsn: str):
        c = self._pg.get(dsn)
        if c is None or c.closed:
            c = self._pg[dsn] = psycopg.connect(dsn, connect_timeout=3, autocommit=True)
        try:
            yield c
        except psycopg.Error:
            self._pg.pop(dsn, None)
            try:
                c.close()
            except psycopg.Error:
                pass
            raise

    def redis(self, url: str) -> redis.Redis:
        r = self._redis.get(url)
        if r is None:
            r = self._redis[url] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        return r

    def get_json(self, url: str, timeout: float = 3) -> tuple[int, dict]:
        try:
            resp = self.http.get(url, timeout=timeout)
        except requests.RequestException as e:
            raise OSError(str(e)) from None
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, {}

    def stack(self, state_dir: Path) -> StackInfo:
        """stack.json, parsed again only when it changed."""
        path = Path(state_dir) / "stack.json"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return StackInfo.load(state_dir)   # raises NoStackError
        if self._info is None or self._info[0] != mtime:
            self._info = (mtime, StackInfo.load(state_dir))
        return self._info[1]

    def close(self) -> None:
        for c in self._pg.values():
            try:
                c.close()
            except psycopg.Error:
                pass
        for r in self._redis.values():
            r.close()
        self.http.close()
        self._pg.clear()
        self._redis.clear()


def status(state_dir: Path, probe: StatusProbe | None = None) -> list[PartStatus]:
    own = probe is None
    probe = probe or StatusProbe()
    try:
        return status_of(probe.stack(state_dir), probe)
    finally:
        if own:
            probe.close()


def status_of(info: StackInfo, probe: StatusProbe) -> list[PartStatus]:
    by_name = {p.name: p for p in info.parts}
    out: list[PartStatus] = []

    def proc_ok(name: str) -> tuple[int | None, bool]:
        part = by_name.get(name)
        if part is None or part.proc is None:
            return None, True       # no PID to check: its answer alone decides
        rec = procs.ProcRecord.from_json(part.proc)
        return rec.pid, procs.is_running(rec)

    for inst in info.instances:
        pid, alive = proc_ok(inst.name)
        detail, ok = "", False
        if not alive:
            detail = "process not running"
        else:
            try:
                with probe.pg(inst.admin_dsn) as c:
                    in_rec = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                    if inst.role == "replica":
                        ok = in_rec
                        detail = "hot standby" if in_rec else "NOT in recovery"
                    else:
                        ok = not in_rec
                        # Logical walsenders (the CDC relay's slots) are not replicas.
                        n, cdc = c.execute(
                            "SELECT count(*) FILTER (WHERE s.slot_type IS DISTINCT FROM 'logical'), "
                            "count(*) FILTER (WHERE s.slot_type = 'logical') "
                            "FROM pg_stat_replication r "
                            "LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid").fetchone()
                        detail = f"primary ({', '.join(inst.services)})" + \
                            (f", {n} replica{'s' if n != 1 else ''}" if n else "") + \
                            (f", {cdc} CDC stream{'s' if cdc != 1 else ''}" if cdc else "")
            except psycopg.Error as e:
                detail = str(e).strip().splitlines()[0][:120]
        endpoint = by_name[inst.name].endpoint if inst.name in by_name else ""
        out.append(PartStatus(inst.name, "postgres", endpoint, pid, ok, detail))

    # Replication: the replica is streaming from its primary.
    rep = info.replica
    if rep is not None:
        ok, detail = False, ""
        try:
            with probe.pg(info.instance(rep.primary).admin_dsn) as c:
                row = c.execute(
                    "SELECT state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint "
                    "FROM pg_stat_replication WHERE application_name = %s", (rep.instance,)).fetchone()
            if row is None:
                detail = "no replication connection"
            else:
                ok = row[0] == "streaming"
                detail = f"{row[0]}, replay lag {row[1]} bytes"
        except psycopg.Error as e:
            detail = str(e).strip().splitlines()[0][:120]
        out.append(PartStatus("replication", "replication", f"{rep.primary} -> {rep.instance}", None,
                              ok, detail))

    pid, alive = proc_ok("proxy")
    ok, detail = False, "process not running"
    if alive:
        try:
            _, have = probe.get_json(info.proxy.api + "/proxies")
            missing = sorted(info.proxy.names - set(have))
            disabled = sorted(n for n, p in have.items() if not p["enabled"])
            toxics = sum(len(p["toxics"]) for p in have.values())
            ok = not missing and not disabled
            detail = f"{len(have)} proxies, {toxics} toxic(s)"
            if missing:
                detail += f"; missing: {', '.join(missing)}"
            if disabled:
                detail += f"; disabled: {', '.join(disabled)}"
        except (OSError, ValueError, AttributeError, TypeError) as e:
            detail = str(e)[:120]
    out.append(PartStatus("proxy", "proxy", info.proxy.api, pid, ok, detail))

    if info.redis is not None:      # a targets file may have none
        out.append(_redis_status(info, probe, by_name, proc_ok))

    # --engines seed: the stand-ins (harness/stack/engines.py)
    for part in info.parts:
        if part.kind not in ("engine", "engine-storage"):
            continue
        pid, alive = proc_ok(part.name)
        ok, detail = False, "process not running"
        if alive:
            ok, detail = seed_engines.probe(part.name, part.endpoint)
        out.append(PartStatus(part.name, part.kind, part.endpoint, pid, ok, detail))

    for name, svc in info.services.items():
        pid, alive = proc_ok(name)
        ok, detail = False, "process not running"
        if alive:
            try:
                code, body = probe.get_json(svc.url + "/health")
                ok = code == 200
                detail = ("" if ok else "unhealthy: ") + ", ".join(
                    f"{k} {'ok' if v.get('ok') else 'DOWN'}" for k, v in body.get("checks", {}).items())
                if not body:
                    detail = f"HTTP {code}"
            except OSError as e:
                detail = str(e)[:120]
        out.append(PartStatus(name, "service", svc.url, pid, ok, detail))
    return out


def _redis_status(info: StackInfo, probe: StatusProbe, by_name: dict, proc_ok) -> PartStatus:
    pid, alive = proc_ok("redis")
    ok, detail = False, "process not running"
    if alive:
        try:
            r = probe.redis(info.redis.url)
            ok = bool(r.ping())
            detail = f"redis {r.info('server')['redis_version']}"
        except redis.RedisError as e:
            detail = str(e)[:120]
    endpoint = by_name["redis"].endpoint if "redis" in by_name else info.redis.url.rsplit("@", 1)[-1]
    return PartStatus("redis", "redis", endpoint, pid, ok, detail)

