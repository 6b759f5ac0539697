"""Half-closed connections through `msdb proxy` (docs/proxy.md, "Half-close").

An EOF on one side travels through that direction's toxics, as in
Toxiproxy (slow_close delays it), and then half-closes the other side
(shutdown SHUT_WR); the other direction stays usable, and the proxy closes
the connection only once both directions have ended.  Every test runs twice: with the eBPF sockmap
fast path (skipped where bpf(2) is unavailable) and in user space
(MSDB_PROXY_SOCKMAP=0), each against its own `msdb proxy` process with its
API on 127.0.0.1:23320 or :23321.  Upstream servers are plain sockets the
test drives by hand, so it decides who closes first.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest

from chaos import sockmap
from fix_proxy import connect, start_proxy, stop_proxy

pytestmark = [pytest.mark.proxy, pytest.mark.slow]

API_PORTS = {"kernel": 23320, "userspace": 23321}
DELAY_MS = 300
PROMPT_MS = 200     # an EOF no toxic holds back arrives well within this


@pytest.fixture(scope="module", params=["kernel", "userspace"])
def proxy(request, tmp_path_factory):
    """(process, API client) of an `msdb proxy` with the fast path on or off."""
    mode = request.param
    if mode == "kernel":
        if sockmap.get() is None:
            pytest.skip(f"eBPF sockmap unavailable here: {sockmap.reason()}")
        sockmap.release()
    log = tmp_path_factory.mktemp(f"halfclose-{mode}") / "proxy.log"
    proc, server = start_proxy(API_PORTS[mode], log, seed=11,
                               env={"MSDB_PROXY_SOCKMAP": "1" if mode == "kernel" else "0"})
    yield proc, server
    stop_proxy(proc)
    text = log.read_text()
    assert ("fast path off" in text) == (mode == "userspace"), text


class Pair:
    """One client connection through a fresh proxy, and the upstream's end of it."""

    def __init__(self, server, toxics: list[dict]):
        self.api = server
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        up = "127.0.0.1:%d" % self.listener.getsockname()[1]
        p = server.create("hc", upstream=up, listen="127.0.0.1:0")
        for t in toxics:
            server.add_toxic("hc", t["type"], stream=t["stream"], attributes=t["attributes"])
        host, port = p.listen.rsplit(":", 1)
        self.client = connect((host, int(port)))
        self.listener.settimeout(5)
        self.server, _ = self.listener.accept()
        self.server.settimeout(5)
        # Data both ways first: the links are live (and, on the fast path,
        # armed and parked) before anyone closes.
        self.client.sendall(b"ping")
        assert recv_exactly(self.server, 4) == b"ping"
        self.server.sendall(b"pong")
        assert recv_exactly(self.client, 4) == b"pong"
        time.sleep(0.05)

    def close(self):
        for s in (self.client, self.server, self.listener):
            s.close()
        with self.api.bound():
            self.api.proxy("hc").destroy()


@pytest.fixture
def pair(proxy):
    made = []

    def make(*toxics):
        made.append(Pair(proxy[1], list(toxics)))
        return made[-1]
    yield make
    for p in made:
        p.close()


def slow_close(stream: str) -> dict:
    return {"type": "slow_close", "stream": stream, "attributes": {"delay": DELAY_MS}}


