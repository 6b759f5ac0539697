"""A real `msdb proxy` process and a real TCP echo server, once per session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from chaos.client import ToxiproxyServer

PROXY_API_PORT = int(os.environ.get("MSDB_TEST_PROXY_PORT", "28474"))


class EchoServer:
    """Echoes every byte back; counts connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c):
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
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="session")
def echo():
    e = EchoServer()
    yield e
    e.close()


@pytest.fixture(scope="session")
def proxy_server(tmp_path_factory):
    """A ToxiproxyServer client for a real `msdb proxy` process."""
    log = tmp_path_factory.mktemp("proxy") / "proxy.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "proxy", "--port",
                                 str(PROXY_API_PORT), "--seed", "42"], stdout=f, stderr=subprocess.STDOUT)
    server = ToxiproxyServer("127.0.0.1", PROXY_API_PORT, timeout=5)
    deadline = time.monotonic() + 20
    while True:
        try:
            server.version()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"msdb proxy did not start: {log.read_text()}")
            time.sleep(0.1)
    yield server
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
