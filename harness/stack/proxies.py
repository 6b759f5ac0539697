"""The stack's Toxiproxy API as every backend uses it: repointing a link."""

from __future__ import annotations

from chaos.client import ToxiproxyServer

from ..errors import InfraError

__all__ = ["repoint_proxy"]


def repoint_proxy(api: str, link: str, upstream: str) -> None:
    """Point proxy `link` at `upstream` (new connections go there), or InfraError."""
    try:
        got = ToxiproxyServer.at(api, timeout=10).set_upstream(link, upstream)
    except Exception as e:  # the client's errors are all plain Exceptions
        raise InfraError(f"could not repoint proxy {link} to {upstream}: {e}") from None
    if got.get("upstream") != upstream:
        raise InfraError(f"could not repoint proxy {link} to {upstream}: it answered {got}")
