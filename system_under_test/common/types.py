"""Input types shared by the services' request models.

Every string is bounded and must be storable: no NUL (PostgreSQL rejects
it) and no lone surrogate (it has no UTF-8 encoding).  Models forbid unknown
fields, so a typo in a field name is named in the 422 rather than silently
ignored.

Free-form JSON (`JsonObject`) obeys one rule: a service accepts only JSON
that it can store in PostgreSQL jsonb and render back with orjson, so that a
write it acknowledges can always be read again.  `check_json` walks the value
once, where it enters, and refuses with the path of the first bad member:

- integers within signed 64 bits (orjson renders nothing wider);
- floats finite (jsonb has no NaN or Infinity; `1e400` parses as infinity),
  and below 2**53 in magnitude: jsonb keeps a number as a decimal and prints
  `1e20` back as `100000000000000000000`, which reads back as an integer
  that may not fit in 64 bits, and beyond 2**53 a float is no longer exact;
- strings and keys encodable as UTF-8 (no lone surrogate) and without NUL;
- at most MAX_JSON_DEPTH levels, MAX_JSON_MEMBERS members and MAX_JSON_BYTES
  bytes once encoded.

The check raises ValueError (pydantic makes it a 422 naming the field), never
TypeError: pydantic passes a TypeError from a validator on as a 500.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

__all__ = ["Model", "text", "Money", "Quantity", "JsonObject", "check_json", "storable_text",
           "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_JSON_MEMBERS", "INT64_MIN", "INT64_MAX",
           "FLOAT_EXACT"]

INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1
FLOAT_EXACT = 2.0 ** 53
MAX_JSON_BYTES = 16 * 1024
MAX_JSON_DEPTH = 8
MAX_JSON_MEMBERS = 2000


def storable_text(v: str) -> str:
    """A string PostgreSQL can store and orjson can render, or ValueError."""
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (a lone surrogate has no UTF-8 encoding)") from None
    return v


def text(max_length: int, min_length: int = 0):
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length),
                     AfterValidator(storable_text)]


# What the handlers accept, said in the schema too (pydantic's own schema for a
# Decimal is any number or any string): 0 to 99999999.99, two decimals at most.
MONEY_SCHEMA = {
    "anyOf": [{"type": "number", "minimum": 0, "maximum": 99999999.99, "multipleOf": 0.01},
              {"type": "string", "pattern": r"^[0-9]{1,8}(\.[0-9]{1,2})?$"}],
    "description": "an amount of money, 0 to 99999999.99 with at most two decimals; "
                   "answered as a string (exact)",
}
Money = Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=2, allow_inf_nan=False),
                  WithJsonSchema(MONEY_SCHEMA, mode="validation")]
Quantity = Annotated[int, Field(ge=1, le=1000, strict=False)]


def _where(path: str, what: str) -> str:
    return f"{path}: {what}" if path else what


def check_json(value: Any) -> Any:
    """Refuse (ValueError naming the member) any JSON that jsonb cannot store
    or orjson cannot render back; see the module doc for the rule."""
    members = 0
    # Iterative walk: no recursion limit to hit, and depth is checked as we go.
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        v, path, depth = stack.pop()
        members += 1
        if members > MAX_JSON_MEMBERS:
            raise ValueError(f"more than {MAX_JSON_MEMBERS} members")
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int):
            if not INT64_MIN <= v <= INT64_MAX:
                raise ValueError(_where(path, "integer outside the signed 64-bit range"))
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(_where(path, "number must be finite (no NaN or Infinity)"))
            if abs(v) >= FLOAT_EXACT:
                raise ValueError(_where(path, "number too large: a float must be below 2**53 "
                                              "in magnitude (send an integer instead)"))
        elif isinstance(v, str):
            try:
                storable_text(v)
            except ValueError as e:
                raise ValueError(_where(path, str(e))) from None
        elif isinstance(v, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(v, dict):
                for k, x in v.items():
                    if not isinstance(k, str):
                        raise ValueError(_where(path, "keys must be strings"))
                    try:
                        storable_text(k)
                    except ValueError as e:
                        raise ValueError(_where(path, f"key {k!a}: {e}")) from None
                    stack.append((x, f"{path}.{k}" if path else k, depth + 1))
            else:
                stack.extend((x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v))
        else:
            raise ValueError(_where(path, f"not a JSON value ({type(v).__name__})"))
    try:
        raw = orjson.dumps(value)
    except TypeError as e:   # only if the walk above missed a case; still the client's input
        raise ValueError(f"cannot be stored as JSON: {e}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(check_json)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)
