"""UTC times as msdb writes them everywhere: `2026-12-01T19:23:46.123Z`.

The one formatter and parser of the run directory's times (run.json,
faults.jsonl, history.jsonl, stack.json), used by the harness, the chaos
journal and the reports alike, so a time written by one is read by another
to the millisecond.  A leaf module: it imports nothing of msdb.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

__all__ = ["utc", "utc_now", "epoch", "stamp"]


def utc(ts: float) -> str:
    """Unix seconds -> `YYYY-MM-DDTHH:MM:SS.mmmZ`."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    return utc(time.time())


def epoch(text: str | None) -> float | None:
    """`...Z` (or any ISO 8601 time with a zone; UTC if none) -> Unix seconds; None stays None."""
    if not text:
        return None
    dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def stamp(ts: float | None = None, *, micro: bool = False) -> str:
    """A compact UTC stamp for file and directory names: `20261201T192346Z`
    (`micro`: `20261201T192346123456Z`, for names made more than once a second)."""
    fmt = "%Y%m%dT%H%M%S%fZ" if micro else "%Y%m%dT%H%M%SZ"
    return datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc).strftime(fmt)
