"""Run one service: python -m system_under_test SERVICE --port PORT [--host 127.0.0.1]."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SERVICES = ("users", "catalog", "orders", "payments", "search", "analytics", "cdc")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m system_under_test")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import uvicorn
    try:
        import uvloop  # noqa: F401
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    module = importlib.import_module(f"system_under_test.{args.service}.app")
    uvicorn.run(module.app, host=args.host, port=args.port, loop=loop, http="httptools",
                access_log=False, log_level="warning", lifespan="on",
                # Services listen on 127.0.0.1 behind no proxy that sets
                # X-Forwarded-*: skip that middleware on every request.
                proxy_headers=False,
                timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
