"""Toxic definitions: validation from API JSON, and per-link behaviour.

The semantics follow Toxiproxy 2.x (Shopify/toxiproxy, toxics/*.go):

| type       | attributes (integers)                  | behaviour on one direction of a link |
|------------|----------------------------------------|--------------------------------------|
| latency    | latency, jitter (ms)                   | each chunk leaves latency ± jitter ms after it arrived; order kept |
| bandwidth  | rate (KB/s, 1 KB = 1000 B)             | paces bytes; chunks over rate*100 B go out in 100 ms pieces |
| slow_close | delay (ms)                             | the close that follows EOF waits delay ms |
| timeout    | timeout (ms)                           | drops all data; closes after `timeout` ms with no data (0: never); removing it closes the connection |
| reset_peer | timeout (ms)                           | on the first chunk: drop it, wait `timeout` ms, close with a TCP RST |
| slicer     | average_size, size_variation (B), delay (µs) | splits chunks in pieces, waiting `delay` after each |
| limit_data | bytes                                  | passes exactly `bytes` bytes, then closes the connection |
| noop       | —                                      | passes data |

Deviations, all on the side of safety: negative attributes and a
bandwidth rate of 0 are rejected with 400 (Toxiproxy stalls or panics);
slicer validation is Toxiproxy's newest (average_size > 0, 0 <=
size_variation <= average_size).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ToxicError", "Toxic", "TOXIC_TYPES", "STREAMS", "parse_toxic", "update_toxic"]

STREAMS = ("upstream", "downstream")
TOXIC_TYPES: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
    "noop": (),
}


class ToxicError(Exception):
    """An API error: message and HTTP status, rendered as Toxiproxy renders them."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message = message
        self.status = status


def bad_body(detail: str) -> ToxicError:
    return ToxicError(f"bad request body: {detail}", 400)


@dataclass
class Toxic:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        # Toxiproxy's field order: attributes, name, type, stream, toxicity.
        return {"attributes": dict(self.attributes), "name": self.name, "type": self.type,
                "stream": self.stream, "toxicity": self.toxicity}

    def roll(self, rng: random.Random) -> bool:
        """Whether this toxic applies to one link: rolled once per (re)start."""
        return rng.random() < self.toxicity

    @property
    def direction(self) -> str:
        return self.stream.lower()


def _attributes(type_: str, raw: Any, base: dict[str, int] | None) -> dict[str, int]:
    keys = TOXIC_TYPES[type_]
    out = dict(base) if base is not None else {k: 0 for k in keys}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        raise bad_body(f"attributes must be an object, got {type(raw).__name__}")
    for k, v in raw.items():
        if k not in keys:
            continue   # Toxiproxy ignores unknown attributes
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad_body(f"attribute {k} of a {type_} toxic must be an integer, got {v!r}")
        if v < 0:
            raise bad_body(f"attribute {k} of a {type_} toxic must be >= 0, got {v}")
        out[k] = v
    _validate(type_, out)
    return out


def _validate(type_: str, a: dict[str, int]) -> None:
    if type_ == "slicer":
        if a["average_size"] <= 0:
            raise bad_body("average_size must be greater than 0")
        if not 0 <= a["size_variation"] <= a["average_size"]:
            raise bad_body("size_variation must be at least 0 and at most average_size")
    if type_ == "bandwidth" and a["rate"] <= 0:
        raise bad_body("rate must be greater than 0 (KB/s)")


def _toxicity(v: Any, default: float) -> float:
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad_body(f"toxicity must be a number, got {v!r}")
    return float(v)


def parse_toxic(body: Any) -> Toxic:
    """A new toxic from a POST body (Toxiproxy's AddToxicJson rules)."""
    if not isinstance(body, dict):
        raise bad_body(f"expected a JSON object, got {type(body).__name__}")
    stream = body.get("stream", "downstream")
    if not isinstance(stream, str) or stream.lower() not in STREAMS:
        raise ToxicError("stream was invalid, can be either upstream or downstream", 400)
    type_ = body.get("type")
    if not isinstance(type_, str) or type_ not in TOXIC_TYPES:
        raise ToxicError("invalid toxic type", 400)
    name = body.get("name") or f"{type_}_{stream}"
    if not isinstance(name, str):
        raise bad_body(f"name must be a string, got {name!r}")
    return Toxic(name=name, type=type_, stream=stream,
                 toxicity=_toxicity(body.get("toxicity"), 1.0),
                 attributes=_attributes(type_, body.get("attributes"), None))


def update_toxic(toxic: Toxic, body: Any) -> Toxic:
    """A copy of toxic with attributes merged and toxicity replaced (UpdateToxicJson);
    name, type and stream cannot change.  The live toxic is untouched on error."""
    if not isinstance(body, dict):
        raise bad_body(f"expected a JSON object, got {type(body).__name__}")
    return Toxic(name=toxic.name, type=toxic.type, stream=toxic.stream,
                 toxicity=_toxicity(body.get("toxicity"), toxic.toxicity),
                 attributes=_attributes(toxic.type, body.get("attributes"), toxic.attributes))
