"""In-kernel forwarding for the proxy's no-toxic path: an eBPF sockhash.

Why hand-written: no bcc/libbpf binding can be relied on from PyPI here, and
the program is about 50 instructions, so it is assembled below from the
kernel's uapi encoding (linux/bpf.h) and loaded with the raw bpf(2) syscall.

How it works.  Every socket of a proxied TCP connection (client leg and
upstream leg) goes into one BPF_MAP_TYPE_SOCKHASH under its own key
(remote ip4, local ip4, remote port, local port, as `__sk_buff` shows them),
and a BPF_PROG_TYPE_SK_SKB program attached as BPF_SK_SKB_VERDICT runs on
every skb that arrives on those sockets, in the receiving softirq.  It looks
the socket up in two small hash maps:

- `ctl` (written only by user space): the peer socket's key, `armed`,
  `consumed` = bytes user space has read from this socket (since it went
  into the map) and already handed to the peer socket's kernel buffer, and
  `limit` = the most `redir` may reach;
- `cnt` (written only by the program): `passed` = bytes it let through to
  this socket's own receive queue (SK_PASS, read by the proxy as usual),
  `redir` = bytes it redirected to the peer (bpf_sk_redirect_hash, egress:
  the kernel sends them on the peer socket from a kworker; the proxy process
  is not woken).

It redirects only if `armed` and `passed == consumed`, i.e. when every byte
that went to user space before has already been written to the peer: so
redirected bytes can never overtake bytes still in the proxy.  Otherwise it
passes the skb up.  Verdicts on one socket run one at a time in byte order.
An empty skb (a FIN without data) is always passed up: user space reads the
EOF and half-closes the peer itself, after the redirected bytes are out.

`limit` is the back-pressure.  A redirect to a peer whose send buffer is
full queues the skb in the kernel (the psock's list, drained by a kworker)
while the source socket goes on ACKing, so a sender could fill kernel
memory without bound (measured: 700 MB in 5 s into a server that does not
read).  User space sets `limit` to WINDOW bytes beyond what the peer has
taken; past it the program passes skbs up and the proxy's user-space path
(queue, HIGH_WATER, pause_reading: TCP flow control) takes over until the
peer has drained.  A parked socket is not polled for data, so a timer
(every 10 ms while any socket is parked) notices bytes passed up, and moves
`limit` on while the peer keeps taking bytes: one map lookup per parked
socket per tick instead of a wake-up per message.

The other way round (a toxic added, the connection closing), user space
disarms the socket and, before it writes anything to the peer itself or
closes it, waits until the peer socket has taken every redirected byte:
bytes_acked + SIOCOUTQ of the peer (all bytes ever written into it) equals
what the proxy wrote + `redir`.  Closing a socket with redirected bytes
still queued would drop them (the psock's queue is purged).

Unavailable (not root, seccomp, old kernel, MSDB_PROXY_SOCKMAP=0): `get()`
returns None once and logs why; the proxy then stays in user space.  The
proxy's side of all this (arming, parking, draining) is chaos/fastpath.py.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import platform
import socket
import struct

log = logging.getLogger("msdb.proxy")

__all__ = ["Sockmap", "get", "reason", "socket_key"]

_SYS_BPF = 321              # x86_64
_MAP_CREATE, _MAP_LOOKUP, _MAP_UPDATE, _MAP_DELETE, _PROG_LOAD, _PROG_ATTACH = 0, 1, 2, 3, 5, 8
_MAP_HASH, _MAP_SOCKHASH = 1, 18
_PROG_SK_SKB = 14
_SK_SKB_VERDICT = 38        # BPF_SK_SKB_VERDICT: per skb, no stream parser
_FN_MAP_LOOKUP, _FN_SK_REDIRECT_HASH = 1, 72
_SK_PASS = 1
_MAX = 65536                # sockets (two per connection)
KEY = 16                    # remote_ip4, local_ip4, remote_port, local_port (u32 each)
CTL = 40                    # peer key[16], armed u32, pad u32, consumed u64, limit u64
CNT = 16                    # passed u64, redir u64
WINDOW = 4 << 20            # redirected bytes the peer has not taken yet, at most
_SIOCOUTQ = 0x5411
_TCPI_BYTES_ACKED = 120     # offset of tcpi_bytes_acked in struct tcp_info

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: bytearray) -> int:
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    r = _libc.syscall(_SYS_BPF, cmd, buf, len(attr))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _ptr(b) -> int:
    return ctypes.addressof(b)


# -- a tiny assembler (struct bpf_insn: u8 code, u8 dst:4|src:4, s16 off, s32 imm) --------

def _i(code, dst=0, src=0, off=0, imm=0):
    return [code, dst | (src << 4), off, imm]


def _program(cnt_fd: int, ctl_fd: int, socks_fd: int) -> bytes:
    LDXW, LDXDW, STXW, STXDW = 0x61, 0x79, 0x63, 0x7B
    MOVX, MOVK, ADDK, ADDX = 0xBF, 0xB7, 0x07, 0x0F
    JEQK, JNEK, JNEX, JGTX, CALL, EXIT, LDDW = 0x15, 0x55, 0x5D, 0x2D, 0x85, 0x95, 0x18
    R0, R1, R2, R3, R4, R6, R7, R8, R9, FP = 0, 1, 2, 3, 4, 6, 7, 8, 9, 10

    def ld_map(reg, fd):    # 16-byte ld_imm64 with src = BPF_PSEUDO_MAP_FD
        return [_i(LDDW, reg, 1, 0, fd), _i(0)]

    prog: list = [
        _i(MOVX, R6, R1),                             # r6 = ctx (struct __sk_buff *)
        # key on the stack at fp-16: the same four u32 fields socket_key() packs
        _i(LDXW, R2, R6, 92), _i(STXW, FP, R2, -16),  # remote_ip4
        _i(LDXW, R2, R6, 96), _i(STXW, FP, R2, -12),  # local_ip4
        _i(LDXW, R2, R6, 132), _i(STXW, FP, R2, -8),  # remote_port
        _i(LDXW, R2, R6, 136), _i(STXW, FP, R2, -4),  # local_port
        _i(LDXW, R9, R6, 0),                          # r9 = skb->len
        # A bare FIN comes as an empty skb: redirected, the peer's psock would
        # fail to send 0 bytes and set EPIPE on the peer socket (skmsg.c
        # sk_psock_backlog), killing the other direction of a half-closed
        # connection.  Passed up, it is the EOF user space reads.
        ("jeq0", R9, "pass"),
        *ld_map(R1, cnt_fd), _i(MOVX, R2, FP), _i(ADDK, R2, 0, 0, -16),
        _i(CALL, imm=_FN_MAP_LOOKUP),
        ("jeq0", R0, "pass"),                         # not ours: pass
        _i(MOVX, R8, R0),                             # r8 = &cnt
        *ld_map(R1, ctl_fd), _i(MOVX, R2, FP), _i(ADDK, R2, 0, 0, -16),
        _i(CALL, imm=_FN_MAP_LOOKUP),
        ("jeq0", R0, "count_pass"),
        _i(MOVX, R7, R0),                             # r7 = &ctl
        _i(LDXW, R1, R7, 16),                         # armed?
        ("jeq0", R1, "count_pass"),
        _i(LDXDW, R1, R8, 0), _i(LDXDW, R2, R7, 24),  # passed == consumed?
        ("jnex", R1, R2, "count_pass"),
        _i(LDXDW, R1, R8, 8), _i(ADDX, R1, R9), _i(LDXDW, R2, R7, 32),   # redir + len > limit?
        ("jgtx", R1, R2, "count_pass"),
        _i(MOVX, R1, R6), *ld_map(R2, socks_fd), _i(MOVX, R3, R7), _i(MOVK, R4, 0, 0, 0),
        _i(CALL, imm=_FN_SK_REDIRECT_HASH),           # egress redirect to ctl.peer_key
        ("jnek1", R0, "count_pass"),                  # peer gone: pass up instead
        _i(LDXDW, R1, R8, 8), _i(ADDX, R1, R9), _i(STXDW, R8, R1, 8),   # redir += len
        _i(MOVK, R0, 0, 0, _SK_PASS), _i(EXIT),
        "count_pass",
        _i(LDXDW, R1, R8, 0), _i(ADDX, R1, R9), _i(STXDW, R8, R1, 0),   # passed += len
        "pass",
        _i(MOVK, R0, 0, 0, _SK_PASS), _i(EXIT),
    ]
    labels, n = {}, 0
    for x in prog:
        if isinstance(x, str):
            labels[x] = n
        else:
            n += 1
    out, pc = [], 0
    for x in prog:
        if isinstance(x, str):
            continue
        if isinstance(x, tuple):
            kind, reg, *rest = x
            target = labels[rest[-1]] - (pc + 1)
            if kind == "jeq0":
                x = _i(JEQK, reg, 0, target, 0)
            elif kind == "jnek1":
                x = _i(JNEK, reg, 0, target, _SK_PASS)
            elif kind == "jgtx":
                x = _i(JGTX, reg, rest[0], target, 0)
            else:
                x = _i(JNEX, reg, rest[0], target, 0)
        out.append(struct.pack("<BBhi", *x))
        pc += 1
    return b"".join(out)


def socket_key(sock: socket.socket) -> bytes:
    """A socket's key as the verdict program builds it from `__sk_buff`."""
    lip, lport = sock.getsockname()[:2]
    rip, rport = sock.getpeername()[:2]
    # __sk_buff: remote_port is the network-order port in the upper 16 bits of
    # the u32 (filter.c shifts it left by 16 on little-endian; checked on 6.18),
    # local_port is the port in host order.  A mismatch fails safe: the program
    # finds no entry and passes everything to user space.
    return (socket.inet_aton(rip) + socket.inet_aton(lip)
            + b"\0\0" + struct.pack(">H", rport) + struct.pack("<I", lport))


