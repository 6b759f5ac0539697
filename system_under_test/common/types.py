"""Input types shared by the services' request models.

Every string is bounded and may not contain NUL (PostgreSQL rejects it, and
it would otherwise surface as a 500).  Models forbid unknown fields, so a
typo in a field name is named in the 422 rather than silently ignored.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["Model", "text", "Money", "Quantity", "JsonObject"]


def _no_nul(v: str) -> str:
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


def text(max_length: int, min_length: int = 0):
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length),
                     AfterValidator(_no_nul)]


Money = Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=2, allow_inf_nan=False)]
Quantity = Annotated[int, Field(ge=1, le=1000, strict=False)]
MAX_JSON_BYTES = 16 * 1024
MAX_JSON_DEPTH = 8


def _depth(v: Any, d: int = 0) -> int:
    if d > MAX_JSON_DEPTH:
        return d
    if isinstance(v, dict):
        return max([_depth(x, d + 1) for x in v.values()] or [d + 1])
    if isinstance(v, list):
        return max([_depth(x, d + 1) for x in v] or [d + 1])
    return d


def _bounded_json(v: dict) -> dict:
    if _depth(v) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    raw = orjson.dumps(v)
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
    if b"\\u0000" in raw:
        raise ValueError("must not contain NUL characters")
    return v


JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded_json)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)
