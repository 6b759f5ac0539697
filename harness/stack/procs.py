"""The one process supervisor: start detached processes, know if they live,
stop them by PID.

A PID alone can be reused after a process dies, so every record also keeps
the process start time (field 22 of /proc/PID/stat, in clock ticks since
boot).  We only ever signal a PID whose start time still matches.

Processes are started in their own session (start_new_session) so that the
process group id equals the PID: a hard stop can signal the whole group
(a postmaster and its backends) by the PID we recorded.  Never `pkill -f`.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import StartupError

__all__ = ["ProcRecord", "spawn", "is_running", "stop", "wait_gone", "start_ticks",
           "wait_ready", "tail", "pids_in", "members", "signal_all"]

# Tunables, patchable by tests.
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class ProcRecord:
    name: str
    pid: int
    start_ticks: int
    argv: list[str] = field(default_factory=list)
    log: str = ""
    # Which signal asks this process for a clean, fast shutdown.
    stop_signal: int = int(signal.SIGTERM)
    # A directory all of its children work in (PostgreSQL: the data dir).
    # PostgreSQL backends call setsid(), so the process group does not reach
    # them; their working directory does.
    workdir: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ProcRecord":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def start_ticks(pid: int) -> int | None:
    """Start time of PID in clock ticks, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(")") + 2:].split()
    return int(rest[19])


def _state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2:].split()[0]


def _reap(pid: int) -> None:
    """Reap PID if it is our child; harmless otherwise."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_running(rec: ProcRecord) -> bool:
    """True if the recorded process still exists and is not a zombie."""
    _reap(rec.pid)
    try:
        raw = Path(f"/proc/{rec.pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    fields = raw[raw.rfind(")") + 2:].split()
    return int(fields[19]) == rec.start_ticks and fields[0] not in ("Z", "X")


def spawn(name: str, argv: list[str], *, log_path: Path, env: dict | None = None,
          cwd: Path | None = None, user: str | None = None,
          stop_signal: int = signal.SIGTERM,
          workdir: str | Path = "") -> tuple[subprocess.Popen, ProcRecord]:
    """Start argv detached from our terminal, stdout+stderr appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True, close_fds=True,
            user=user, group=_group_of(user), extra_groups=[] if user else None,
        )
    ticks = None
    deadline = time.monotonic() + 2.0
    while ticks is None and time.monotonic() < deadline:
        ticks = start_ticks(proc.pid)
    if ticks is None:  # exited immediately; record something that never matches
        ticks = -1
    return proc, ProcRecord(name=name, pid=proc.pid, start_ticks=ticks, argv=list(argv),
                            log=str(log_path), stop_signal=int(stop_signal), workdir=str(workdir))


def _group_of(user: str | None):
    if user is None:
        return None
    return pwd.getpwnam(user).pw_gid


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until /proc/PID disappears (zombies included); True if it did.

    PID 1 here reaps orphans only after 1-3 s, and PostgreSQL refuses to start
    on a data directory whose postmaster.pid names a PID that still exists.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(POLL_INTERVAL)
    return not Path(f"/proc/{pid}").exists()


def _wait_dead(rec: ProcRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(rec):
            return True
        time.sleep(POLL_INTERVAL)
    return not is_running(rec)


def stop(rec: ProcRecord, *, timeout: float = 15.0, kill_group: bool = True) -> bool:
    """Stop the process: its clean-stop signal, then SIGKILL to its process group.

    Returns True if the process is gone (or was never running).
    """
    if not is_running(rec):
        return True
    try:
        os.kill(rec.pid, rec.stop_signal)
    except ProcessLookupError:
        return True
    if _wait_dead(rec, timeout):
        _kill_group_leftovers(rec, kill_group)
        return True
    try:
        if kill_group:
            os.killpg(rec.pid, signal.SIGKILL)
        else:
            os.kill(rec.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return _wait_dead(rec, 5.0)


def _kill_group_leftovers(rec: ProcRecord, kill_group: bool) -> None:
    """After the leader exits, nothing of its group (or its workdir) may stay behind."""
    if kill_group:
        try:
            os.killpg(rec.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if rec.workdir:
        deadline = time.monotonic() + 5.0
        while pids_in(rec.workdir) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        for pid in pids_in(rec.workdir):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def pids_in(workdir: str | Path) -> list[int]:
    """Live (non-zombie) processes whose working directory is workdir."""
    target = os.path.realpath(workdir)
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.readlink(d / "cwd") != target:
                continue
        except OSError:
            continue
        if _state(int(d.name)) not in (None, "Z", "X"):
            out.append(int(d.name))
    return out


def tail(path: str | Path, n: int = 25) -> str:
    """The last n lines of a log, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_ready(rec: ProcRecord, probe: Callable[[], str | None], *, what: str,
               timeout: float, interval: float = 0.1) -> None:
    """Poll probe() until it returns None (ready); it returns why not otherwise.

    Fails fast, with the log's tail, if the process exits meanwhile; the
    StartupError on timeout says what the last probe saw.  probe may raise
    to give up at once.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not is_running(rec):
            raise StartupError(f"{what} exited during start-up; log {rec.log}:\n{tail(rec.log)}")
        why = probe()
        if why is None:
            return
        last = why
        time.sleep(interval)
    raise StartupError(f"{what} was not ready within {timeout:.0f} s ({last}); "
                       f"log {rec.log}:\n{tail(rec.log)}")


def members(rec: ProcRecord) -> list[int]:
    """The live processes that make up a part: its leader (if it is still the
    recorded process), its process group, and whoever works in its workdir."""
    out = []
    if is_running(rec):
        out.append(rec.pid)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == rec.pid:
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == rec.pid and start_ticks(rec.pid) in (None, rec.start_ticks):
            out.append(int(d.name))
    if rec.workdir:
        out += [p for p in pids_in(rec.workdir) if p not in out]
    return out


def signal_all(rec: ProcRecord, sig: int) -> list[int]:
    """Send sig to every member of the part; returns the PIDs signalled."""
    done = []
    for pid in members(rec):
        try:
            os.kill(pid, sig)
            done.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return done
