"""The stack seam: one protocol through which msdb reaches every target.

    StackBackend     bring a stack up, take it down (optionally purging), its
                     `StackInfo`, the health of its parts, the actions on its
                     parts, repointing a link, service settings for one run
    PartActions      kill, pause, resume, stop, start, restart a named part
                     (chaos.nemesis.ProcessActions plus what heal needs)
    fresh_stack()    a stack of its own for a run, suite, matrix, drill or test
                     session: one start-up timeout, one exit-code mapping,
                     stopped and purged on every way out
    heal()           make a stack whole whatever a fault left behind

Backends: the embedded stack (harness.stack.embedded_backend), the seed's
engines in docker-compose (harness.stack.compose), and a user's own
deployment described by a targets file (harness.stack.target).  Nothing
outside a backend reads stack.json as a dict or signals a PID.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol

from chaos.client import ToxiproxyServer
from chaos.nemesis import ProcessActions

from ..errors import UsageError
from .embedded import StackOptions
from .embedded_backend import EmbeddedBackend
from .info import StackInfo
from .status import PartStatus, StatusProbe

__all__ = ["StackBackend", "PartActions", "StackOptions", "fresh_stack", "open_backend", "heal",
           "FRESH_MARKER", "UP_TIMEOUT_S"]

UP_TIMEOUT_S = 300.0
HEAL_CONCURRENCY = 8     # parts heal() resumes and checks at once
FRESH_MARKER = "fresh-stack"


class PartActions(ProcessActions, Protocol):
    def restart(self, part: str) -> None: ...   # stop (if running), then start
    def running(self, part: str) -> bool: ...
    def names(self) -> list[str]: ...           # every part an action may name, in start order


class StackBackend(Protocol):
    kind: str
    state_dir: Path

    def up(self, *, timeout_s: float = UP_TIMEOUT_S) -> StackInfo: ...
    def down(self, *, purge: bool = False) -> list[str]: ...   # what is still running
    def info(self) -> StackInfo: ...
    def status(self, probe: StatusProbe | None = None) -> list[PartStatus]: ...
    def actions(self) -> PartActions: ...
    def repoint(self, link: str, upstream: str) -> None: ...
    def set_overrides(self, overrides: dict[str, dict[str, str]]) -> list[str]: ...


def open_backend(state_dir: str | Path) -> StackBackend:
    """The backend of the stack recorded in state_dir (NoStackError if none)."""
    info = StackInfo.load(state_dir)
    if info.backend == "embedded":
        return EmbeddedBackend(StackOptions.of(info))
    if info.backend == "target":
        from .target import TargetBackend
        return TargetBackend(state_dir)
    if info.backend == "compose":
        from .compose import ComposeBackend
        return ComposeBackend(Path(state_dir), topology=info.topology)
    raise UsageError(f"{state_dir}/stack.json: backend {info.backend!r} is not one this msdb "
                     f"knows (embedded, compose, target)")


def _claim(state_dir: Path) -> None:
    """A fresh stack deletes its state dir when it ends, so it only takes one
    that is empty, new, or its own from an earlier run (the marker)."""
    if state_dir.exists() and (not state_dir.is_dir() or any(state_dir.iterdir())) \
            and not (state_dir / FRESH_MARKER).exists():
        what = ("a stack started by `msdb up`" if (state_dir / "stack.json").exists()
                or (state_dir / "secrets.json").exists() else "files msdb did not make")
        raise UsageError(
            f"--state-dir {str(state_dir)!r} holds {what}; msdb starts a fresh stack of its own "
            f"there and deletes it afterwards, so give it a new or empty directory "
            f"(or remove that stack with `msdb down --state-dir {state_dir} --purge`)")


@contextmanager
def fresh_stack(options: StackOptions, *, keep: bool = False, log=print,
                timeout_s: float = UP_TIMEOUT_S,
                stopping: list[threading.Thread] | None = None) -> Iterator[StackBackend]:
    """A new stack in options.state_dir for the length of the block.

    Before: the state dir must be new, empty, or an earlier fresh stack's
    (stopped and purged first).  After, on every way out (an error, Ctrl-C,
    SIGTERM turned into KeyboardInterrupt): stopped and purged, unless
    `keep` and the block ended normally.  With `stopping`, a block that ended
    normally returns at once and the stack stops in a thread appended there
    (the caller joins it): the next stack can start meanwhile, on other ports."""
    state_dir = Path(options.state_dir)
    _claim(state_dir)
    backend = EmbeddedBackend(options)
    if state_dir.exists():
        backend.down(purge=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / FRESH_MARKER).write_text("a fresh stack of msdb's: stopped and deleted when its "
                                          "run, suite, drill or test session ends\n")
    ok = False
    try:
        backend.up(timeout_s=timeout_s)
        yield backend
        ok = True
    finally:
        if keep and ok:
            log(f"stack kept running in {state_dir}: `msdb down --state-dir {state_dir} --purge` "
                f"stops it and deletes its data")
        else:
            def stop() -> None:
                left = backend.down(purge=True)     # purging deletes the state dir too
                if left:
                    log(f"warning: still running after msdb down: {', '.join(left)}")
            if ok and stopping is not None:
                t = threading.Thread(target=stop, name=f"stop {state_dir}")
                t.start()
                stopping.append(t)
            else:
                stop()


def heal(backend: StackBackend, *, keep_overrides: bool = False) -> list[str]:
    """Make the stack whole, whatever a nemesis or a crash left: every proxy
    enabled and toxic-free, every part resumed and running, and (unless
    keep_overrides) the services' own settings back.  Returns what it fixed."""
    info = backend.info()
    fixed = []
    if info.overrides and not keep_overrides:
        restarted = backend.set_overrides({})
        fixed.append(f"settings restored: {', '.join(restarted)}")
    try:
        api = ToxiproxyServer.at(info.proxy.api, timeout=10)
        now = api.proxies()
        if any(not p.enabled for p in now.values()) or any(api.toxics(n) for n in now):
            fixed.append("proxies reset")
        api.reset()
    except Exception as e:  # the proxy itself may be the broken part: restarted below
        fixed.append(f"proxy API unreachable ({type(e).__name__})")
    actions = backend.actions()
    names = actions.names()

    def resumed_and_running(part: str) -> bool:
        actions.resume(part)          # a paused part goes on; a running one is unaffected
        return actions.running(part)

    # Every part is resumed and asked at once: in a targets file or compose
    # each is a command of its own (`msdb part ...`, `docker compose ...`,
    # 0.3-0.6 s), and one after the other a 20-part stack took 13 s per heal,
    # twice per run.  Dead parts are then started one after the other, in the
    # stack's order (databases before the services that need them).
    # ThreadPoolExecutor and not gevent's pool: heal also runs in processes
    # without gevent, and under `msdb run`'s monkey patching these threads are
    # greenlets and the commands cooperative.
    with ThreadPoolExecutor(max_workers=max(1, min(HEAL_CONCURRENCY, len(names)))) as pool:
        alive = list(pool.map(resumed_and_running, names))   # the first error, in part order
    for part, ok in zip(names, alive):
        if not ok:
            actions.start(part)
            fixed.append(f"{part} restarted")
    return fixed
