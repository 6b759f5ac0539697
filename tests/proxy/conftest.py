"""The proxy folder's own fixtures (fix_proxy.py): one fault proxy and one echo
server per session, no stack."""

from fix_proxy import clean_proxies, echo, proxy_server  # noqa: F401
