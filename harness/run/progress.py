"""Live progress of `msdb run`, `msdb suite` and `msdb drill` in the terminal.

On a terminal: one line, redrawn every second with `\\r`, cut to the
terminal's width (so 80 columns never wrap).  Off a terminal (CI, a pipe):
a plain line every 10 s.  `--quiet`: nothing.

It only reads what the run already has: the samples list, Locust's runner
(its user count), the fault journal (`faults.jsonl`, the active faults).
`render` is a pure function of a `Snapshot`; a `Ticker` calls a snapshot
function and draws it, from a greenlet in `msdb run` (gevent-patched) and
from a thread in the suite and the drills.  While a ticker runs, whatever
else the command prints first clears the progress line, so the two never
share a line; the last such line is the drill's phase.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from chaos.faults import Journal
from reports.measures import percentile

__all__ = ["Snapshot", "render", "clock", "mode_for", "Ticker", "RunProgress", "INTERVAL_S"]

INTERVAL_S = {"tty": 1.0, "plain": 10.0}
CLEAR = "\r\x1b[K"          # to the line's start, erase it


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """What the progress line shows; None or empty fields are left out."""
    label: str
    elapsed_s: float
    total_s: float | None = None
    users: int | None = None
    rps: float | None = None
    p95_ms: float | None = None
    errors: int | None = None
    faults: tuple[str, ...] = ()
    phase: str | None = None


def clock(s: float) -> str:
    """Seconds as m:ss (h:mm:ss from an hour on)."""
    s = max(0, int(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def render(s: Snapshot, *, width: int | None = None) -> str:
    """The progress line.  width: at most width - 1 characters (a line that
    fills the last column makes some terminals wrap); None: no limit."""
    parts = [s.label, clock(s.elapsed_s) + (f"/{clock(s.total_s)}" if s.total_s else "")]
    if s.users is not None:
        parts.append(f"{s.users} users")
    if s.rps is not None:
        parts.append(f"{_num(s.rps)} req/s")
    if s.p95_ms is not None:
        parts.append(f"p95 {_num(s.p95_ms)} ms")
    if s.errors is not None:
        parts.append(f"{s.errors} err")
    tail = ("faults: " + ", ".join(s.faults)) if s.faults else (s.phase or "")
    line = " | ".join(parts + ([tail] if tail else []))
    if width is None or len(line) < width:
        return line
    limit = max(1, width - 1)
    return line[:limit - 1] + "…" if len(line) > limit else line


def mode_for(stream, quiet: bool) -> str:
    """off (--quiet), tty (a terminal: redraw each second) or plain (every 10 s)."""
    if quiet:
        return "off"
    try:
        return "tty" if stream.isatty() else "plain"
    except (AttributeError, ValueError):
        return "plain"


class _Stdout:
    """sys.stdout while a ticker draws: a write clears the progress line first."""

    def __init__(self, ticker: "Ticker", real):
        self._ticker, self._real = ticker, real

    def write(self, text: str) -> int:
        with self._ticker.lock:
            self._ticker.clear_locked()
            if text.strip():
                self._ticker.last_line = text.strip().splitlines()[-1].strip()
            return self._real.write(text)

    def __getattr__(self, name):
        return getattr(self._real, name)


class Ticker:
    """Draws `snapshot()` every second on a terminal, every 10 s elsewhere,
    never with --quiet.  Use as a context manager; `greenlet=True` in the
    gevent-patched run process."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, quiet: bool = False, stream=None,
                 greenlet: bool = False):
        self.snapshot = snapshot
        self.stream = stream if stream is not None else sys.stdout
        self.mode = mode_for(self.stream, quiet)
        self.greenlet = greenlet
        self.lock = threading.RLock()
        self.last_line: str | None = None
        self._drawn = False
        self._stop = threading.Event()
        self._task = None
        self._saved_stdout = None

    # -- drawing --------------------------------------------------------------------

    def clear_locked(self) -> None:
        if self._drawn:
            self.stream.write(CLEAR)
            self._drawn = False

    def draw(self) -> None:
        try:
            snap = self.snapshot()
        except Exception as e:  # progress is a view: it must never break the run
            snap = Snapshot(label="progress", elapsed_s=0, phase=f"unavailable ({type(e).__name__})")
        with self.lock:
            if self.mode == "tty":
                width = shutil.get_terminal_size((80, 24)).columns
                self.stream.write(CLEAR + render(snap, width=width))
                self._drawn = True
            else:
                self.stream.write(render(snap) + "\n")
            self.stream.flush()

    def _loop(self) -> None:
        interval = INTERVAL_S[self.mode]
        while True:
            if self.greenlet:
                import gevent
                gevent.sleep(interval)
            elif self._stop.wait(interval):
                return
            if self._stop.is_set():
                return
            self.draw()

    # -- life -----------------------------------------------------------------------

    def start(self) -> "Ticker":
        if self.mode == "off":
            return self
        if self.stream is sys.stdout:
            self._saved_stdout = sys.stdout
            sys.stdout = _Stdout(self, sys.stdout)
        if self.greenlet:
            import gevent
            self._task = gevent.spawn(self._loop)
        else:
            self._task = threading.Thread(target=self._loop, name="msdb-progress", daemon=True)
            self._task.start()
        return self

    def stop(self) -> None:
        """Stop drawing and leave the terminal as it was (no progress line)."""
        self._stop.set()
        if self._task is not None:
            if self.greenlet:
                self._task.kill()
            else:
                self._task.join(timeout=2)
            self._task = None
        with self.lock:
            self.clear_locked()
            self.stream.flush()
        if self._saved_stdout is not None:
            sys.stdout = self._saved_stdout
            self._saved_stdout = None

    def __enter__(self) -> "Ticker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RunProgress:
    """Snapshots of one `msdb run` from what it records anyway: the samples
    (rate over the last 5 s of arrivals, p95 over requests started in the
    last 10 s, errors so far), Locust's user count and the fault journal."""

    WINDOW_S = 10.0
    RATE_TICKS = 5

    def __init__(self, label: str, samples: Sequence, *, total_s: float | None,
                 faults_path: Path | None = None, users: Callable[[], int | None] = lambda: None,
                 clock: Callable[[], float] = time.time):
        self.label, self.samples, self.total_s = label, samples, total_s
        self.faults_path, self.users, self.clock = faults_path, users, clock
        self.t0 = clock()
        self._seen = 0
        self._errors = 0
        self._recent: deque = deque()                              # (start time, response_ms)
        self._arrivals: deque = deque([(self.t0, 0)], maxlen=self.RATE_TICKS + 1)   # (now, count)

    def active_faults(self) -> tuple[str, ...]:
        if self.faults_path is None:
            return ()
        try:
            records = Journal.read(self.faults_path)
        except (OSError, ValueError):   # a line being written: the next tick reads it whole
            return ()
        return tuple(f"{r['kind']} {r['target']}" for r in records if r.get("status") == "active")

    def __call__(self) -> Snapshot:
        now = self.clock()
        n = len(self.samples)
        for r in self.samples[self._seen:n]:
            if not r.ok:
                self._errors += 1
            self._recent.append((r.time, r.response_ms))
        self._seen = n
        while self._recent and self._recent[0][0] < now - self.WINDOW_S:
            self._recent.popleft()
        self._arrivals.append((now, n))
        (t_a, n_a), (t_b, n_b) = self._arrivals[0], self._arrivals[-1]
        rps = (n_b - n_a) / (t_b - t_a) if t_b > t_a else None
        return Snapshot(label=self.label, elapsed_s=now - self.t0, total_s=self.total_s,
                        users=self.users(), rps=rps,
                        p95_ms=percentile((ms for _, ms in self._recent), 95),
                        errors=self._errors, faults=self.active_faults())
