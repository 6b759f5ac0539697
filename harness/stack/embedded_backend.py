"""`EmbeddedBackend`: the `StackBackend` of the embedded stack in one state dir.

Its `up()` starts the stack from a separate `msdb up` process: the parts are
then children of PID 1, which reaps one that a fault kills (a killed
postmaster that stays a zombie of ours would block its own restart).
`start()` is what that `msdb up` process runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import InfraError, NoStackError, UsageError
from . import procs
from .actions import EmbeddedActions, embedded_actions
from .embedded import EmbeddedStack, StackOptions, stop_parts
from .info import StackInfo
from .pg import PgRuntime
from .proxies import repoint_proxy
from .status import PartStatus, StatusProbe, status

__all__ = ["EmbeddedBackend"]


def _recorded_parts(state_dir: Path) -> list | None:
    """The (kind, ProcRecord) pairs a stack.json records, read leniently; None
    when they cannot be read at all."""
    import json
    try:
        data = json.loads((Path(state_dir) / "stack.json").read_text())
        return [(p.get("kind", "process"), procs.ProcRecord.from_json(p["proc"]))
                for p in data["parts"] if isinstance(p, dict) and p.get("proc")]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class EmbeddedBackend:
    """`StackBackend` for the embedded stack in one state dir."""

    kind = "embedded"

    def __init__(self, options: StackOptions):
        self.options = options
        self.state_dir = Path(options.state_dir)

    def __repr__(self) -> str:
        return f"EmbeddedBackend({str(self.state_dir)!r})"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, *, fresh: bool = False, log=print) -> tuple[StackInfo, bool]:
        """Start the stack in this process (`msdb up`); returns (info, started_now).
        Idempotent: a healthy stack with the same layout is left as it is."""
        opts = self.options
        if fresh:
            self.down(purge=True, log=lambda *a: None)
        try:
            existing = StackInfo.load(self.state_dir)
        except NoStackError:
            existing = None
        if existing is not None:
            if (existing.topology != opts.topology or existing.base_port != opts.base_port
                    or StackOptions.of(existing).engines != opts.engines
                    or existing.tls != opts.tls):
                if any(p.healthy for p in self.status()):
                    raise UsageError(
                        f"a {existing.topology!r} stack on base port {existing.base_port} "
                        f"(engines {StackOptions.of(existing).engines}"
                        f"{', TLS' if existing.tls else ''}) is "
                        f"running in {self.state_dir}; run `msdb down` first, or add --fresh")
            elif all(p.healthy for p in self.status()):
                return existing, False
            # Partly running: stop what is left, then start cleanly on the same data.
            self.down(log=lambda *a: None)
        return EmbeddedStack(opts).start(log=log), True

    def up(self, *, timeout_s: float = 300.0) -> StackInfo:
        """Start the stack from a separate `msdb up` process (see the module
        docstring); exit 2 of that process is a UsageError, anything else an
        InfraError, and so is a start that takes longer than timeout_s."""
        o = self.options
        argv = [sys.executable, "-m", "harness.cli", "up", "--state-dir", str(self.state_dir),
                "--topology", o.topology, "--base-port", str(o.base_port),
                "--archive-timeout", f"{o.archive_timeout_s}s", "--engines", o.engines,
                *(["--tls"] if o.tls else [])]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.down()
            raise InfraError(f"the stack in {self.state_dir} did not come up within "
                             f"{timeout_s:.0f} s") from None
        if r.returncode != 0:
            msg = (r.stderr.strip() or r.stdout.strip())
            if r.returncode == 2:
                raise UsageError(msg.removeprefix("msdb up: error: "))
            raise InfraError(f"the stack in {self.state_dir} would not start:\n{msg[-3000:]}")
        return self.info()

    def down(self, *, purge: bool = False, log=lambda *a: None) -> list[str]:
        """Stop every process recorded in stack.json, by PID.  Returns leftovers."""
        state_dir = self.state_dir
        left: list[str] = []
        parts = None
        try:
            info = StackInfo.load(state_dir)
            parts = [(p.kind, procs.ProcRecord.from_json(p.proc)) for p in info.parts if p.proc]
        except NoStackError:
            info = None
        except (InfraError, UsageError) as e:
            # stack.json that this msdb cannot read as a whole (another
            # version's, or damaged): its processes are still stopped by the
            # PIDs it records, and nothing is deleted while any may run.
            parts = _recorded_parts(state_dir)
            if parts is None:
                log(f"cannot read the processes of {state_dir}/stack.json ({e}); nothing stopped "
                    f"or deleted: stop them by their PIDs, then delete the state dir")
                return [f"the processes of {state_dir}/stack.json (unreadable: {e})"]
            info = True
        if info is not None:
            left = stop_parts(parts)
            if not left:
                (state_dir / "stack.json").unlink(missing_ok=True)
            log(f"stopped {len(parts) - len(left)} processes" +
                (f"; still running: {', '.join(left)}" if left else ""))
        else:
            log(f"no stack running in {state_dir}")
        if purge and not left:
            # Also when the state dir is already gone: as root the data lives
            # elsewhere (/var/lib/msdb/<id of the state dir's path>).
            gone = PgRuntime.for_state_dir(state_dir).purge()
            if state_dir.exists():
                shutil.rmtree(state_dir)
                gone.append(str(state_dir))
            log(f"deleted {', '.join(gone)}" if gone else f"nothing to delete for {state_dir}")
        return left

    # -- what a run needs ---------------------------------------------------------------

    def info(self) -> StackInfo:
        return StackInfo.load(self.state_dir)

    def status(self, probe: StatusProbe | None = None) -> list[PartStatus]:
        return status(self.state_dir, probe)

    def actions(self) -> EmbeddedActions:
        return embedded_actions(self.state_dir)

    def repoint(self, link: str, upstream: str) -> None:
        repoint_proxy(self.info().proxy.api, link, upstream)

    def set_overrides(self, overrides: dict[str, dict[str, str]]) -> list[str]:
        return EmbeddedStack.attach(self.state_dir).set_overrides(overrides)

    # -- embedded only (the drills work on its data directories) -----------------------

    def stack(self) -> EmbeddedStack:
        return EmbeddedStack.attach(self.state_dir)
