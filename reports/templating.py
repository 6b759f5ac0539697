"""The Jinja2 environment of every report page, and its number format."""

from __future__ import annotations

import json
import math

from jinja2 import Environment, PackageLoader, select_autoescape

__all__ = ["env", "fmt", "pct"]


def fmt(v, digits: int = 3) -> str:
    """A figure for a table: `–` for none; floats to `digits` significant
    digits, never in exponent form, and whole numbers from 10**digits on."""
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "–"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) < 1e-6:
            return f"{v:.{digits}g}"
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
        text = f"{v:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(v, (dict, list)):
        text = json.dumps(v)
        return text if len(text) <= 160 else text[:157] + "…"
    return str(v)


def pct(v) -> str:
    """A rate (a fraction) as a percentage."""
    return "–" if v is None else f"{fmt(float(v) * 100)} %"


env = Environment(loader=PackageLoader("reports", "templates"), autoescape=select_autoescape(["html", "j2"]))
env.filters["fmt"] = fmt
env.filters["pct"] = pct
