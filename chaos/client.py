"""Talking to a Toxiproxy server (ours or Shopify's) through toxiproxy-python.

toxiproxy-python (the client the project's users know) lacks four things;
this module adds them on top of it rather than writing a second client:

- more than one server per process: the library keeps host/port as class
  attributes of `APIConsumer`; here the server is chosen per call from a
  context variable, set by `ToxiproxyServer.bound()`;
- request timeouts (the library has none; a hung server would hang a heal);
- 5xx surfacing: the library returns 5xx responses as if they succeeded;
  here they raise `ServerError` with Toxiproxy's error message;
- updating a toxic (POST /proxies/{p}/toxics/{t}).

Errors: the library's `NotFound` (404), `ProxyExists` (409), `InvalidToxic`
(400), plus `ServerError` (5xx) and `Unreachable` (connection failed or
timed out), all subclasses of Exception.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import toxiproxy
from toxiproxy import api as _api
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

__all__ = ["ToxiproxyServer", "ServerError", "Unreachable", "NotFound", "ProxyExists",
           "InvalidToxic"]

DEFAULT_TIMEOUT_S = 5.0


class ServerError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"toxiproxy answered HTTP {status}: {message}")
        self.status = status
        self.message = message


class Unreachable(Exception):
    pass


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    timeout: float


_current: contextvars.ContextVar[_Target | None] = contextvars.ContextVar("toxiproxy_target",
                                                                          default=None)


def _call(method: str, url: str, **kwargs):
    target = _current.get()
    host, port, timeout = (target.host, target.port, target.timeout) if target else \
        (_api.APIConsumer.host, _api.APIConsumer.port, DEFAULT_TIMEOUT_S)
    kwargs.setdefault("timeout", timeout)
    try:
        resp = requests.request(method, f"http://{host}:{port}{url}", **kwargs)
    except requests.RequestException as e:
        raise Unreachable(f"toxiproxy at {host}:{port}: {type(e).__name__}: {e}") from None
    if resp.status_code >= 500:
        try:
            message = resp.json().get("error", resp.text)
        except ValueError:
            message = resp.text
        raise ServerError(resp.status_code, message.strip())
    return _api.validate_response(resp)


def _install() -> None:
    """Route the library's calls through _call (once per process)."""
    if getattr(_api.APIConsumer, "_msdb_patched", False):
        return
    _api.APIConsumer.get = classmethod(lambda cls, url, params=None, **kw: _call("GET", url, params=params, **kw))
    _api.APIConsumer.post = classmethod(
        lambda cls, url, data=None, json=None, **kw: _call("POST", url, data=data, json=json, **kw))
    _api.APIConsumer.delete = classmethod(lambda cls, url, **kw: _call("DELETE", url, **kw))
    _api.APIConsumer._msdb_patched = True


_install()


class ToxiproxyServer:
    """One Toxiproxy API endpoint; every method talks to it and only to it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8474, *,
                 timeout: float = DEFAULT_TIMEOUT_S):
        self.target = _Target(host, port, timeout)

    @classmethod
    def at(cls, url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> "ToxiproxyServer":
        """The server of an API URL (`http://127.0.0.1:8474`)."""
        u = urlsplit(url)
        if u.scheme != "http" or not u.hostname or not u.port:
            raise ValueError(f"Toxiproxy API {url!r} is not http://HOST:PORT")
        return cls(u.hostname, u.port, timeout=timeout)

    def __repr__(self) -> str:
        return f"ToxiproxyServer({self.target.host}:{self.target.port})"

    @contextmanager
    def bound(self):
        token = _current.set(self.target)
        try:
            yield toxiproxy.Toxiproxy()
        finally:
            _current.reset(token)

    # -- through the library ---------------------------------------------------------

    def version(self) -> str:
        with self.bound():
            return _call("GET", "/version").json()["version"]

    def proxies(self) -> dict:
        with self.bound() as t:
            return t.proxies()

    def proxy(self, name: str):
        with self.bound() as t:
            p = t.get_proxy(name)
        if p is None:
            raise NotFound(f"proxy {name!r} not found")
        return p

    def create(self, name: str, upstream: str, listen: str | None = None, enabled: bool = True):
        with self.bound() as t:
            return t.create(upstream=upstream, name=name, listen=listen, enabled=enabled)

    def add_toxic(self, proxy: str, type: str, *, stream: str = "downstream",
                  toxicity: float = 1.0, attributes: dict | None = None,
                  name: str | None = None) -> dict:
        """Add a toxic; returns it as the server stored it."""
        name = name or f"{type}_{stream}"
        with self.bound():
            self.proxy(proxy).add_toxic(type=type, stream=stream, toxicity=toxicity,
                                        attributes=attributes or {}, name=name)
        return self.toxic(proxy, name)

    def remove_toxic(self, proxy: str, name: str) -> None:
        with self.bound():
            self.proxy(proxy).destroy_toxic(name)

    def toxics(self, proxy: str) -> dict:
        with self.bound():
            return {k: v.__dict__ for k, v in self.proxy(proxy).toxics().items()}

    def set_enabled(self, proxy: str, enabled: bool) -> None:
        with self.bound():
            p = self.proxy(proxy)
            p.enable() if enabled else p.disable()

    def reset(self) -> None:
        """Re-enable every proxy and remove every toxic."""
        with self.bound() as t:
            t.reset()

    # -- what the library lacks ------------------------------------------------------

    def toxic(self, proxy: str, name: str) -> dict:
        with self.bound():
            return _call("GET", f"/proxies/{proxy}/toxics/{name}").json()

    def update_toxic(self, proxy: str, name: str, *, attributes: dict | None = None,
                     toxicity: float | None = None) -> dict:
        body: dict = {}
        if attributes is not None:
            body["attributes"] = attributes
        if toxicity is not None:
            body["toxicity"] = toxicity
        with self.bound():
            return _call("POST", f"/proxies/{proxy}/toxics/{name}", json=body).json()

    def set_upstream(self, proxy: str, upstream: str) -> dict:
        """Point a proxy at another upstream (new connections go there)."""
        with self.bound():
            return _call("POST", f"/proxies/{proxy}", json={"upstream": upstream}).json()

    def populate(self, proxies: list[dict]) -> list[dict]:
        """POST /populate (the server-side one: idempotent, keeps unchanged proxies)."""
        with self.bound():
            return _call("POST", "/populate", json=proxies).json()["proxies"] or []
