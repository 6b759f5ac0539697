"""The eBPF sockmap fast path (chaos/sockmap.py) of `msdb proxy`, and its fallback.

Each test runs its own `msdb proxy` process (API and listeners on
127.0.0.1:23200-23300) and its own echo server.  Whether a connection is
forwarded in the kernel is seen from the proxy process's context switches:
on the fast path a round trip does not wake it.  No test asserts speed.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from chaos import sockmap
from fix_proxy import EchoServer, connect, exchange, median_rtt, roundtrip, start_proxy, stop_proxy

pytestmark = [pytest.mark.proxy]

ECHO_PORT, API_PORT, LISTEN_PORT = 23210, 23211, 23212


def _bpf_available() -> str | None:
    try:
        sockmap.Sockmap().close()
        return None
    except OSError as e:
        return str(e)


def _start(tmp_path, env_extra):
    proc, server = start_proxy(API_PORT, tmp_path / "proxy.log", seed=7, env=env_extra)
    server.create("echo", upstream=f"127.0.0.1:{ECHO_PORT}", listen=f"127.0.0.1:{LISTEN_PORT}")
    return proc, server, tmp_path / "proxy.log"


@pytest.fixture
def echo():
    e = EchoServer(ECHO_PORT)
    yield e
    e.close()


@pytest.fixture
def fast(tmp_path, echo):
    why = _bpf_available()
    if why is not None:
        pytest.skip(f"eBPF sockmap unavailable here: {why}")
    proc, server, log = _start(tmp_path, {"MSDB_PROXY_SOCKMAP": "1"})
    try:
        yield proc, server, log
    finally:
        stop_proxy(proc)


@pytest.fixture
def userspace(tmp_path, echo):
    proc, server, log = _start(tmp_path, {"MSDB_PROXY_SOCKMAP": "0"})
    try:
        yield proc, server, log
    finally:
        stop_proxy(proc)


def connect_fast() -> socket.socket:
    return connect(("127.0.0.1", LISTEN_PORT), timeout=10)


def switches(pid: int) -> int:
    """Context switches of every thread of the proxy process."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def wakeups_per_100_roundtrips(pid, s) -> int:
    roundtrip(s)
    time.sleep(0.05)
    before = switches(pid)
    t0 = time.monotonic()
    for _ in range(100):
        roundtrip(s)
    elapsed = time.monotonic() - t0
    # The proxy's 10 ms check of parked sockets wakes it too: discount it.
    return switches(pid) - before - int(1.5 * elapsed / 0.01)


def transfer(s, size=2 << 20) -> None:
    """Send `size` random bytes through the echo and check they come back intact."""
    data = os.urandom(size)
    assert exchange(s, data) == data


def test_fast_path_forwards_in_the_kernel_both_ways(fast):
    proc, server, log = fast
    with connect_fast() as s:
        roundtrip(s)
        # In the kernel: 100 round trips do not wake the proxy 100 times.
        assert wakeups_per_100_roundtrips(proc.pid, s) < 30
        transfer(s)                       # 2 MiB up, the same 2 MiB back down
        for n in (1, 100, 1500, 70000):
            roundtrip(s, n)


def test_many_connections_and_eof_both_ways(fast, echo):
    conns = [connect_fast() for _ in range(20)]
    try:
        for s in conns:
            roundtrip(s, 200)
        # Client EOF: the proxy half-closes the upstream leg, the echo answers
        # and closes, and that EOF comes back (tests/test_proxy_halfclose.py).
        s = conns.pop()
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        got = b""
        while True:
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
        assert got == b"last words"
        s.close()
        # Server-side close: the client sees EOF.
        s = connect_fast()
        roundtrip(s)              # its upstream is now the echo's newest connection
        echo.conns[-1].shutdown(socket.SHUT_RDWR)
        s.settimeout(5)
        assert s.recv(100) == b""
        s.close()
        for s in conns:
            roundtrip(s, 200)
    finally:
        for s in conns:
            s.close()


