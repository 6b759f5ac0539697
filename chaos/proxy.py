"""The TCP proxy behind the Toxiproxy-compatible API: proxies (listener,
toxics, live connections) and, per connection, its two sockets and two links
(client -> server, server -> client) with their life cycle: data, EOF and
half-close, loss, close.  How it works, how it differs from Toxiproxy, and
what was measured and tried: docs/proxy.md.

It stays one module past 500 lines because sockets, links and connection
share that life cycle and are only checkable read together; toxic
behaviour, address parsing and the eBPF glue live in toxics.py and fastpath.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections import deque

from . import sockmap as _sockmap
from .fastpath import Forwarding, Parking
from .toxics import (Toxic, ToxicChain, ToxicError, ToxicRuntime, parse_address, parse_upstream,
                     roll_chain)

__all__ = ["Proxy", "ProxyCollection"]

log = logging.getLogger("msdb.proxy")

HIGH_WATER = 1 << 20      # queued bytes on a toxic link before we stop reading its source


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
        # Byte counts for the eBPF fast path (chaos/fastpath.py): read from this
        # socket since it went into the sockmap, and handed to its transport.
        self.read_after = 0
        self.written = 0
        self.sock = None            # the socket, with a sockmap key and baseline
        self.rdhup = False          # its peer shut down: never park it again
        self.key = b""
        self.base = 0
        self.hangup_fd = -1         # watched for a reset once its read side ended

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
            self.conn.watch_hangup(self)
        return True   # half-open: the other direction may still write to this socket

    def hung_up(self) -> None:
        self.conn.side_lost(self)

    def start_link(self, link: "Link") -> None:
        self.link_out = link
        early, self.early = self.early, None
        for data in early or ():
            link.feed(data)
        if self.early_eof:
            link.feed_eof()
            self.conn.watch_hangup(self)
        link._update_fast()

    def connection_lost(self, exc) -> None:
        self.conn.side_lost(self)

    def pause_writing(self) -> None:
        self.writable.clear()
        if self.peer and self.peer.transport:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable.set()
        peer = self.peer
        if peer is None or peer.transport is None or self.conn.closing:
            return
        link = peer.link_out
        if link is None or not link.eof:    # a transport resumed after its EOF reads it again
            peer.transport.resume_reading()
        if self.conn.fwd is not None and link is not None:
            link._update_fast()         # may re-arm the kernel path


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
        self.toxics = ToxicChain(conn.close, conn.reset)
        self.slow = False               # a toxic is active on this link
        self.queue: deque[tuple[bytes, float]] = deque()
        self.queued_bytes = 0
        self.pump: asyncio.Task | None = None
        self.eof = False                # src sent its FIN (or is gone): end once the queue is out
        self.done = False               # ended: dst was half-closed, or is gone
        self.loop = asyncio.get_running_loop()
        self.armed = False              # eBPF fast path: kernel forwards src -> dst
        self.armed_consumed = -1
        self.parked = False             # ... and src is not polled for data (see Parking)
        self.limit = 0                  # ... up to this many redirected bytes (sockmap.py)

    def set_chain(self, chain: list[ToxicRuntime]) -> None:
        self.slow = any(rt.active for rt in chain)
        self._update_fast()
        self.toxics.set(chain)
        if self.queue and self.pump is None:
            self._start_pump()

    def _update_fast(self) -> None:
        fast = not (self.slow or self.queue or self.pump is not None or self.eof or self.done
                    or self.conn.closing)
        fwd = self.conn.fwd
        if fwd is None:
            self.src.fast = self.dst.transport if fast else None
        else:   # the kernel forwards, once everything user space holds is out
            fwd.arm(self, fast and self.dst.transport.get_write_buffer_size() == 0)

    def feed(self, data: bytes) -> None:
        if self.done:
            return                      # dst is gone (Connection.side_lost)
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
        self.toxics.data_arrived()
        if self.pump is None:
            self._start_pump()

    def feed_eof(self) -> None:
        # Idempotent: a transport resumed after its EOF reports the EOF again.
        if self.eof or self.done:
            return
        self.eof = True
        if self.pump is None:
            self._start_pump()

    def abandon(self) -> None:
        """dst is gone: drop what is queued for it and whatever comes later."""
        self.done = True
        self.queue.clear()
        self.queued_bytes = 0
        self.stop()
        self._update_fast()

    def _start_pump(self) -> None:
        self.src.fast = None
        self.pump = self.loop.create_task(self._run_pump())

    async def _run_pump(self) -> None:
        try:
            while self.queue:
                data, t = self.queue.popleft()
                self.queued_bytes -= len(data)
                if (self.queued_bytes <= HIGH_WATER // 2 and self.src.transport
                        and not self.conn.closing and not self.eof):
                    self.src.transport.resume_reading()
                await self.toxics.through(data, t, self._write)
                if self.conn.closing:
                    return
            if self.eof:
                await self.toxics.hold_eof()
                await self._end()
        except asyncio.CancelledError:
            pass
        finally:
            self.pump = None
            self._update_fast()

    async def _end(self) -> None:
        """The EOF is out of the chain: half-close dst (docs/proxy.md, "Half-close")."""
        fwd = self.conn.fwd
        if fwd is not None:     # bytes the kernel redirected go out before the FIN
            await fwd.wait_drained([self])
        if self.conn.closing:
            return
        self.done = True
        try:
            self.dst.transport.write_eof()      # after whatever its buffer still holds
        except (RuntimeError, OSError):
            pass                # dst is already gone; its connection_lost ends the rest
        self.conn.link_ended()

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

    def stop(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        self.toxics.stop()


class Connection:
    def __init__(self, proxy: "Proxy"):
        self.proxy = proxy
        self.client: _Side | None = None
        self.upstream: _Side | None = None
        self.links: dict[str, Link] = {}
        self.closing = False
        self.connect_task: asyncio.Task | None = None
        self.fwd: Forwarding | None = None

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
            self.fwd = Forwarding.attach(self, self.proxy.sockmap)
        for direction, link in self.links.items():
            link.set_chain(roll_chain(self.proxy.toxics.values(), direction, self.proxy.rng))
        c.start_link(self.links["upstream"])
        u.start_link(self.links["downstream"])
        c.transport.resume_reading()
        u.transport.resume_reading()
        if self.fwd is not None:   # early data is out: the kernel may forward now
            self.fwd.ready = True
            for link in self.links.values():
                link._update_fast()

    def watch_hangup(self, side: _Side) -> None:
        parking = self.proxy.parking
        sock = side.transport.get_extra_info("socket") if side.transport is not None else None
        if parking is not None and sock is not None and not self.closing and side.hangup_fd < 0:
            side.hangup_fd = sock.fileno()
            parking.watch_hangup(side.hangup_fd, side)

    def link_ended(self) -> None:
        if all(link.done for link in self.links.values()):
            self.close()

    def side_lost(self, side: _Side) -> None:
        """A socket is gone (reset, error): nothing more can reach it, and what it
        sent before still goes out, through its link's toxics, then its EOF."""
        if self.closing:
            return
        into = side.peer.link_out if side.peer is not None else None
        out = side.link_out
        if into is None or out is None:
            self.close()
            return
        into.abandon()
        if out.done:
            self.close()
        else:
            out.feed_eof()

    def close(self, *, rst: bool = False, abort: bool = False) -> None:
        """Close both sockets: after flushing (default), at once (abort), or with RST."""
        if self.closing:
            if (rst or abort) and self.fwd is not None and self.fwd.cancel_close():
                self._close_sockets(rst, abort)     # it was waiting for the kernel: now
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
            if not rst and not abort and fwd.close_when_drained(lambda: self._close_sockets(False, False)):
                return
        self._close_sockets(rst, abort)

    def _close_sockets(self, rst: bool, abort: bool) -> None:
        if self.fwd is not None:
            self.fwd.forget()
        for side in (self.client, self.upstream):
            if side is None or side.transport is None:
                continue
            if side.hangup_fd >= 0:
                self.proxy.parking.unwatch_hangup(side.hangup_fd, side)
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
        self.parking: Parking | None = None

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

    def _rechain(self, direction: str, reroll: set[str] = frozenset(),
                 removed: Toxic | None = None) -> None:
        for conn in list(self.connections):
            link = conn.links.get(direction)
            if link is None:
                continue
            keep = {rt.toxic.name: rt for rt in link.toxics.runtimes}
            if removed is not None and removed.type == "timeout":
                gone = keep.get(removed.name)
                if gone is not None and gone.active:
                    conn.close()    # Toxiproxy: removing a timeout toxic closes its connections
                    continue
            link.set_chain(roll_chain(self.toxics.values(), direction, self.rng, keep, reroll))

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
        self.parking = Parking()

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
