"""Machine-wide counters the benchmarks print beside their own figures.

Kernel threads do work for the processes a benchmark measures that /proc
does not charge to them: the kworker that sends bytes the proxy's eBPF fast
path redirected (chaos/sockmap.py), and ksoftirqd when loopback's receive
work is deferred.  They are machine-wide, so a figure from them is read
beside a baseline taken in the same round.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["kernel_thread_ticks", "context_switches", "loopback_packets"]


def kernel_thread_ticks() -> int:
    """utime + stime, in clock ticks, of every kworker and ksoftirqd thread so far."""
    ticks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name.startswith(("kworker", "ksoftirqd")):
            f = stat.rsplit(")", 1)[1].split()
            ticks += int(f[11]) + int(f[12])
    return ticks


def context_switches() -> int:
    """Context switches on the machine since boot (/proc/stat ctxt)."""
    return next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("ctxt "))


def loopback_packets() -> int:
    """Packets sent on lo since boot."""
    return int(Path("/sys/class/net/lo/statistics/tx_packets").read_text())
