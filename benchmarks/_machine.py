"""Machine-wide counters the benchmarks print beside their own figures.

Kernel threads do work for the processes a benchmark measures that /proc
does not charge to them: the kworker that sends bytes the proxy's eBPF fast
path redirected (chaos/sockmap.py), and ksoftirqd when loopback's receive
work is deferred.  They are machine-wide, so a figure from them is read
beside a baseline taken in the same round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

__all__ = ["pid_ticks", "kernel_thread_ticks", "context_switches", "loopback_packets", "proc_stats",
           "process_ticks", "ticks_by_part", "EXITED"]

# Where a round's CPU of the processes that exited during it goes.
EXITED = "exited in the round (reaped by their parent)"


def _fields(stat: str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    return stat[stat.rfind(")") + 2:].split()


def pid_ticks(pid: int) -> int:
    """utime + stime, in clock ticks, of one process so far."""
    f = _fields(Path(f"/proc/{pid}/stat").read_text())
    return int(f[11]) + int(f[12])


def kernel_thread_ticks() -> int:
    """utime + stime, in clock ticks, of every kworker and ksoftirqd thread so far."""
    return sum(int(f[11]) + int(f[12]) for _, name, f in proc_stats()
               if name.startswith(("kworker", "ksoftirqd")))


def context_switches() -> int:
    """Context switches on the machine since boot (/proc/stat ctxt)."""
    return next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("ctxt "))


def loopback_packets() -> int:
    """Packets sent on lo since boot."""
    return int(Path("/sys/class/net/lo/statistics/tx_packets").read_text())


def proc_stats():
    """(/proc/PID, command name, stat fields after the name) of every process now."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        yield d, stat[stat.index("(") + 1:stat.rfind(")")], _fields(stat)


def process_ticks(part_of: Callable[[Path, list[str]], str | None]) -> dict[tuple[int, int], tuple[str, int, int]]:
    """{(pid, start time): (part, own ticks, ticks of its reaped children)} of
    every process `part_of(/proc/PID, stat fields after the name)` names (None:
    not one of ours).  The start time tells a reused PID from the old one."""
    out = {}
    for d, _, f in proc_stats():
        part = part_of(d, f)
        if part is not None:
            out[(int(d.name), int(f[19]))] = (part, int(f[11]) + int(f[12]), int(f[13]) + int(f[14]))
    return out


def ticks_by_part(before: dict, after: dict) -> dict[str, int]:
    """CPU ticks per part between two `process_ticks` snapshots, with what the
    processes that exited in between spent under EXITED.

    Summing the live processes of each snapshot and subtracting reads low, even
    below zero: a PostgreSQL backend whose pool connection was closed mid-round
    takes all its CPU out of the second sum.  Here each process counts from its
    own first reading (0 if it started in between), and one that exited is
    found in its parent's reaped-children ticks (the kernel adds a child's
    whole life there when the parent reaps it), minus what it had before."""
    out: dict[str, int] = {}
    for key, (part, own, reaped) in after.items():
        # the first reading's part: a zombie not yet reaped has lost its command line
        part, own0, reaped0 = before.get(key, (part, 0, 0))
        out[part] = out.get(part, 0) + own - own0
        if reaped != reaped0:
            out[EXITED] = out.get(EXITED, 0) + reaped - reaped0
    for key, (part, own, reaped) in before.items():
        if key not in after:
            out[EXITED] = out.get(EXITED, 0) - own - reaped
    return out
