"""The TCP proxy behind the Toxiproxy-compatible API: proxies, connections, links.

Each accepted client gets an upstream connection and two links:
`upstream` (client -> server) and `downstream` (server -> client).  A link
with no active toxic forwards each chunk straight from the read callback to
the other transport (asyncio Protocols, uvloop when installed: no task, no
copy).  A link with active toxics queues chunks and a pump task runs each one
through the toxics in insertion order.  Adding, updating or removing a toxic
changes every live link at once (toxicity is rolled per link when a toxic
starts on it); a change interrupts the pump's current wait, so a removed
latency does not hold data back.

Upstreams are `host:port` (TCP, as in Toxiproxy) or `unix:/path` (an
msdb extension Shopify's Toxiproxy lacks: a Unix-domain upstream leg).  The
client leg is always TCP, so reset_peer still sends a real TCP RST to the
client.

Why hand-written: Toxiproxy itself is a Go binary not installable from
PyPI, and no maintained Python package implements its server.

The no-toxic path, and what was measured against it (2 cores, Firecracker
VM, pgbench select-only; see README "Fault proxy overhead"):
- Protocol callbacks on uvloop, one `transport.write` per chunk: uvloop
  writes at once (no copy, no task).  A stream/`sock_sendall` proxy needs a
  task switch per chunk and measured ~0.45x direct at 8 clients.
- The proxy's own Python time is small (perf: user ~15% of its CPU); the
  rest is the kernel: scheduler switches and wake-ups of the receiving
  process (~40% of samples) and the loopback TCP stack.  A proxy adds two
  hops, hence two extra wake-ups per request/response, which no user-space
  buffering can avoid; larger buffers do not help small messages either.
- `os.splice` is not used: it needs a pipe in between (two splices per
  chunk, the same syscall count as read+write) and saves only the copy of
  messages that are mostly < 1 KB here; it also cannot go through toxics.
- Tried and dropped: running the proxy SCHED_FIFO (much worse at 1 client),
  nice -10 (no change), a 100 us EEVDF slice via sched_setattr (no gain).
- A `unix:` upstream replaces the upstream leg's TCP stack but none of the
  wake-ups: +7 us instead of +31 us at 1 client in a quiet run, no
  measurable gain at 8 clients (~0.6x direct either way).
- The eBPF sockmap fast path (chaos/sockmap.py, `_Forwarding` and
  `_Parking` below): for TCP upstreams, while a link would take the
  no-toxic path, the kernel forwards its bytes (SK_SKB verdict program,
  bpf_sk_redirect_hash) and the proxy is not woken per message.  A link
  leaves it the moment a toxic is active on it, the proxy is disabled, or
  the connection closes; user space then waits until the kernel has written
  every byte it redirected before writing or closing itself, so nothing is
  lost or reordered.  Off with MSDB_PROXY_SOCKMAP=0, for `unix:` upstreams
  and IPv6, and whenever bpf(2) fails (logged once).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import random
import select
import socket
import struct
from collections import deque
from typing import AsyncIterator

from . import sockmap as _sockmap
from .toxics import Toxic, ToxicError

__all__ = ["Proxy", "ProxyCollection", "parse_address", "parse_upstream", "UNIX_PREFIX"]

log = logging.getLogger("msdb.proxy")
_libc = ctypes.CDLL(None, use_errno=True)

HIGH_WATER = 1 << 20      # queued bytes on a toxic link before we stop reading its source


def parse_address(addr: str, field_name: str) -> tuple[str, int]:
    if not isinstance(addr, str):
        raise ToxicError(f"bad request body: {field_name} must be a string", 400)
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ToxicError(f"bad request body: {field_name} {addr!r} is not host:port", 400)
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError:
        raise ToxicError(f"bad request body: {field_name} {addr!r} has no numeric port", 400) from None
    if not 0 <= p <= 65535:
        raise ToxicError(f"bad request body: {field_name} port {p} is out of range", 400)
    return host, p


UNIX_PREFIX = "unix:"
# sun_path is 108 bytes on Linux, one of them the terminating NUL.
UNIX_PATH_MAX = 107


def parse_upstream(addr: str, field_name: str = "upstream") -> tuple:
    """An upstream: ("tcp", host, port) for `host:port`, ("unix", path) for `unix:/path`.

    `unix:/abs/path` is an msdb extension: Shopify's Toxiproxy only dials
    TCP, so a proxy config using it works with `msdb proxy` alone.  It exists
    to cut the upstream leg's kernel cost (a Unix socket has no TCP stack):
    measured +7 us instead of +31 us added at 1 pgbench client, but no gain
    at 8 clients on 2 cores, where wake-ups, not TCP, dominate.  Like a TCP
    upstream, the socket need not exist yet: it is dialled per client
    connection, and a missing one closes that client as a refused TCP dial
    would.
    """
    if isinstance(addr, str) and addr.startswith(UNIX_PREFIX):
        path = addr[len(UNIX_PREFIX):]
        if not path.startswith("/"):
            raise ToxicError(f"bad request body: {field_name} {addr!r} is not unix:/absolute/path", 400)
        if "\0" in path:
            raise ToxicError(f"bad request body: {field_name} {addr!r} contains a NUL byte", 400)
        if len(path.encode()) > UNIX_PATH_MAX:
            raise ToxicError(f"bad request body: {field_name} {addr!r} is longer than "
                             f"{UNIX_PATH_MAX} bytes (the Unix socket path limit)", 400)
        return ("unix", path)
    host, port = parse_address(addr, field_name)
    return ("tcp", host, port)


class ToxicRuntime:
    """One toxic on one link: whether its roll made it active, and its state."""
    __slots__ = ("toxic", "active", "sent", "reset_started")

    def __init__(self, toxic: Toxic, active: bool):
        self.toxic = toxic
        self.active = active
        self.sent = 0               # limit_data
        self.reset_started = False  # reset_peer


class _Side(asyncio.Protocol):
    """One socket of a proxied connection."""

    def __init__(self, conn: "Connection"):
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.link_out: "Link | None" = None    # the link that reads from this side
        self.peer: "_Side | None" = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.early: list[bytes] | None = []   # data read before the links existed
        self.early_eof = False
        # Byte counts for the eBPF fast path (chaos/sockmap.py): read from this
        # socket since it went into the sockmap, and handed to its transport.
        self.read_after = 0
        self.written = 0
        self.sock = None            # the socket, with a sockmap key and baseline
        self.rdhup = False          # its peer shut down: never park it again
        self.key = b""
        self.base = 0

    # The fast path: with no active toxic and nothing queued, `fast` is the
    # other side's transport and a chunk costs one call and one write.
    fast: asyncio.Transport | None = None

    def data_received(self, data: bytes) -> None:
        fast = self.fast
        if fast is not None:
            fast.write(data)
            return
        link = self.link_out
        if link is None:   # uvloop may deliver a read that raced pause_reading()
            self.early.append(data)
        else:
            self.read_after += len(data)
            link.feed(data)

    def eof_received(self):
        if self.link_out is None:
            self.early_eof = True
        else:
            self.link_out.feed_eof()
        return True   # we close when the link has flushed

    def start_link(self, link: "Link") -> None:
        self.link_out = link
        early, self.early = self.early, None
        for data in early or ():
            link.feed(data)
        if self.early_eof:
            link.feed_eof()
        link._update_fast()

    def connection_lost(self, exc) -> None:
        self.conn.side_lost(self)

    def pause_writing(self) -> None:
        self.writable.clear()
        if self.peer and self.peer.transport:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable.set()
        if self.peer and self.peer.transport and not self.conn.closing:
            self.peer.transport.resume_reading()
            if self.conn.fwd is not None and self.peer.link_out is not None:
                self.peer.link_out._update_fast()     # may re-arm the kernel path


class _ClientSide(_Side):
    def __init__(self, proxy: "Proxy"):
        super().__init__(Connection(proxy))
        self.conn.client = self

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.pause_reading()
        self.conn.proxy.track(self.conn)
        self.conn.connect_task = asyncio.get_running_loop().create_task(self.conn.connect_upstream())


class _UpstreamSide(_Side):
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.pause_reading()   # until both links exist (a server may speak first)


class Link:
    """One direction of one connection."""

    def __init__(self, conn: "Connection", direction: str, src: _Side, dst: _Side):
        self.conn = conn
        self.direction = direction
        self.src = src
        self.dst = dst
        self.chain: list[ToxicRuntime] = []
        self.slow = False
        self.queue: deque[tuple[bytes, float]] = deque()
        self.queued_bytes = 0
        self.pump: asyncio.Task | None = None
        self.eof = False
        self.interrupt = asyncio.Event()
        self.timer: asyncio.Task | None = None      # the timeout toxic's idle timer
        self.loop = asyncio.get_running_loop()
        self.armed = False              # eBPF fast path: kernel forwards src -> dst
        self.armed_consumed = -1
        self.parked = False             # ... and src is not polled for data (see _Parking)
        self.limit = 0                  # ... up to this many redirected bytes (sockmap.py)

    # -- configuration -------------------------------------------------------------

    def set_chain(self, chain: list[ToxicRuntime]) -> None:
        self.chain = chain
        self.slow = any(rt.active for rt in chain)
        self._update_fast()
        self.interrupt.set()            # whatever the pump waits for now, stop waiting
        self._restart_timer()
        if self.queue and self.pump is None:
            self._start_pump()

    def _active(self, type_: str) -> ToxicRuntime | None:
        for rt in self.chain:
            if rt.active and rt.toxic.type == type_:
                return rt
        return None

    def _restart_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        rt = self._active("timeout")
        if rt is not None and rt.toxic.attributes["timeout"] > 0:
            self.timer = self.loop.create_task(self._timeout_close(rt.toxic.attributes["timeout"]))

    async def _timeout_close(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000.0)
        self.conn.close()

    def _update_fast(self) -> None:
        fast = not self.slow and not self.queue and self.pump is None and not self.conn.closing
        fwd = self.conn.fwd
        if fwd is None:
            self.src.fast = self.dst.transport if fast else None
        else:   # the kernel forwards, once everything user space holds is out
            fwd.arm(self, fast and self.dst.transport.get_write_buffer_size() == 0)

    # -- data ---------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not self.slow and not self.queue and self.pump is None:
            fwd = self.conn.fwd
            if fwd is None:
                self.dst.written += len(data)
                self.dst.transport.write(data)
                return
            if fwd.drained(self):   # nothing the kernel redirected is still queued
                self.dst.written += len(data)
                self.dst.transport.write(data)
                self._update_fast()
                return
        self.src.fast = None
        self.queue.append((data, self.loop.time()))
        self.queued_bytes += len(data)
        if self.queued_bytes > HIGH_WATER:
            self.src.transport.pause_reading()
        if self._active("timeout") is not None:
            self._restart_timer()               # data restarts the idle timer
        if self.pump is None:
            self._start_pump()

    def feed_eof(self) -> None:
        self.eof = True
        if self.pump is None:
            self._start_pump()

    def _start_pump(self) -> None:
        self.src.fast = None
        self.pump = self.loop.create_task(self._run_pump())

    async def _run_pump(self) -> None:
        try:
            while self.queue:
                data, t = self.queue.popleft()
                self.queued_bytes -= len(data)
                if self.queued_bytes <= HIGH_WATER // 2 and self.src.transport and not self.conn.closing:
                    self.src.transport.resume_reading()
                self.interrupt.clear()
                chain = [rt for rt in self.chain if rt.active]
                await self._through(chain, 0, data, t)
                if self.conn.closing:
                    return
            if self.eof:
                rt = self._active("slow_close")
                if rt is not None:
                    await self._wait(rt.toxic.attributes["delay"] / 1000.0)
                self.conn.close()
        except asyncio.CancelledError:
            pass
        finally:
            self.pump = None
            self._update_fast()

    async def _wait(self, seconds: float) -> bool:
        """Sleep unless the chain changes meanwhile; True if it slept in full."""
        if seconds <= 0:
            return True
        try:
            await asyncio.wait_for(self.interrupt.wait(), seconds)
            return False
        except asyncio.TimeoutError:
            return True

    async def _through(self, chain: list[ToxicRuntime], i: int, data: bytes, t: float) -> None:
        if i == len(chain):
            await self._write(data)
            return
        async for piece, t2 in self._apply(chain[i], data, t):
            await self._through(chain, i + 1, piece, t2)

    async def _write(self, data: bytes) -> None:
        if self.conn.closing or not data:
            return
        if not self.dst.writable.is_set():
            await self.dst.writable.wait()
        fwd = self.conn.fwd
        if fwd is not None:   # bytes the kernel redirected before go first
            await fwd.wait_drained([self])
            if self.conn.closing:
                return
        self.dst.written += len(data)
        self.dst.transport.write(data)

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
            await self._wait(t + delay / 1000.0 - self.loop.time())
            yield data, self.loop.time()
        elif kind == "bandwidth":
            rate = a["rate"] * 1000          # bytes per second
            step = max(1, a["rate"] * 100)   # bytes per 100 ms
            for off in range(0, len(data), step):
                piece = data[off:off + step]
                await self._wait(len(piece) / rate)
                yield piece, self.loop.time()
        elif kind == "slicer":
            for piece in _slices(data, a["average_size"], a["size_variation"]):
                yield piece, t
                await self._wait(a["delay"] / 1_000_000.0)
        elif kind == "limit_data":
            allow = a["bytes"] - rt.sent
            if allow > 0:
                piece = data[:allow]
                rt.sent += len(piece)
                yield piece, t
            if rt.sent >= a["bytes"]:
                self.conn.close()
        elif kind == "timeout":
            return                            # dropped; the timer closes the connection
        elif kind == "reset_peer":
            if not rt.reset_started:          # the first chunk starts the countdown
                rt.reset_started = True
                self.loop.create_task(self._reset_after(a["timeout"] / 1000.0))
            return
        else:                                 # slow_close, noop
            yield data, t

    async def _reset_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.conn.reset()

    def stop(self) -> None:
        for task in (self.pump, self.timer):
            if task is not None:
                task.cancel()


def _slices(data: bytes, avg: int, var: int) -> list[bytes]:
    if len(data) - avg <= var:
        return [data]
    mid = len(data) // 2
    if var > 0:
        mid += random.randint(-var, var - 1)
    if mid <= 0 or mid >= len(data):
        return [data]
    return _slices(data[:mid], avg, var) + _slices(data[mid:], avg, var)


class Connection:
    def __init__(self, proxy: "Proxy"):
        self.proxy = proxy
        self.client: _Side | None = None
        self.upstream: _Side | None = None
        self.links: dict[str, Link] = {}
        self.closing = False
        self.connect_task: asyncio.Task | None = None
        self.fwd: _Forwarding | None = None
        self.drain_task: asyncio.Task | None = None

    async def connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        addr = self.proxy.upstream_addr
        if addr[0] == "unix":
            dial = loop.create_unix_connection(lambda: _UpstreamSide(self), addr[1])
        else:
            dial = loop.create_connection(lambda: _UpstreamSide(self), addr[1], addr[2])
        try:
            _, up = await asyncio.wait_for(dial, 10)
        except (OSError, asyncio.TimeoutError) as e:
            log.info("proxy %s: upstream %s unreachable: %s", self.proxy.name, self.proxy.upstream, e)
            self.close()
            return
        if self.closing:
            up.transport.close()
            return
        self.upstream = up
        c, u = self.client, up
        c.peer, u.peer = u, c
        self.links["upstream"] = Link(self, "upstream", c, u)
        self.links["downstream"] = Link(self, "downstream", u, c)
        if self.proxy.sockmap is not None:
            self.fwd = _Forwarding.attach(self, self.proxy.sockmap)
        for direction, link in self.links.items():
            link.set_chain(self.proxy.runtimes(direction))
        c.start_link(self.links["upstream"])
        u.start_link(self.links["downstream"])
        c.transport.resume_reading()
        u.transport.resume_reading()
        if self.fwd is not None:   # early data is out: the kernel may forward now
            self.fwd.ready = True
            for link in self.links.values():
                link._update_fast()

    def side_lost(self, side: _Side) -> None:
        if not self.closing:
            # The other side's pending data still goes out: close, not abort.
            link = side.link_out
            if link is not None and (link.queue or link.pump is not None):
                link.feed_eof()
            else:
                self.close()

    def close(self, *, rst: bool = False, abort: bool = False) -> None:
        """Close both sockets: after flushing (default), at once (abort), or with RST."""
        if self.closing:
            drain = self.drain_task
            if (rst or abort) and drain is not None and not drain.done():
                drain.cancel()      # a graceful close was waiting for the kernel: now
                self._close_sockets(rst, abort)
            return
        self.closing = True
        for side in (self.client, self.upstream):
            if side is not None:
                side.fast = None
        for link in self.links.values():
            link.stop()
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        fwd = self.fwd
        if fwd is not None:
            fwd.disarm()
            if not rst and not abort and not fwd.all_drained():
                # A graceful close flushes: redirected bytes still queued in
                # the kernel would be dropped with the socket.
                self.drain_task = asyncio.get_running_loop().create_task(self._close_when_drained())
                return
        self._close_sockets(rst, abort)

    async def _close_when_drained(self) -> None:
        try:
            await self.fwd.wait_drained(list(self.links.values()), limit=30.0)
        except asyncio.CancelledError:
            return
        self._close_sockets(False, False)

    def _close_sockets(self, rst: bool, abort: bool) -> None:
        if self.fwd is not None:
            self.fwd.forget()
        for side in (self.client, self.upstream):
            if side is None or side.transport is None:
                continue
            if rst:
                sock = side.transport.get_extra_info("socket")
                if sock is not None:
                    try:   # SO_LINGER {on, 0}: close() sends RST, not FIN
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                side.transport.abort()
            elif abort:
                side.transport.abort()
            else:
                side.transport.close()
        self.proxy.untrack(self)

    def reset(self) -> None:
        self.close(rst=True)


class Proxy:
    """One named proxy: a listener, its upstream, its toxics, its live connections."""

    def __init__(self, name: str, listen: str, upstream: str, rng: random.Random):
        self.name = name
        self.listen = listen or "127.0.0.1:0"   # loopback only, never all interfaces
        self.upstream = upstream
        self.upstream_addr = parse_upstream(upstream, "upstream")
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}      # insertion order
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[Connection] = set()
        self.rng = rng
        self.sockmap: _sockmap.Sockmap | None = None   # set by the collection for TCP upstreams
        self.parking: _Parking | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream,
                "enabled": self.enabled, "toxics": self.toxics_json()}

    def toxics_json(self) -> list[dict]:
        ups = [t.to_json() for t in self.toxics.values() if t.direction == "upstream"]
        downs = [t.to_json() for t in self.toxics.values() if t.direction == "downstream"]
        return ups + downs

    # -- listener -------------------------------------------------------------------

    async def start(self) -> None:
        if self.enabled:
            return
        host, port = parse_address(self.listen, "listen")
        if host in ("", "0.0.0.0", "::", "localhost"):
            host = "127.0.0.1"
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(lambda: _ClientSide(self), host, port,
                                                   reuse_address=True, backlog=1024)
        except OSError as e:
            raise ToxicError(f"listen tcp {host}:{port}: {e.strerror or e}", 500) from None
        h, p = self.server.sockets[0].getsockname()[:2]
        self.listen = f"{h}:{p}"
        self.enabled = True

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.enabled = False
        for conn in list(self.connections):
            conn.close(abort=True)   # down means down: buffered data is dropped too

    def track(self, conn: Connection) -> None:
        self.connections.add(conn)

    def untrack(self, conn: Connection) -> None:
        self.connections.discard(conn)

    # -- toxics ---------------------------------------------------------------------

    def runtimes(self, direction: str, keep: dict[str, ToxicRuntime] | None = None,
                 reroll: set[str] = frozenset()) -> list[ToxicRuntime]:
        out = []
        for t in self.toxics.values():
            if t.direction != direction:
                continue
            old = (keep or {}).get(t.name)
            if old is not None and t.name not in reroll:
                old.toxic = t
                out.append(old)
            else:
                rt = ToxicRuntime(t, t.roll(self.rng))
                if old is not None:
                    rt.sent, rt.reset_started = old.sent, old.reset_started
                out.append(rt)
        return out

    def _rechain(self, direction: str, reroll: set[str] = frozenset(),
                 removed: Toxic | None = None) -> None:
        for conn in list(self.connections):
            link = conn.links.get(direction)
            if link is None:
                continue
            keep = {rt.toxic.name: rt for rt in link.chain}
            if removed is not None and removed.type == "timeout":
                gone = keep.get(removed.name)
                if gone is not None and gone.active:
                    conn.close()    # Toxiproxy: removing a timeout toxic closes its connections
                    continue
            link.set_chain(self.runtimes(direction, keep, reroll))

    def add_toxic(self, toxic: Toxic) -> Toxic:
        if toxic.name in self.toxics:
            raise ToxicError("toxic already exists", 409)
        self.toxics[toxic.name] = toxic
        self._rechain(toxic.direction, reroll={toxic.name})
        return toxic

    def update_toxic(self, toxic: Toxic) -> Toxic:
        self.toxics[toxic.name] = toxic
        self._rechain(toxic.direction, reroll={toxic.name})
        return toxic

    def remove_toxic(self, name: str) -> None:
        toxic = self.toxics.pop(name, None)
        if toxic is None:
            raise ToxicError("toxic not found", 404)
        self._rechain(toxic.direction, removed=toxic)

    def reset_toxics(self) -> None:
        for name in list(self.toxics):
            self.remove_toxic(name)


class ProxyCollection:
    def __init__(self, seed: int | None = None):
        self.proxies: dict[str, Proxy] = {}
        self.rng = random.Random(seed)
        self.sockmap: _sockmap.Sockmap | None = None
        self._sockmap_tried = False
        self.parking = _Parking()

    def get(self, name: str) -> Proxy:
        try:
            return self.proxies[name]
        except KeyError:
            raise ToxicError("proxy not found", 404) from None

    async def add(self, *, name: str, listen: str, upstream: str, enabled: bool) -> Proxy:
        if name in self.proxies:
            raise ToxicError("proxy already exists", 409)
        proxy = Proxy(name, listen, upstream, self.rng)
        if proxy.upstream_addr[0] == "tcp":
            if not self._sockmap_tried:
                self._sockmap_tried = True
                self.sockmap = _sockmap.get()
            proxy.sockmap = self.sockmap
            proxy.parking = self.parking
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    async def remove(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        del self.proxies[name]

    async def add_or_replace(self, *, name: str, listen: str, upstream: str, enabled: bool) -> Proxy:
        existing = self.proxies.get(name)
        if existing is not None:
            if _same_listen(existing.listen, listen) and existing.upstream == upstream:
                return existing
            await self.remove(name)
        return await self.add(name=name, listen=listen, upstream=upstream, enabled=enabled)

    async def reset(self) -> None:
        for proxy in list(self.proxies.values()):
            await proxy.start()
            proxy.reset_toxics()

    async def close(self) -> None:
        for proxy in list(self.proxies.values()):
            await proxy.stop()
        self.parking.close()
        if self.sockmap is not None:
            self.sockmap = None
            _sockmap.release()


def _same_listen(a: str, b: str) -> bool:
    try:
        ha, pa = parse_address(a or "127.0.0.1:0", "listen")
        hb, pb = parse_address(b or "127.0.0.1:0", "listen")
    except ToxicError:
        return False
    norm = lambda h: "127.0.0.1" if h in ("", "localhost", "0.0.0.0", "::") else h  # noqa: E731
    return norm(ha) == norm(hb) and pa == pb


class _Forwarding:
    """One connection's use of the eBPF sockmap (see chaos/sockmap.py).

    Each link (direction) is armed, i.e. forwarded in the kernel, exactly
    while the user-space fast path would apply: no active toxic, nothing
    queued, no pump, the destination's transport buffer empty, connection
    open.  Before user space writes to a destination itself, or closes it,
    it waits until every byte the kernel redirected there has been written
    into the destination socket.
    """

    def __init__(self, conn: Connection, sm: _sockmap.Sockmap):
        self.conn = conn
        self.sm = sm
        self.ready = False      # early data first, then arming
        self.keys: list[bytes] = []

    @classmethod
    def attach(cls, conn: Connection, sm: _sockmap.Sockmap) -> "_Forwarding | None":
        self = cls(conn, sm)
        sides = (conn.client, conn.upstream)
        try:
            for side in sides:
                sock = side.transport.get_extra_info("socket")
                if sock is None or sock.family != socket.AF_INET:
                    return None
                side.sock = sock
                side.key = _sockmap.socket_key(sock)
                side.base = _sockmap.written_into(sock)    # nothing written yet
            for side in sides:
                sm.add(side.key, side.sock.fileno(), side.peer.key)
                self.keys.append(side.key)
        except OSError as e:
            log.info("proxy %s: connection stays in user space: %s", conn.proxy.name, e)
            self.forget()
            return None
        return self

    def arm(self, link: Link, want: bool) -> None:
        want = want and self.ready
        src = link.src
        try:
            if want:
                if not (link.armed and link.armed_consumed == src.read_after):
                    self._set_armed(link)
                self._park(link)
                return
            if link.parked:
                self._unpark(link)
            if link.armed:
                link.armed = False
                self.sm.set_armed(src.key, link.dst.key, False, 0)
        except OSError as e:   # e.g. the entry is gone: the data stays in user space
            log.debug("proxy %s: sockmap arm: %s", self.conn.proxy.name, e)
            if link.parked:
                self._unpark(link)
            link.armed = False

    # The kernel wakes a socket's pollers after each redirect as well (skmsg.c
    # sk_psock_verdict_data_ready), so an armed source that user space still
    # polls for EPOLLIN would wake the proxy per message for nothing.  Once the
    # program is certain to redirect (passed == consumed after arming: from
    # then on nothing is passed up), the transport stops reading and the
    # socket is watched for EPOLLRDHUP only: FIN, RST and errors wake the
    # proxy (sk_state_change/sk_error_report), data does not.

    def _park(self, link: Link) -> None:
        src = link.src
        if link.parked:
            if src.transport.is_reading():   # resume_writing() resumed it
                src.transport.pause_reading()
            return
        if src.rdhup or self.conn.closing:
            return
        # Bytes that arrived before the socket went into the map sit in its
        # receive queue until the next arrival or a recv(): a recv (peek) makes
        # the kernel run them through the program now (tcp_bpf_recvmsg_parser).
        buf = ctypes.create_string_buffer(1)
        n = _libc.recv(src.sock.fileno(), buf, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        if n >= 0:
            return          # data (or EOF) is waiting for user space: read it first
        if self.sm.counters(src.key)[0] != src.read_after:
            return          # bytes were passed up before arming: read them first
        src.transport.pause_reading()
        # Leave the loop's epoll entry alone while the transport may poll for
        # EPOLLOUT (data of the other direction queued): libuv owns it then.
        idle = src.transport.get_write_buffer_size() == 0
        self.conn.proxy.parking.watch(src.sock.fileno(), link, remove_from_loop=idle)
        link.parked = True

    def _unpark(self, link: Link) -> None:
        link.parked = False
        self.conn.proxy.parking.unwatch(link.src.sock.fileno())
        if not self.conn.closing and link.src.transport is not None:
            link.src.transport.resume_reading()

    def woken(self, link: Link) -> None:
        """FIN, RST or an error on a parked source: read it as usual."""
        link.src.rdhup = True
        self.arm(link, False)

    def _set_armed(self, link: Link) -> None:
        # limit: WINDOW bytes beyond what the kernel has already written into
        # dst for us (back-pressure, see sockmap.py)
        src, dst = link.src, link.dst
        taken = (_sockmap.written_into(dst.sock) - dst.base
                 - (dst.written - dst.transport.get_write_buffer_size()))
        link.limit = taken + _sockmap.WINDOW
        self.sm.set_armed(src.key, dst.key, True, src.read_after, link.limit)
        link.armed, link.armed_consumed = True, src.read_after

    def check(self, link: Link) -> None:
        """A parked link, now and then: did the program pass bytes up (limit
        reached)?  Then read them in user space.  Is the limit getting close
        while the peer keeps taking bytes?  Then move it on."""
        try:
            passed, redir = self.sm.counters(link.src.key)
            if passed != link.armed_consumed:
                self.arm(link, False)      # unpark: the user-space path, then re-armed
            elif redir + _sockmap.WINDOW // 2 > link.limit:
                self._set_armed(link)
        except OSError:
            pass

    def disarm(self) -> None:
        for link in self.conn.links.values():
            self.arm(link, False)

    def drained(self, link: Link) -> bool:
        """Has the kernel written every byte it redirected src -> dst into dst?"""
        dst = link.dst
        try:
            redir = self.sm.counters(link.src.key)[1]
            into = _sockmap.written_into(dst.sock) - dst.base
            mine = dst.written - dst.transport.get_write_buffer_size()
        except (OSError, ValueError, AttributeError):
            return True     # a socket or entry is gone: nothing left to wait for
        return into >= mine + redir

    def all_drained(self) -> bool:
        return all(self.drained(link) for link in self.conn.links.values())

    async def wait_drained(self, links: list[Link], limit: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        end = None if limit is None else loop.time() + limit
        delay = 0.0002
        while not all(self.drained(link) for link in links):
            if end is not None and loop.time() > end:
                log.warning("proxy %s: closing with redirected bytes not yet sent", self.conn.proxy.name)
                return
            if self.conn.closing and limit is None:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.01)

    def forget(self) -> None:
        for link in self.conn.links.values():
            if link.parked:
                link.parked = False
                self.conn.proxy.parking.unwatch(link.src.sock.fileno())
        for key in self.keys:
            self.sm.forget(key)
        self.keys = []


class _Parking:
    """One epoll set, itself polled by the event loop, for parked sources.

    uvloop's pause_reading() (libuv uv__io_stop) leaves the socket in the
    loop's epoll set with EPOLLIN until an event shows up for it, and on a
    redirecting socket none ever does: each redirect still wakes the loop's
    thread inside epoll_wait (a context switch, no return to user space).  So
    a parked socket is also deleted from the loop's epoll set here; libuv
    re-adds it on resume_reading() (EPOLL_CTL_ADD, or MOD on EEXIST).  The
    loop's epoll fd is found once in /proc/self/fd; if that is ambiguous,
    this step is skipped (still correct, just more wake-ups).
    """

    TICK = 0.01     # seconds between checks of parked links (Forwarding.check)

    def __init__(self) -> None:
        self.ep: select.epoll | None = None
        self.links: dict[int, Link] = {}
        self.loop_ep: int | None = None
        self.timer: asyncio.TimerHandle | None = None

    def _find_loop_epoll(self) -> int | None:
        found = []
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]":
                    found.append(int(name))
            except OSError:
                pass
        found = [fd for fd in found if fd != self.ep.fileno()]
        if len(found) != 1:
            log.info("proxy: %d candidate event-loop epoll fds; parked sockets stay in the loop's set",
                     len(found))
            return None
        return found[0]

    def watch(self, fd: int, link: Link, remove_from_loop: bool) -> None:
        if self.ep is None:
            self.ep = select.epoll()
            asyncio.get_running_loop().add_reader(self.ep.fileno(), self._ready)
            self.loop_ep = self._find_loop_epoll()
        self.ep.register(fd, select.EPOLLRDHUP)   # + EPOLLERR/EPOLLHUP, always
        self.links[fd] = link
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.TICK, self._tick)
        if self.loop_ep is not None and remove_from_loop:
            _libc.epoll_ctl(self.loop_ep, 2, fd, None)   # EPOLL_CTL_DEL; ENOENT is fine

    def unwatch(self, fd: int) -> None:
        if self.links.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def _tick(self) -> None:
        self.timer = None
        for link in list(self.links.values()):
            if link.parked and link.conn.fwd is not None:
                link.conn.fwd.check(link)
        if self.links:
            self.timer = asyncio.get_running_loop().call_later(self.TICK, self._tick)

    def _ready(self) -> None:
        for fd, _ in self.ep.poll(0):
            link = self.links.get(fd)
            if link is None:
                self.unwatch(fd)
            elif link.conn.fwd is not None:
                link.conn.fwd.woken(link)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.ep is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.ep.fileno())
            except RuntimeError:
                pass
            self.ep.close()
            self.ep = None
        self.links.clear()
