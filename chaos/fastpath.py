"""The proxy's use of the eBPF sockmap (chaos/sockmap.py): which link the
kernel forwards, when, and how user space takes a link back without losing
or reordering a byte.  See docs/proxy.md, "The eBPF sockmap fast path".

`Forwarding` is one connection's state in the sockmap; `Parking` is the
process-wide epoll set that watches sources the kernel forwards for, so that
only FIN, RST and errors (not data) wake the proxy; it also watches sockets
whose peer has half-closed, for a reset (`Parking.watch_hangup`).  Both work
on chaos/proxy.py's connection, link and side objects; the protocols below
list what they read and write there, so this module needs no import of
proxy.py.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import socket
from typing import Callable, Protocol

from . import sockmap as _sockmap

__all__ = ["Forwarding", "Parking"]

log = logging.getLogger("msdb.proxy")
_libc = ctypes.CDLL(None, use_errno=True)
_EPOLL_CTL_DEL = 2


class _Side(Protocol):
    transport: asyncio.Transport | None
    peer: "_Side | None"
    sock: socket.socket | None
    key: bytes
    base: int           # written_into(sock) when it went into the map
    read_after: int     # bytes user space read from it since then
    written: int        # bytes user space handed to its transport
    rdhup: bool         # its peer shut down: never park it again


class _Link(Protocol):
    conn: "_Connection"
    src: _Side
    dst: _Side
    armed: bool
    armed_consumed: int
    parked: bool
    limit: int


class _HangupWatcher(Protocol):
    def hung_up(self) -> None: ...


class _Proxy(Protocol):
    name: str
    parking: "Parking"


class _Connection(Protocol):
    proxy: _Proxy
    client: _Side | None
    upstream: _Side | None
    links: dict[str, _Link]
    closing: bool
    fwd: "Forwarding | None"


class Forwarding:
    """One connection's use of the eBPF sockmap.

    Each link (direction) is armed, i.e. forwarded in the kernel, exactly
    while the user-space fast path would apply: no active toxic, nothing
    queued, no pump, no EOF from the source, the destination's transport
    buffer empty, connection open.  Before user space writes to a destination itself, shuts it down
    or closes it, it waits until every byte the kernel redirected there has
    been written into the destination socket.
    """

    def __init__(self, conn: _Connection, sm: _sockmap.Sockmap):
        self.conn = conn
        self.sm = sm
        self.ready = False      # early data first, then arming
        self.keys: list[bytes] = []
        self.closer: asyncio.Task | None = None     # a graceful close waiting for the kernel

    @classmethod
    def attach(cls, conn: _Connection, sm: _sockmap.Sockmap) -> "Forwarding | None":
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

    def arm(self, link: _Link, want: bool) -> None:
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

    def _park(self, link: _Link) -> None:
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

    def _unpark(self, link: _Link) -> None:
        link.parked = False
        self.conn.proxy.parking.unwatch(link.src.sock.fileno())
        if not self.conn.closing and link.src.transport is not None:
            link.src.transport.resume_reading()

    def woken(self, link: _Link) -> None:
        """FIN, RST or an error on a parked source: read it as usual."""
        link.src.rdhup = True
        self.arm(link, False)

    def _set_armed(self, link: _Link) -> None:
        # limit: WINDOW bytes beyond what the kernel has already written into
        # dst for us (back-pressure, see sockmap.py)
        src, dst = link.src, link.dst
        taken = (_sockmap.written_into(dst.sock) - dst.base
                 - (dst.written - dst.transport.get_write_buffer_size()))
        link.limit = taken + _sockmap.WINDOW
        self.sm.set_armed(src.key, dst.key, True, src.read_after, link.limit)
        link.armed, link.armed_consumed = True, src.read_after

    def check(self, link: _Link) -> None:
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

    def drained(self, link: _Link) -> bool:
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

    async def wait_drained(self, links: list[_Link], limit: float | None = None) -> None:
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

    def close_when_drained(self, close: Callable[[], None]) -> bool:
        """A graceful close: True if it has to wait (then `close` is called
        later), because redirected bytes still queued in the kernel would be
        dropped with the socket."""
        if self.all_drained():
            return False
        self.closer = asyncio.get_running_loop().create_task(self._close_later(close))
        return True

    async def _close_later(self, close: Callable[[], None]) -> None:
        await self.wait_drained(list(self.conn.links.values()), limit=30.0)
        close()

    def cancel_close(self) -> bool:
        """Stop a close that waits for the kernel; True if one was waiting."""
        closer, self.closer = self.closer, None
        if closer is None or closer.done():
            return False
        closer.cancel()
        return True

    def forget(self) -> None:
        for link in self.conn.links.values():
            if link.parked:
                link.parked = False
                self.conn.proxy.parking.unwatch(link.src.sock.fileno())
        for key in self.keys:
            self.sm.forget(key)
        self.keys = []


class Parking:
    """One epoll set, itself polled by the event loop, for parked sources
    (and for half-closed sockets, see watch_hangup).

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
        self.links: dict[int, _Link] = {}
        self.hangups: dict[int, _HangupWatcher] = {}
        self.loop_ep: int | None = None
        self.searched = False       # for loop_ep
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

    def _epoll(self) -> select.epoll:
        if self.ep is None:
            self.ep = select.epoll()
            asyncio.get_running_loop().add_reader(self.ep.fileno(), self._ready)
        return self.ep

    def watch(self, fd: int, link: _Link, remove_from_loop: bool) -> None:
        self.hangups.pop(fd, None)      # a closed socket's, if the fd number was reused
        self._epoll().register(fd, select.EPOLLRDHUP)   # + EPOLLERR/EPOLLHUP, always
        if not self.searched:
            self.searched = True
            self.loop_ep = self._find_loop_epoll()
        self.links[fd] = link
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.TICK, self._tick)
        if self.loop_ep is not None and remove_from_loop:
            _libc.epoll_ctl(self.loop_ep, _EPOLL_CTL_DEL, fd, None)   # ENOENT is fine

    def unwatch(self, fd: int) -> None:
        if self.links.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    # A socket whose peer has half-closed is no longer read (its transport
    # stopped at the EOF), so a later RST from that peer would go unnoticed
    # until the other direction writes to it.  Watching it for EPOLLERR and
    # EPOLLHUP only (EPOLLRDHUP stays set after a FIN) tells the proxy at once.

    def watch_hangup(self, fd: int, watcher: _HangupWatcher) -> None:
        self.unwatch(fd)
        try:
            self._epoll().register(fd, 0)
        except OSError:
            return
        self.hangups[fd] = watcher

    def unwatch_hangup(self, fd: int, watcher: _HangupWatcher) -> None:
        # By watcher: after a close, the fd number may already be another socket's.
        if self.hangups.get(fd) is watcher:
            del self.hangups[fd]
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
            watcher = self.hangups.get(fd)
            if watcher is not None:
                self.unwatch_hangup(fd, watcher)
                watcher.hung_up()
                continue
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
        self.hangups.clear()
