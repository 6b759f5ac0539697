"""The Jinja2 environment of every report page, and its number format."""

from __future__ import annotations

import json
import math

from jinja2 import Environment, PackageLoader, select_autoescape

__all__ = ["env", "fmt"]


def fmt(v, digits: int = 4) -> str:
    """A figure for a table: `–` for none, 4 significant digits for floats."""
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:120]
    return str(v)


env = Environment(loader=PackageLoader("reports", "templates"), autoescape=select_autoescape(["html", "j2"]))
env.filters["fmt"] = fmt
