"""A `unix:/path` upstream (an msdb extension of Toxiproxy's API), end to end.

The client leg stays TCP; the proxy dials a Unix-domain echo server.  Toxics
behave as with a TCP upstream; bad upstream strings are a 400 naming them.
Proxies here listen on fixed ports 22900-22919 (127.0.0.1).
"""

from __future__ import annotations

import errno
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import requests

from fix_proxy import EchoServer, connect, exchange, median_rtt

pytestmark = pytest.mark.proxy

PORT = 22900


@pytest.fixture(scope="module")
def unix_echo():
    # Short, absolute: sun_path holds 107 bytes; pytest's tmp_path may not fit.
    d = Path(tempfile.mkdtemp(prefix="msdb-ux-", dir="/tmp"))
    e = EchoServer(unix_path=str(d / "echo.sock"))
    yield e
    e.close()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def unix_proxy(clean_proxies, unix_echo):
    p = clean_proxies.create("ux", upstream=unix_echo.upstream, listen=f"127.0.0.1:{PORT}")
    yield clean_proxies, ("127.0.0.1", int(p.listen.rsplit(":", 1)[1]))


def api(server, path):
    t = server.target
    return f"http://{t.host}:{t.port}{path}"


def test_unix_upstream_carries_data_both_ways(unix_proxy, unix_echo):
    server, addr = unix_proxy
    assert server.proxies()["ux"].upstream == unix_echo.upstream   # shown as given
    before = unix_echo.accepted
    s = connect(addr)
    assert exchange(s, b"hello through a unix upstream") == b"hello through a unix upstream"
    big = bytes(range(256)) * 8192            # 2 MiB: exercises flow control
    assert exchange(s, big) == big
    s.close()
    assert unix_echo.accepted == before + 1


def test_latency_on_a_unix_upstream_adds_L(unix_proxy):
    server, addr = unix_proxy
    latency_ms = 100
    s = connect(addr)
    base = median_rtt(s)
    # Added on the live connection, as a pool connection would see it.
    server.add_toxic("ux", "latency", attributes={"latency": latency_ms})
    added = median_rtt(s, 7) - base
    assert latency_ms * 0.9 <= added <= latency_ms * 1.1, (base, added)
    server.remove_toxic("ux", "latency_downstream")
    assert median_rtt(s) < base + latency_ms * 0.1
    s.close()


def test_reset_peer_on_a_unix_upstream_resets_the_tcp_client(unix_proxy):
    server, addr = unix_proxy
    server.add_toxic("ux", "reset_peer", stream="upstream", attributes={"timeout": 100})
    s = connect(addr)
    t0 = time.perf_counter()
    s.sendall(b"hello")
    with pytest.raises(ConnectionResetError) as e:
        while s.recv(100):
            pass
    assert e.value.errno == errno.ECONNRESET
    assert (time.perf_counter() - t0) * 1000 >= 95
    s.close()


def test_limit_data_on_a_unix_upstream(unix_proxy):
    server, addr = unix_proxy
    server.add_toxic("ux", "limit_data", attributes={"bytes": 1000})
    s = connect(addr)
    s.sendall(b"y" * 5000)
    s.settimeout(5)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    assert data == b"y" * 1000
    s.close()


def test_missing_unix_socket_closes_the_client(clean_proxies):
    p = clean_proxies.create("ux-dead", upstream="unix:/tmp/msdb-ux-missing/none.sock",
                             listen=f"127.0.0.1:{PORT + 1}")
    s = connect(("127.0.0.1", int(p.listen.rsplit(":", 1)[1])))
    s.settimeout(5)
    assert s.recv(100) == b""
    s.close()


BAD_UPSTREAMS = [
    ("unix:relative/echo.sock", "is not unix:/absolute/path"),
    ("unix:", "is not unix:/absolute/path"),
    ("unix:/" + "a" * 120, "longer than 107 bytes"),
    ("no-port-here", "is not host:port"),
    ("127.0.0.1:http", "has no numeric port"),
]


@pytest.mark.parametrize("upstream,why", BAD_UPSTREAMS)
def test_bad_upstream_is_a_400_naming_it(clean_proxies, unix_echo, upstream, why):
    s = clean_proxies
    for url, body in ((api(s, "/proxies"), {"name": "bad", "upstream": upstream}),
                      (api(s, "/populate"), [{"name": "bad", "upstream": upstream}])):
        r = requests.post(url, json=body)
        assert r.status_code == 400, r.text
        assert repr(upstream) in r.json()["error"] and why in r.json()["error"], r.json()
    assert "bad" not in s.proxies()
    # Updating a proxy to a bad upstream is refused and leaves it as it was.
    s.create("ux-upd", upstream=unix_echo.upstream, listen=f"127.0.0.1:{PORT + 2}")
    r = requests.patch(api(s, "/proxies/ux-upd"), json={"upstream": upstream})
    assert r.status_code == 400 and repr(upstream) in r.json()["error"], r.text
    p = s.proxies()["ux-upd"]
    assert p.upstream == unix_echo.upstream and p.enabled


def test_update_switches_between_tcp_and_unix_upstreams(clean_proxies, unix_echo, echo):
    s = clean_proxies
    s.create("ux-sw", upstream=echo.address, listen=f"127.0.0.1:{PORT + 3}")
    addr = ("127.0.0.1", PORT + 3)
    for upstream in (unix_echo.upstream, echo.address):
        r = requests.patch(api(s, "/proxies/ux-sw"), json={"upstream": upstream})
        assert r.status_code == 200 and r.json()["upstream"] == upstream, r.text
        c = connect(addr)
        assert exchange(c, b"ping") == b"ping"
        c.close()