class Sockmap:
    def __init__(self) -> None:
        self.fds: list[int] = []
        try:
            self.socks = self._map(_MAP_SOCKHASH, KEY, 4)
            self.ctl = self._map(_MAP_HASH, KEY, CTL)
            self.cnt = self._map(_MAP_HASH, KEY, CNT)
            insns = _program(self.cnt, self.ctl, self.socks)
            code = ctypes.create_string_buffer(insns, len(insns))
            lic = ctypes.create_string_buffer(b"GPL")
            logbuf = ctypes.create_string_buffer(65536)
            def load(log_level: int) -> int:
                attr = bytearray(144)
                struct.pack_into("<IIQQIIQ", attr, 0, _PROG_SK_SKB, len(insns) // 8, _ptr(code),
                                 _ptr(lic), log_level, len(logbuf) if log_level else 0,
                                 _ptr(logbuf) if log_level else 0)
                attr[48:48 + 12] = b"msdb_sockfwd"
                return _bpf(_PROG_LOAD, attr)
            try:
                self.prog = load(0)
            except OSError as e:
                try:        # again with the verifier's log, for the message
                    os.close(load(1))
                except OSError:
                    pass
                raise OSError(e.errno, f"BPF_PROG_LOAD: {e.strerror}: "
                                       f"{logbuf.value.decode(errors='replace')[-400:]}") from None
            self.fds.append(self.prog)
            attr = bytearray(144)
            struct.pack_into("<III", attr, 0, self.socks, self.prog, _SK_SKB_VERDICT)
            _bpf(_PROG_ATTACH, attr)
        except BaseException:
            self.close()
            raise

    def _map(self, kind: int, key: int, value: int) -> int:
        attr = bytearray(144)
        struct.pack_into("<IIIII", attr, 0, kind, key, value, _MAX, 0)
        fd = _bpf(_MAP_CREATE, attr)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def _elem(self, cmd: int, fd: int, key: bytes, value: bytes | bytearray | None = None) -> None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(bytes(value), len(value)) if value is not None else None
        attr = bytearray(144)
        struct.pack_into("<IIQQQ", attr, 0, fd, 0, _ptr(k), _ptr(v) if v is not None else 0, 0)
        _bpf(cmd, attr)
        if isinstance(value, bytearray):
            value[:] = v.raw

    # -- per socket ------------------------------------------------------------------------

    def add(self, key: bytes, fd: int, peer_key: bytes) -> None:
        """Put a socket in the map, unarmed (its data keeps going to user space)."""
        self._elem(_MAP_UPDATE, self.cnt, key, bytes(CNT))
        self._elem(_MAP_UPDATE, self.ctl, key, peer_key + bytes(CTL - KEY))
        self._elem(_MAP_UPDATE, self.socks, key, struct.pack("<I", fd))

    def set_armed(self, key: bytes, peer_key: bytes, armed: bool, consumed: int, limit: int = 0) -> None:
        self._elem(_MAP_UPDATE, self.ctl, key, peer_key + struct.pack("<IIQQ", int(armed), 0, consumed, limit))

    def counters(self, key: bytes) -> tuple[int, int]:
        """(passed, redir) of one socket."""
        v = bytearray(CNT)
        self._elem(_MAP_LOOKUP, self.cnt, key, v)
        return struct.unpack("<QQ", v)

    def forget(self, key: bytes) -> None:
        """Drop a closed socket's entries (the sockhash drops the socket itself on close)."""
        for fd in (self.socks, self.ctl, self.cnt):
            try:
                self._elem(_MAP_DELETE, fd, key)
            except OSError:
                pass


