"""Toxiproxy 2.x HTTP API (aiohttp.web) over a ProxyCollection, and `msdb proxy`.

Routes, JSON shapes and status codes follow Shopify/toxiproxy's api.go:

    GET  /proxies                      200 {name: proxy}
    POST /proxies                      201 proxy | 400 | 409 | 500 (bind)
    POST /populate                     201 {"proxies": [...]} | error + proxies
    GET  /proxies/{p}                  200 | 404
    POST|PATCH /proxies/{p}            200 | 400 | 404 | 500
    DELETE /proxies/{p}                204 | 404
    GET  /proxies/{p}/toxics           200 [toxic]
    POST /proxies/{p}/toxics           200 toxic | 400 | 404 | 409
    GET  /proxies/{p}/toxics/{t}       200 | 404
    POST|PATCH /proxies/{p}/toxics/{t} 200 | 400 | 404
    DELETE /proxies/{p}/toxics/{t}     204 | 404
    POST /reset                        204
    GET  /version                      200 {"version": "..."}\\n

Errors are Toxiproxy's: body `{"error": "...", "status": N}` + newline, sent
as text/plain like Go's http.Error.  A browser User-Agent gets 403.
Deviations: an empty `listen` binds 127.0.0.1 (never all interfaces),
proxy objects carry no Go-internal `Logger` field, and an `upstream` may be
`unix:/absolute/path` (an msdb extension; Toxiproxy dials TCP only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from .proxy import ProxyCollection
from .toxics import parse_address, parse_upstream
from .toxics import ToxicError, parse_toxic, update_toxic

__all__ = ["make_app", "serve", "main", "VERSION", "load_config"]

log = logging.getLogger("msdb.proxy")
VERSION = "2.12.0-msdb"


def _json(data, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data, separators=(",", ":")), status=status,
                        content_type="application/json")


def _error(e: ToxicError) -> web.Response:
    body = json.dumps({"error": e.message, "status": e.status}, separators=(",", ":")) + "\n"
    return web.Response(text=body, status=e.status, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def _body(request: web.Request):
    raw = await request.read()
    if not raw.strip():
        raise ToxicError("bad request body: EOF", 400)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ToxicError(f"bad request body: {e}", 400) from None


def _field(body: dict, key: str, kind, default):
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
        raise ToxicError(f"bad request body: {key} must be a {kind.__name__}, got {v!r}", 400)
    return v


@web.middleware
async def _toxiproxy_errors(request: web.Request, handler):
    if request.headers.get("User-Agent", "").startswith("Mozilla/"):
        return web.Response(text="User agent not allowed\n", status=403)
    try:
        return await handler(request)
    except ToxicError as e:
        return _error(e)


def make_app(collection: ProxyCollection) -> web.Application:
    app = web.Application(middlewares=[_toxiproxy_errors], client_max_size=1 << 20)
    r = web.RouteTableDef()

    @r.get("/proxies")
    async def proxy_index(request):
        return _json({name: p.to_json() for name, p in sorted(collection.proxies.items())})

    @r.post("/proxies")
    async def proxy_create(request):
        body = await _body(request)
        if not isinstance(body, dict):
            raise ToxicError("bad request body: expected a JSON object", 400)
        name = _field(body, "name", str, "")
        upstream = _field(body, "upstream", str, "")
        if not name:
            raise ToxicError("missing required field: name", 400)
        if not upstream:
            raise ToxicError("missing required field: upstream", 400)
        parse_upstream(upstream, "upstream")
        proxy = await collection.add(name=name, listen=_field(body, "listen", str, ""),
                                     upstream=upstream, enabled=_field(body, "enabled", bool, True))
        return _json(proxy.to_json(), 201)

    @r.post("/populate")
    async def populate(request):
        body = await _body(request)
        if not isinstance(body, list):
            raise ToxicError("bad request body: expected a JSON array of proxies", 400)
        try:
            checked = _check_populate(body)
        except ToxicError as e:
            return _json({"error": e.message, "status": e.status, "proxies": None}, e.status)
        done = []
        for item in checked:
            try:
                done.append(await collection.add_or_replace(**item))
            except ToxicError as e:
                return _json({"error": e.message, "status": e.status,
                              "proxies": [p.to_json() for p in done] or None}, e.status)
        return _json({"proxies": [p.to_json() for p in done] or None}, 201)

    @r.get("/proxies/{proxy}")
    async def proxy_show(request):
        return _json(collection.get(request.match_info["proxy"]).to_json())

    async def proxy_update(request):
        proxy = collection.get(request.match_info["proxy"])
        body = await _body(request)
        if not isinstance(body, dict):
            raise ToxicError("bad request body: expected a JSON object", 400)
        listen = _field(body, "listen", str, proxy.listen)
        upstream = _field(body, "upstream", str, proxy.upstream)
        enabled = _field(body, "enabled", bool, proxy.enabled)
        if listen != proxy.listen or upstream != proxy.upstream:
            upstream_addr = parse_upstream(upstream, "upstream")
            parse_address(listen, "listen")
            await proxy.stop()
            proxy.listen, proxy.upstream, proxy.upstream_addr = listen, upstream, upstream_addr
        if enabled and not proxy.enabled:
            await proxy.start()
        elif not enabled and proxy.enabled:
            await proxy.stop()
        return _json(proxy.to_json())

    r.post("/proxies/{proxy}")(proxy_update)
    r.patch("/proxies/{proxy}")(proxy_update)

    @r.delete("/proxies/{proxy}")
    async def proxy_delete(request):
        await collection.remove(request.match_info["proxy"])
        return web.Response(status=204)

    @r.get("/proxies/{proxy}/toxics")
    async def toxic_index(request):
        return _json(collection.get(request.match_info["proxy"]).toxics_json())

    @r.post("/proxies/{proxy}/toxics")
    async def toxic_create(request):
        proxy = collection.get(request.match_info["proxy"])
        toxic = proxy.add_toxic(parse_toxic(await _body(request)))
        return _json(toxic.to_json())

    @r.get("/proxies/{proxy}/toxics/{toxic}")
    async def toxic_show(request):
        proxy = collection.get(request.match_info["proxy"])
        toxic = proxy.toxics.get(request.match_info["toxic"])
        if toxic is None:
            raise ToxicError("toxic not found", 404)
        return _json(toxic.to_json())

    async def toxic_update(request):
        proxy = collection.get(request.match_info["proxy"])
        toxic = proxy.toxics.get(request.match_info["toxic"])
        if toxic is None:
            raise ToxicError("toxic not found", 404)
        return _json(proxy.update_toxic(update_toxic(toxic, await _body(request))).to_json())

    r.post("/proxies/{proxy}/toxics/{toxic}")(toxic_update)
    r.patch("/proxies/{proxy}/toxics/{toxic}")(toxic_update)

    @r.delete("/proxies/{proxy}/toxics/{toxic}")
    async def toxic_delete(request):
        collection.get(request.match_info["proxy"]).remove_toxic(request.match_info["toxic"])
        return web.Response(status=204)

    @r.post("/reset")
    async def reset(request):
        await collection.reset()
        return web.Response(status=204)

    @r.get("/version")
    async def version(request):
        return web.Response(text=f'{{"version": "{VERSION}"}}\n', content_type="application/json",
                            charset="utf-8")

    app.add_routes(r)
    return app


def _check_populate(items: list) -> list[dict]:
    """Phase 1 of /populate: every entry has a name and an upstream."""
    out = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ToxicError(f"bad request body: proxy {i} is not an object", 400)
        name = _field(item, "name", str, "")
        upstream = _field(item, "upstream", str, "")
        if not name:
            raise ToxicError(f"missing required field: name at proxy {i}", 400)
        if not upstream:
            raise ToxicError(f"missing required field: upstream at proxy {i}", 400)
        parse_upstream(upstream, "upstream")
        out.append({"name": name, "listen": _field(item, "listen", str, ""), "upstream": upstream,
                    "enabled": _field(item, "enabled", bool, True)})
    return out


def load_config(path: str | Path) -> list[dict]:
    """Toxiproxy's -config file: a JSON array of {name, listen, upstream, enabled}."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--config {str(path)!r}: file does not exist") from None
    except ValueError as e:
        raise ValueError(f"--config {str(path)!r}: not valid JSON: {e}") from None
    if not isinstance(raw, list):
        raise ValueError(f"--config {str(path)!r}: expected a JSON array of proxies")
    try:
        return _check_populate(raw)
    except ToxicError as e:
        raise ValueError(f"--config {str(path)!r}: {e.message}") from None