def recv_exactly(s: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = s.recv(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def read_to_eof(s: socket.socket) -> tuple[bytes, float]:
    """Everything up to EOF, and when the EOF came (perf_counter)."""
    got = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return bytes(got), time.perf_counter()
        got += chunk


def ms_since(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000


def open_sockets(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return n


def wait_sockets(pid: int, want: int, limit: float = 3.0) -> int:
    end = time.monotonic() + limit
    while (n := open_sockets(pid)) != want and time.monotonic() < end:
        time.sleep(0.02)
    return n


def test_client_half_close_waits_for_slow_close_downstream(pair):
    p = pair(slow_close("downstream"))
    t0 = time.perf_counter()
    p.client.shutdown(socket.SHUT_WR)
    assert read_to_eof(p.server)[0] == b""          # the upstream link has no toxic
    p.server.close()
    data, t1 = read_to_eof(p.client)
    assert data == b""
    assert 0.9 * DELAY_MS <= ms_since(t0, t1) < 2000, ms_since(t0, t1)


def test_client_half_close_without_toxics_is_prompt(pair):
    p = pair()
    t0 = time.perf_counter()
    p.client.shutdown(socket.SHUT_WR)
    _, t_server = read_to_eof(p.server)
    assert ms_since(t0, t_server) < PROMPT_MS
    p.server.close()
    _, t1 = read_to_eof(p.client)
    assert ms_since(t0, t1) < PROMPT_MS


def test_server_half_close_waits_for_slow_close_upstream(pair):
    p = pair(slow_close("upstream"))
    t0 = time.perf_counter()
    p.server.sendall(b"bye")
    p.server.shutdown(socket.SHUT_WR)
    data, t_client = read_to_eof(p.client)           # the downstream link has no toxic
    assert data == b"bye" and ms_since(t0, t_client) < PROMPT_MS
    # Half-open: the client can still talk to the server.
    p.client.sendall(b"one more thing")
    assert recv_exactly(p.server, 14) == b"one more thing"
    t1 = time.perf_counter()
    p.client.close()
    data, t2 = read_to_eof(p.server)
    assert data == b""
    assert 0.9 * DELAY_MS <= ms_since(t1, t2) < 2000, ms_since(t1, t2)


def test_removing_slow_close_lets_a_held_eof_go(pair, proxy):
    p = pair({"type": "slow_close", "stream": "downstream", "attributes": {"delay": 5000}})
    p.client.shutdown(socket.SHUT_WR)
    assert read_to_eof(p.server)[0] == b""
    p.server.close()
    time.sleep(0.1)
    t0 = time.perf_counter()
    proxy[1].remove_toxic("hc", "slow_close_downstream")
    _, t1 = read_to_eof(p.client)
    assert ms_since(t0, t1) < 1000


@pytest.mark.parametrize("toxic", [None, "latency"])
def test_server_answers_after_the_client_half_closed(pair, toxic):
    """A request ended by EOF, then a 2 MiB answer: every byte arrives, then EOF."""
    toxics = [{"type": "latency", "stream": "downstream", "attributes": {"latency": 20}}] if toxic else []
    p = pair(*toxics)
    p.client.sendall(b"request")
    p.client.shutdown(socket.SHUT_WR)
    data, _ = read_to_eof(p.server)
    assert data == b"request"
    answer = os.urandom(2 << 20)
    p.server.sendall(answer)
    p.server.close()
    data, _ = read_to_eof(p.client)
    assert len(data) == len(answer) and data == answer


def test_connection_closes_only_when_both_directions_ended(pair, proxy):
    pid = proxy[0].pid
    p = pair()
    both_legs = open_sockets(pid)
    p.client.shutdown(socket.SHUT_WR)
    assert read_to_eof(p.server)[0] == b""
    time.sleep(0.2)
    assert open_sockets(pid) == both_legs                       # half-open: both legs kept
    p.server.sendall(b"still here")
    assert recv_exactly(p.client, 10) == b"still here"
    p.server.shutdown(socket.SHUT_WR)
    assert read_to_eof(p.client)[0] == b""
    assert wait_sockets(pid, both_legs - 2) == both_legs - 2    # both ended: closed


def test_reset_by_the_client_after_its_half_close_closes_the_upstream(pair, proxy):
    pid = proxy[0].pid
    p = pair()
    both_legs = open_sockets(pid)
    p.client.shutdown(socket.SHUT_WR)
    assert read_to_eof(p.server)[0] == b""
    # SO_LINGER {on, 0}: close() sends RST.  The server never closed its side,
    # so only the reset can end the upstream direction.
    p.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    p.client.close()
    assert wait_sockets(pid, both_legs - 2, limit=1.0) == both_legs - 2