def written_into(sock: socket.socket) -> int:
    """All bytes ever written into a TCP socket: bytes_acked + unacked/unsent (SIOCOUTQ)."""
    # Two syscalls: retry until no ACK moved bytes_acked in between.  The sum
    # includes the SYN for some sockets: callers subtract a baseline taken
    # when the socket went into the map.
    def acked() -> int:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return struct.unpack_from("<Q", info, _TCPI_BYTES_ACKED)[0]
    while True:
        a = acked()
        outq = struct.unpack("<i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
        if acked() == a:
            return a + outq


_instance: Sockmap | None = None
_reason: str | None = None
_refs = 0


def reason() -> str | None:
    return _reason


def get() -> Sockmap | None:
    """The process-wide sockmap (refcounted; release() when done), or None."""
    global _instance, _reason, _refs
    if _instance is None:
        if _reason is not None:
            return None
        if os.environ.get("MSDB_PROXY_SOCKMAP", "1") == "0":
            _reason = "MSDB_PROXY_SOCKMAP=0"
        elif platform.machine() != "x86_64":
            _reason = f"the bpf(2) syscall number is wired for x86_64 only, not {platform.machine()}"
        else:
            try:
                _instance = Sockmap()
            except (OSError, AttributeError) as e:
                _reason = str(e)
        if _instance is None:
            log.warning("proxy: eBPF sockmap fast path off (%s); forwarding in user space", _reason)
            return None
        log.info("proxy: eBPF sockmap fast path on")
    _refs += 1
    return _instance


def release() -> None:
    global _instance, _refs, _reason
    _refs -= 1
    if _refs <= 0 and _instance is not None:
        _instance.close()
        _instance = None
        _reason = None
        _refs = 0
