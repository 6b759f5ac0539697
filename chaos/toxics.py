"""The Toxiproxy API's objects: toxics and proxy addresses validated from API
JSON (errors as Toxiproxy renders them), and what toxics do to a link
(`ToxicChain`: one link's toxics acting on its chunks and its EOF).

The semantics follow Toxiproxy 2.x (Shopify/toxiproxy, toxics/*.go):

| type       | attributes (integers)                  | behaviour on one direction of a link |
|------------|----------------------------------------|--------------------------------------|
| latency    | latency, jitter (ms)                   | each chunk leaves latency ± jitter ms after it arrived; order kept |
| bandwidth  | rate (KB/s, 1 KB = 1000 B)             | paces bytes; chunks over rate*100 B go out in 100 ms pieces |
| slow_close | delay (ms)                             | the EOF (half-close) that ends the link waits delay ms |
| timeout    | timeout (ms)                           | drops all data; closes after `timeout` ms with no data (0: never); removing it closes the connection |
| reset_peer | timeout (ms)                           | on the first chunk: drop it, wait `timeout` ms, close with a TCP RST |
| slicer     | average_size, size_variation (B), delay (µs) | splits chunks in pieces, waiting `delay` after each |
| limit_data | bytes                                  | passes exactly `bytes` bytes, then closes the connection |
| noop       | —                                      | passes data |

Deviations, all on the side of safety: negative attributes and a
bandwidth rate of 0 are rejected with 400 (Toxiproxy stalls or panics);
slicer validation is Toxiproxy's newest (average_size > 0, 0 <=
size_variation <= average_size).  How an EOF passes the toxics, and where
that differs from Toxiproxy: docs/proxy.md, "Half-close".
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

__all__ = ["ToxicError", "Toxic", "TOXIC_TYPES", "STREAMS", "parse_toxic", "update_toxic",
           "parse_address", "parse_upstream", "UNIX_PREFIX", "ToxicRuntime", "ToxicChain",
           "roll_chain"]

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


# -- a proxy's listen and upstream addresses ------------------------------------------

def parse_address(addr: str, field_name: str) -> tuple[str, int]:
    if not isinstance(addr, str):
        raise bad_body(f"{field_name} must be a string")
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise bad_body(f"{field_name} {addr!r} is not host:port")
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError:
        raise bad_body(f"{field_name} {addr!r} has no numeric port") from None
    if not 0 <= p <= 65535:
        raise bad_body(f"{field_name} port {p} is out of range")
    return host, p


UNIX_PREFIX = "unix:"
# sun_path is 108 bytes on Linux, one of them the terminating NUL.
UNIX_PATH_MAX = 107


def parse_upstream(addr: str, field_name: str = "upstream") -> tuple:
    """An upstream: ("tcp", host, port) for `host:port`, ("unix", path) for `unix:/path`.

    `unix:/abs/path` is an msdb extension (docs/proxy.md): Shopify's
    Toxiproxy only dials TCP.  Like a TCP upstream, the socket is dialled
    per client connection, and a missing one closes that client as a refused
    TCP dial would.
    """
    if isinstance(addr, str) and addr.startswith(UNIX_PREFIX):
        path = addr[len(UNIX_PREFIX):]
        if not path.startswith("/"):
            raise bad_body(f"{field_name} {addr!r} is not unix:/absolute/path")
        if "\0" in path:
            raise bad_body(f"{field_name} {addr!r} contains a NUL byte")
        if len(path.encode()) > UNIX_PATH_MAX:
            raise bad_body(f"{field_name} {addr!r} is longer than "
                           f"{UNIX_PATH_MAX} bytes (the Unix socket path limit)")
        return ("unix", path)
    host, port = parse_address(addr, field_name)
    return ("tcp", host, port)


# -- toxics on a link --------------------------------------------------------------------

class ToxicRuntime:
    """One toxic on one link: whether its roll made it active, and its state."""
    __slots__ = ("toxic", "active", "sent", "reset_started")

    def __init__(self, toxic: Toxic, active: bool):
        self.toxic = toxic
        self.active = active
        self.sent = 0               # limit_data
        self.reset_started = False  # reset_peer


def roll_chain(toxics: Iterable[Toxic], direction: str, rng: random.Random,
               keep: dict[str, ToxicRuntime] | None = None,
               reroll: set[str] = frozenset()) -> list[ToxicRuntime]:
    """One link's runtimes for the toxics of `direction`, in order: those in
    `keep` stay as rolled (with their new settings), the others and those in
    `reroll` are rolled now; a re-rolled toxic keeps its limit_data count and
    reset_peer countdown."""
    out = []
    for t in toxics:
        if t.direction != direction:
            continue
        old = (keep or {}).get(t.name)
        if old is not None and t.name not in reroll:
            old.toxic = t
            out.append(old)
        else:
            rt = ToxicRuntime(t, t.roll(rng))
            if old is not None:
                rt.sent, rt.reset_started = old.sent, old.reset_started
            out.append(rt)
    return out


class ToxicChain:
    """One link's toxics, in insertion order, and what they do to it.

    The link (chaos/proxy.py) hands over one chunk at a time with the time it
    arrived; `close` and `reset` end the link's connection (limit_data,
    timeout, reset_peer).  Replacing the runtimes interrupts whatever the
    chain waits for, so a removed latency does not hold data back.
    """

    def __init__(self, close: Callable[[], None], reset: Callable[[], None]):
        self.runtimes: list[ToxicRuntime] = []
        self.close = close
        self.reset = reset
        self.interrupt = asyncio.Event()
        self.timer: asyncio.Task | None = None      # the timeout toxic's idle timer
        self.loop = asyncio.get_running_loop()

    def set(self, runtimes: list[ToxicRuntime]) -> None:
        self.runtimes = runtimes
        self.interrupt.set()            # whatever the pump waits for now, stop waiting
        self._restart_timer()

    def active(self, type_: str) -> ToxicRuntime | None:
        for rt in self.runtimes:
            if rt.active and rt.toxic.type == type_:
                return rt
        return None

    def data_arrived(self) -> None:
        if self.active("timeout") is not None:
            self._restart_timer()               # data restarts the idle timer

    def _restart_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        rt = self.active("timeout")
        if rt is not None and rt.toxic.attributes["timeout"] > 0:
            self.timer = self.loop.create_task(self._after(rt.toxic.attributes["timeout"] / 1000.0,
                                                           self.close))

    async def _after(self, seconds: float, then: Callable[[], None]) -> None:
        await asyncio.sleep(seconds)
        then()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    async def wait(self, seconds: float) -> bool:
        """Sleep unless the chain changes meanwhile; True if it slept in full."""
        if seconds <= 0:
            return True
        try:
            await asyncio.wait_for(self.interrupt.wait(), seconds)
            return False
        except asyncio.TimeoutError:
            return True

    async def through(self, data: bytes, t: float, write: Callable[[bytes], Awaitable[None]]) -> None:
        """One chunk, arrived at loop time t, through every active toxic, then to write."""
        self.interrupt.clear()
        await self._through([rt for rt in self.runtimes if rt.active], 0, data, t, write)

    async def _through(self, chain: list[ToxicRuntime], i: int, data: bytes, t: float,
                       write: Callable[[bytes], Awaitable[None]]) -> None:
        if i == len(chain):
            await write(data)
            return
        async for piece, t2 in self._apply(chain[i], data, t):
            await self._through(chain, i + 1, piece, t2, write)

    async def hold_eof(self) -> None:
        """slow_close: the EOF leaves delay ms after it arrived.  An update of the
        toxic changes the delay, its removal lets the EOF go at once."""
        start = self.loop.time()
        while (rt := self.active("slow_close")) is not None:
            self.interrupt.clear()
            if await self.wait(start + rt.toxic.attributes["delay"] / 1000.0 - self.loop.time()):
                return

    async def _apply(self, rt: ToxicRuntime, data: bytes, t: float) -> AsyncIterator[tuple[bytes, float]]:
        a = rt.toxic.attributes
        kind = rt.toxic.type
        if self.interrupt.is_set():          # the chain changed: pass through at once
            yield data, t
            return
        if kind == "latency":
            delay = a["latency"]
            if a["jitter"] > 0:
                delay += random.randint(-a["jitter"], a["jitter"] - 1)
            await self.wait(t + delay / 1000.0 - self.loop.time())
            yield data, self.loop.time()
        elif kind == "bandwidth":
            rate = a["rate"] * 1000          # bytes per second
            step = max(1, a["rate"] * 100)   # bytes per 100 ms
            for off in range(0, len(data), step):
                piece = data[off:off + step]
                await self.wait(len(piece) / rate)
                yield piece, self.loop.time()
        elif kind == "slicer":
            for piece in _slices(data, a["average_size"], a["size_variation"]):
                yield piece, t
                await self.wait(a["delay"] / 1_000_000.0)
        elif kind == "limit_data":
            allow = a["bytes"] - rt.sent
            if allow > 0:
                piece = data[:allow]
                rt.sent += len(piece)
                yield piece, t
            if rt.sent >= a["bytes"]:
                self.close()
        elif kind == "timeout":
            return                            # dropped; the timer closes the connection
        elif kind == "reset_peer":
            if not rt.reset_started:          # the first chunk starts the countdown
                rt.reset_started = True
                self.loop.create_task(self._after(a["timeout"] / 1000.0, self.reset))
            return
        else:                                 # slow_close (it acts on the EOF), noop
            yield data, t


def _slices(data: bytes, avg: int, var: int) -> list[bytes]:
    if len(data) - avg <= var:
        return [data]
    mid = len(data) // 2
    if var > 0:
        mid += random.randint(-var, var - 1)
    if mid <= 0 or mid >= len(data):
        return [data]
    return _slices(data[:mid], avg, var) + _slices(data[mid:], avg, var)
