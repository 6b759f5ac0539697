"""A real `msdb proxy` process and a real TCP echo server, once per session,
and the client helpers every proxy test uses."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from chaos.client import ToxiproxyServer
from fix_cli import MSDB

PROXY_API_PORT = int(os.environ.get("MSDB_TEST_PROXY_PORT", "28474"))
ROOT = Path(__file__).resolve().parents[2]


class EchoServer:
    """Echoes every byte back; counts connections.  TCP on 127.0.0.1 (`port`, 0
    for any free one), or a Unix-domain stream socket at `unix_path`."""

    def __init__(self, port: int = 0, *, unix_path: str | None = None):
        self.unix_path = unix_path
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
        else:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", port))
        self.sock.listen(256)
        self.port = None if unix_path else self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def upstream(self) -> str:
        """What a proxy's `upstream` names: host:port, or unix:/path."""
        return f"unix:{self.unix_path}" if self.unix_path else self.address

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        if not self.unix_path:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes the accept() thread
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# -- client side, shared by the proxy tests ----------------------------------------

def connect(addr: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def exchange(s: socket.socket, payload: bytes) -> bytes:
    """Send `payload` through the echo and read as many bytes back (a sender
    thread, so a payload larger than the socket buffers cannot deadlock)."""
    err: list[OSError] = []

    def send():
        try:
            s.sendall(payload)
        except OSError as e:
            err.append(e)
    t = threading.Thread(target=send)
    t.start()
    got = bytearray()
    while len(got) < len(payload):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    t.join(10)
    if err:
        raise err[0]
    return bytes(got)


def roundtrip(s: socket.socket, n: int = 64) -> float:
    """Milliseconds for n random bytes to come back intact."""
    msg = os.urandom(n)
    t0 = time.perf_counter()
    s.sendall(msg)
    got = b""
    while len(got) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    assert got == msg
    return (time.perf_counter() - t0) * 1000


def median_rtt(s: socket.socket, k: int = 15) -> float:
    return statistics.median(roundtrip(s) for _ in range(k))


# -- a real `msdb proxy` process ----------------------------------------------------

def start_proxy(port: int, log: Path, *, seed: int, env: dict | None = None):
    """Start `msdb proxy` on `port`; returns (process, client) once it answers."""
    with open(log, "wb") as f:
        proc = subprocess.Popen([*MSDB, "proxy", "--port", str(port),
                                 "--seed", str(seed)], cwd=ROOT, env={**os.environ, **(env or {})},
                                stdout=f, stderr=subprocess.STDOUT)
    server = ToxiproxyServer("127.0.0.1", port, timeout=5)
    deadline = time.monotonic() + 20
    while True:
        try:
            server.version()
            return proc, server
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_proxy(proc)
                raise RuntimeError(f"msdb proxy did not start: {log.read_text()}")
            time.sleep(0.1)


def stop_proxy(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def echo():
    e = EchoServer()
    yield e
    e.close()


@pytest.fixture(scope="session")
def proxy_server(tmp_path_factory):
    """A ToxiproxyServer client for a real `msdb proxy` process."""
    proc, server = start_proxy(PROXY_API_PORT, tmp_path_factory.mktemp("proxy") / "proxy.log", seed=42)
    yield server
    stop_proxy(proc)


@pytest.fixture
def clean_proxies(proxy_server):
    """Each test starts and ends with no proxies on the server."""
    def wipe():
        for name in list(proxy_server.proxies()):
            with proxy_server.bound():
                proxy_server.proxy(name).destroy()
    wipe()
    yield proxy_server
    wipe()
