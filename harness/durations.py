"""Durations on the command line: 500ms, 30s, 15min, 2h, or plain seconds."""

from __future__ import annotations

import re

from .errors import UsageError

__all__ = ["parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h)?\s*$")


def parse_duration(text: str, option: str) -> float:
    """Seconds; a UsageError names the option and the bad value."""
    m = _RE.match(str(text))
    if not m:
        raise UsageError(f"{option} {text!r} is not a duration (examples: 500ms, 30s, 15min, 2h)")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise UsageError(f"{option} {text!r} must be greater than zero")
    return value
