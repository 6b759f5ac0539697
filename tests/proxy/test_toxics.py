"""Each toxic, measured against a real TCP echo server through a real `msdb proxy`.

These are calibration tests: they inject a known cause and check that the
measured effect matches it (latency L -> round trip + L, and so on).
"""

from __future__ import annotations

import errno
import socket
import time

import pytest

from fix_proxy import connect, median_rtt, roundtrip

pytestmark = [pytest.mark.proxy, pytest.mark.slow]


@pytest.fixture
def echo_proxy(clean_proxies, echo):
    p = clean_proxies.create("echo", upstream=echo.address, listen="127.0.0.1:0")
    host, port = p.listen.rsplit(":", 1)
    yield clean_proxies, (host, int(port))


def read_all(s: socket.socket, limit: float = 10.0) -> tuple[bytes, list[int]]:
    """Read until EOF; returns the data and the size of each recv."""
    s.settimeout(limit)
    data, sizes = b"", []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data, sizes
        data += chunk
        sizes.append(len(chunk))


@pytest.mark.parametrize("latency_ms", [50, 200])
def test_latency_adds_L_to_the_round_trip(echo_proxy, latency_ms):
    server, addr = echo_proxy
    s = connect(addr)
    base = median_rtt(s)
    # Added while the connection is open: it must reach the live connection.
    server.add_toxic("echo", "latency", attributes={"latency": latency_ms})
    added = median_rtt(s, 7) - base
    assert latency_ms * 0.9 <= added <= latency_ms * 1.1, (base, added)
    # Both directions: 2L.
    server.add_toxic("echo", "latency", stream="upstream", attributes={"latency": latency_ms})
    both = median_rtt(s, 5) - base
    assert 2 * latency_ms * 0.9 <= both <= 2 * latency_ms * 1.1, both
    server.remove_toxic("echo", "latency_downstream")
    server.remove_toxic("echo", "latency_upstream")
    assert median_rtt(s) < base + latency_ms * 0.1   # removal reaches it too
    s.close()


def test_latency_is_pipelined_not_serialised(echo_proxy):
    """Two chunks sent 20 ms apart through a 200 ms latency arrive about 20 ms apart."""
    server, addr = echo_proxy
    server.add_toxic("echo", "latency", attributes={"latency": 200})
    s = connect(addr)
    t0 = time.perf_counter()
    s.sendall(b"a")
    time.sleep(0.02)
    s.sendall(b"b")
    got, times = b"", []
    while len(got) < 2:
        got += s.recv(10)
        times.append((time.perf_counter() - t0) * 1000)
    assert got == b"ab"
    assert times[-1] < 200 + 20 + 50, times
    s.close()


def test_jitter_stays_within_bounds(echo_proxy):
    server, addr = echo_proxy
    server.add_toxic("echo", "latency", attributes={"latency": 100, "jitter": 40})
    s = connect(addr)
    samples = [roundtrip(s) for _ in range(20)]
    assert min(samples) >= 100 - 40 - 1 and max(samples) <= 100 + 40 + 20, samples
    assert max(samples) - min(samples) > 10           # it does vary
    s.close()


@pytest.mark.parametrize("rate_kb", [200, 1000])
def test_bandwidth_limits_throughput(echo_proxy, rate_kb):
    server, addr = echo_proxy
    server.add_toxic("echo", "bandwidth", attributes={"rate": rate_kb})
    s = connect(addr, timeout=20)
    payload = b"z" * (rate_kb * 1000)          # one second's worth at the limit
    t0 = time.perf_counter()
    s.sendall(payload)
    got = 0
    first = None
    while got < len(payload):
        chunk = s.recv(1 << 20)
        assert chunk
        if first is None:
            first = time.perf_counter()
        got += len(chunk)
    elapsed = time.perf_counter() - t0
    throughput = got / elapsed / 1000
    assert rate_kb * 0.85 <= throughput <= rate_kb * 1.15, throughput
    s.close()


def test_reset_peer_sends_a_real_rst(echo_proxy):
    server, addr = echo_proxy
    server.add_toxic("echo", "reset_peer", stream="upstream", attributes={"timeout": 100})
    s = connect(addr)
    t0 = time.perf_counter()
    s.sendall(b"hello")
    with pytest.raises(ConnectionResetError) as e:
        while s.recv(100):
            pass
    assert e.value.errno == errno.ECONNRESET
    assert (time.perf_counter() - t0) * 1000 >= 95
    s.close()