@pytest.mark.slow
def test_latency_toxic_on_a_live_fast_connection_then_back(fast):
    proc, server, _ = fast
    with connect_fast() as s:
        base = median_rtt(s, 15)
        assert wakeups_per_100_roundtrips(proc.pid, s) < 30
        server.add_toxic("echo", "latency", stream="downstream", attributes={"latency": 100})
        rtt = median_rtt(s, 7)
        assert 90 <= rtt - base <= 110, (base, rtt)
        transfer(s, 256 << 10)
        server.remove_toxic("echo", "latency_downstream")
        after = median_rtt(s, 15)
        assert after < base + 10, (base, after)
        # Back in the kernel.
        assert wakeups_per_100_roundtrips(proc.pid, s) < 30
        transfer(s)


@pytest.mark.slow
def test_upstream_latency_added_while_bytes_are_in_flight(fast):
    """A toxic lands while a 2 MiB transfer is under way: every byte still arrives, in order."""
    proc, server, _ = fast
    with connect_fast() as s:
        roundtrip(s)
        data = os.urandom(2 << 20)
        got = bytearray()

        def send():
            for off in range(0, len(data), 64 << 10):
                s.sendall(data[off:off + (64 << 10)])
        t = threading.Thread(target=send)
        t.start()
        while len(got) < 256 << 10:
            got += s.recv(1 << 20)
        server.add_toxic("echo", "latency", stream="upstream", attributes={"latency": 20})
        while len(got) < 1 << 20:
            got += s.recv(1 << 20)
        server.remove_toxic("echo", "latency_upstream")
        while len(got) < len(data):
            chunk = s.recv(1 << 20)
            assert chunk
            got += chunk
        t.join(10)
        assert bytes(got) == data


def test_reset_peer_on_a_live_fast_connection(fast):
    _, server, _ = fast
    with connect_fast() as s:
        roundtrip(s)
        server.add_toxic("echo", "reset_peer", stream="upstream", attributes={"timeout": 50})
        s.sendall(b"hello")
        with pytest.raises(ConnectionResetError) as e:
            while s.recv(100):
                pass
        assert e.value.errno == errno.ECONNRESET


def test_disabled_proxy_closes_fast_connections(fast):
    _, server, _ = fast
    with connect_fast() as s:
        roundtrip(s)
        server.set_enabled("echo", False)
        s.settimeout(5)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    server.set_enabled("echo", True)
    with connect_fast() as s:
        roundtrip(s)


def test_fallback_with_sockmap_off(userspace):
    proc, server, log = userspace
    with connect_fast() as s:
        roundtrip(s)
        # In user space: every round trip wakes the proxy.
        assert wakeups_per_100_roundtrips(proc.pid, s) >= 80
        transfer(s)
        server.add_toxic("echo", "latency", stream="downstream", attributes={"latency": 50})
        assert roundtrip(s) >= 45
    assert "fast path off (MSDB_PROXY_SOCKMAP=0)" in log.read_text()


SINK_PORT, SINK_LISTEN = 23213, 23214


def test_back_pressure_reaches_a_fast_sender(fast):
    """A server that does not read stops the client as TCP would: the kernel
    path must not queue without bound, and every byte arrives once it reads."""
    _, server, _ = fast
    sink = socket.socket()
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sink.bind(("127.0.0.1", SINK_PORT))
    sink.listen(4)
    server.create("sink", upstream=f"127.0.0.1:{SINK_PORT}", listen=f"127.0.0.1:{SINK_LISTEN}")
    c = socket.create_connection(("127.0.0.1", SINK_LISTEN), timeout=10)
    a = None
    try:
        a, _ = sink.accept()
        c.sendall(b"x")
        assert a.recv(10) == b"x"
        time.sleep(0.1)          # armed and parked by now
        pattern = bytes(range(256)) * 256           # 64 KiB
        c.setblocking(False)
        sent = 0
        end = time.monotonic() + 2
        while time.monotonic() < end:
            try:
                sent += c.send(pattern[sent % len(pattern):])
            except BlockingIOError:
                time.sleep(0.02)
        # Socket buffers and the 4 MiB window of each direction, not hundreds of MB.
        assert sent < 64 << 20, sent
        a.settimeout(10)
        got = bytearray()
        while len(got) < sent:
            chunk = a.recv(1 << 20)
            assert chunk
            got += chunk
        assert len(got) == sent
        full = pattern * (sent // len(pattern) + 1)
        assert bytes(got) == full[:sent]
    finally:
        c.close()
        if a is not None:
            a.close()
        sink.close()