async def serve(host: str, port: int, config: list[dict] | None = None, *,
                ready=None, stop: asyncio.Event | None = None, seed: int | None = None) -> None:
    """Run the API and the proxies until `stop` is set (or forever)."""
    collection = ProxyCollection(seed)
    for item in config or []:
        await collection.add_or_replace(**item)
    runner = web.AppRunner(make_app(collection), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await collection.close()
        await runner.cleanup()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if ready is not None:
        ready(collection)
    stop = stop or asyncio.Event()
    try:
        await stop.wait()
    finally:
        await collection.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """`msdb proxy` / `python -m chaos.server`: exit 2 on bad usage or config, 3 if it cannot listen."""
    p = argparse.ArgumentParser(prog="msdb proxy", description="Toxiproxy-compatible fault proxy "
                                "(Toxiproxy 2.x HTTP API)")
    p.add_argument("--host", default="127.0.0.1", help="API host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8474, help="API port (default 8474)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="JSON array of proxies to create at start (Toxiproxy's -config format)")
    p.add_argument("--seed", type=int, default=None, help="seed for toxicity rolls and jitter")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"msdb proxy: error: --port {args.port} is out of range", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"msdb proxy: error: --host {args.host!r}: msdb only listens on loopback",
              file=sys.stderr)
        return 2
    try:
        config = load_config(args.config) if args.config else []
    except ValueError as e:
        print(f"msdb proxy: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, stop.set)
        await serve(args.host, args.port, config, stop=stop, seed=args.seed,
                    ready=lambda c: print(f"msdb proxy: API on http://{args.host}:{args.port}, "
                                          f"{len(c.proxies)} proxies", flush=True))
    try:
        run_loop(run())
    except OSError as e:
        print(f"msdb proxy: error: {e}", file=sys.stderr)
        return 3
    except ToxicError as e:
        print(f"msdb proxy: error: {e.message}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