def test_timeout_holds_data_then_closes(echo_proxy):
    server, addr = echo_proxy
    server.add_toxic("echo", "timeout", attributes={"timeout": 300})
    s = connect(addr)
    t0 = time.perf_counter()
    s.sendall(b"anyone there?")
    data, _ = read_all(s)
    elapsed = (time.perf_counter() - t0) * 1000
    assert data == b""                        # nothing got through
    assert 280 <= elapsed <= 1000, elapsed     # closed after the timeout
    s.close()


def test_timeout_zero_holds_until_removed_then_closes(echo_proxy):
    server, addr = echo_proxy
    server.add_toxic("echo", "timeout", attributes={"timeout": 0})
    s = connect(addr)
    s.sendall(b"held")
    s.settimeout(0.5)
    with pytest.raises(socket.timeout):
        s.recv(10)                            # held: no data, no close
    server.remove_toxic("echo", "timeout_downstream")
    data, _ = read_all(s)                     # removal closes the connection
    assert data == b""
    s.close()


@pytest.mark.parametrize("limit", [1, 100, 5000])
def test_limit_data_closes_after_exactly_n_bytes(echo_proxy, limit):
    server, addr = echo_proxy
    server.add_toxic("echo", "limit_data", attributes={"bytes": limit})
    s = connect(addr)
    try:
        s.sendall(b"q" * (limit * 3))
    except OSError:
        pass
    data, _ = read_all(s)
    assert len(data) == limit
    s.close()


def test_slicer_delivers_in_pieces(echo_proxy):
    server, addr = echo_proxy
    server.add_toxic("echo", "slicer", attributes={"average_size": 10, "size_variation": 5,
                                                    "delay": 2000})
    s = connect(addr)
    payload = bytes(range(256)) * 4
    s.sendall(payload)
    s.settimeout(5)
    got, sizes = b"", []
    while len(got) < len(payload):
        chunk = s.recv(65536)
        got += chunk
        sizes.append(len(chunk))
    assert got == payload                     # nothing lost, nothing reordered
    assert len(sizes) >= 20 and max(sizes) <= 64, sizes
    s.close()


def test_slow_close_delays_the_close(echo_proxy):
    server, addr = echo_proxy
    server.add_toxic("echo", "slow_close", stream="upstream", attributes={"delay": 300})
    s = connect(addr)
    assert roundtrip(s) < 100                 # data flows normally
    t0 = time.perf_counter()
    s.shutdown(socket.SHUT_WR)                # our EOF travels upstream, slowly
    data, _ = read_all(s)
    assert (time.perf_counter() - t0) * 1000 >= 290
    s.close()


@pytest.mark.parametrize("toxicity,low,high", [(0.0, 0, 0), (1.0, 60, 60), (0.5, 18, 42)])
def test_toxicity_is_rolled_once_per_connection(echo_proxy, toxicity, low, high):
    server, addr = echo_proxy
    server.add_toxic("echo", "latency", toxicity=toxicity, attributes={"latency": 60})
    slowed = 0
    for _ in range(60):
        s = connect(addr)
        first = roundtrip(s)
        second = roundtrip(s)
        # the roll holds for the whole connection: both trips agree
        assert (first > 50) == (second > 50), (first, second)
        slowed += first > 50
        s.close()
    assert low <= slowed <= high, slowed


def test_disabled_proxy_refuses_and_drops_connections(echo_proxy):
    server, addr = echo_proxy
    s = connect(addr)
    assert roundtrip(s) < 100
    server.set_enabled("echo", False)
    with pytest.raises(ConnectionRefusedError):
        connect(addr, timeout=2)
    data, _ = read_all(s, limit=5)             # the open connection was closed
    assert data == b""
    server.set_enabled("echo", True)
    s2 = connect(addr)
    assert roundtrip(s2) < 100
    s2.close()
    s.close()


def test_upstream_down_closes_the_client(clean_proxies):
    p = clean_proxies.create("dead", upstream="127.0.0.1:9", listen="127.0.0.1:0")
    host, port = p.listen.rsplit(":", 1)
    s = connect((host, int(port)))
    data, _ = read_all(s, limit=5)
    assert data == b""
    s.close()
