"""The drill's own stack: a fresh `dedicated` stack (each service its own
instance) in its own state dir, stopped and purged when the drill ends, as a
suite's is (harness.stack.backend.fresh_stack).  A drill is destructive, so it
never touches the user's stack.

Processes the drill starts beside the stack (the restored instance,
pg_receivewal) are recorded in its stack.json, so they stop with it.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from pathlib import Path

from chaos.client import ToxiproxyServer

from ..errors import InfraError
from ..stack import procs
from ..stack.backend import fresh_stack
from ..stack.embedded import StackOptions
from ..stack.embedded_backend import EmbeddedBackend
from ..stack.pg import PgInstance
from ..stack.topology import SERVICE_BY_NAME
from ..utc import utc
from .backup import WAL_RE, BackupSet, parse_lsn

__all__ = ["DrillStack", "archive_now", "newest_archived", "db_stats", "RESTORED_OFFSET"]

RESTORED_OFFSET = 8          # base+8 is free in every topology's port block


class DrillStack:
    """`with DrillStack(...) as ds`: the fresh stack, its instances and backups."""

    def __init__(self, state_dir: Path, base_port: int, archive_timeout_s: int, log=print,
                 keep: bool = False):
        self.options = StackOptions(state_dir=Path(state_dir), topology="dedicated",
                                    base_port=base_port, archive_timeout_s=archive_timeout_s)
        self.keep = keep
        self.log = log
        self._exit = ExitStack()

    def __enter__(self) -> "DrillStack":
        t0 = time.monotonic()
        self.backend: EmbeddedBackend = self._exit.enter_context(
            fresh_stack(self.options, keep=self.keep, log=self.log))
        self.log(f"  fresh dedicated stack on ports {self.options.base_port}.. in "
                 f"{self.options.state_dir} ({time.monotonic() - t0:.1f} s)")
        self.stack = self.backend.stack()
        self.info = self.backend.info()
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._exit.__exit__(*exc)

    def adopt(self, rec: procs.ProcRecord, kind: str) -> None:
        """A process of the drill's: recorded in stack.json, so it stops with the stack."""
        self.stack.record(rec, kind)

    def instance(self, db: str) -> PgInstance:
        return self.stack.pg[self.stack.layout.instance_of(db).name]

    def backup_set(self, inst: PgInstance) -> BackupSet:
        rt = inst.rt
        inst.ensure_replicator(self.stack.sec["replicator"])
        bs = BackupSet(inst, rt.data_root / "backups" / inst.name, rt.data_root / "geo" / inst.name,
                       replicator_password=self.stack.sec["replicator"])
        bs.prepare()
        return bs

    def restored_instance(self, inst: PgInstance, suffix: str = "restored") -> PgInstance:
        return PgInstance(inst.rt, f"{inst.name}-{suffix}", self.options.base_port + RESTORED_OFFSET,
                          inst.superuser_password, archive_timeout_s=self.options.archive_timeout_s,
                          replicator_password=self.stack.sec["replicator"])

    def destroy(self, inst: PgInstance) -> None:
        """The disaster: kill -9 of the instance (through the backend's part
        actions), then its data directory is deleted."""
        self.backend.actions().kill(inst.name)
        if procs.pids_in(inst.datadir):
            raise InfraError(f"{inst.name} still has processes after kill -9; not deleting its data")
        shutil.rmtree(inst.datadir)

    def repoint(self, db: str, port: int) -> None:
        self.backend.repoint(f"{db}-db", f"127.0.0.1:{port}")

    def repoint_others(self, old_port: int, port: int, done: str) -> list[str]:
        """Every other link that reached the destroyed instance (the CDC relay's,
        the replica's streaming link) follows it too; not part of the RTO."""
        moved = []
        live = ToxiproxyServer.at(self.info.proxy.api, timeout=10).proxies()
        for name, px in live.items():
            if name != done and px.upstream == f"127.0.0.1:{old_port}":
                self.backend.repoint(name, f"127.0.0.1:{port}")
                moved.append(name)
        return moved


def archive_now(inst: PgInstance, bs: BackupSet, timeout: float = 30.0) -> str:
    """pg_switch_wal() and wait until the closed segment is in the archive (the
    operator's first move after an accident: make the WAL up to now recoverable)."""
    with inst.connect() as c:
        seg = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    deadline = time.monotonic() + timeout
    while not (bs.archive_dir / seg).exists():
        if time.monotonic() > deadline:
            raise InfraError(f"WAL segment {seg} was not archived into {bs.archive_dir} within "
                             f"{timeout:.0f} s (archive_command failing? see the server log)")
        time.sleep(0.05)
    return seg


def db_stats(inst: PgInstance, db: str) -> dict:
    with inst.connect() as c:
        lsn = c.execute("SELECT pg_current_wal_lsn()::text, pg_database_size(%s)",
                        (SERVICE_BY_NAME[db].database,)).fetchone()
    return {"lsn": parse_lsn(lsn[0]), "db_bytes": lsn[1], "t": time.time()}


def newest_archived(d: Path) -> dict | None:
    files = [p for p in d.iterdir() if WAL_RE.match(p.name)] if d.is_dir() else []
    if not files:
        return None
    p = max(files, key=lambda p: p.name)
    return {"segment": p.name, "archived_ts": p.stat().st_mtime, "archived_utc": utc(p.stat().st_mtime)}
