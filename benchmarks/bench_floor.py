"""The floor of an order: what the saga's library calls cost with nothing of ours in them.

    python benchmarks/bench_floor.py [--calls 6000] [--concurrency 8]

An order is, at the least, this many calls of the libraries the seed and
DEVELOPERS.md name (counted from system_under_test/orders/saga.py and the
catalog and payments routes):
- 4 HTTP requests served by uvicorn (uvloop, httptools) and FastAPI:
  `POST /orders`, the catalog's reserve and confirm, the payment;
- 3 HTTP requests made by aiohttp (the orders service's peer calls);
- 6 statements through psycopg_pool's AsyncConnectionPool (orders 3,
  catalog 2, payments 1), each with its PostgreSQL backend's CPU.

This benchmark measures each of those calls alone, with an empty handler
(a route that validates a small pydantic body and answers a small JSON) and
`SELECT 1`, driven by `--concurrency` tasks on one uvloop.  Client CPU is
this process's (getrusage); server CPU is read from /proc for the uvicorn
process and the backends.  Their sum per order is what no change to our own
code can remove while these libraries serve the saga: bench_stack.py's
per-part split is read against it (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp
import orjson
import uvloop
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.stack.backend import StackOptions, fresh_stack  # noqa: E402
from _machine import pid_ticks as ticks  # noqa: E402  (benchmarks/)
from bench_stack import loadavg  # noqa: E402

TCK = os.sysconf("SC_CLK_TCK")

# The server: FastAPI on uvicorn exactly as system_under_test/__main__.py runs
# a service, one POST route with a small pydantic body and an orjson answer.
APP = textwrap.dedent('''
    import os
    import time
    import uuid
    import orjson
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel

    class JSON(JSONResponse):
        def render(self, content):
            return orjson.dumps(content)

    class Item(BaseModel):
        product_id: uuid.UUID
        quantity: int

    class Body(BaseModel):
        order_id: uuid.UUID
        items: list[Item]

    app = FastAPI(default_response_class=JSON)
    BURN_S = int(os.environ.get("FLOOR_BURN_US", "0")) / 1e6   # calibration only

    @app.post("/call")
    async def call(body: Body):
        if BURN_S:
            end = time.thread_time() + BURN_S
            while time.thread_time() < end:
                pass
        return {"order_id": body.order_id, "state": "RESERVED"}

    if __name__ == "__main__":
        import sys
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                    access_log=False, log_level="warning", proxy_headers=False)
''')

BODY = {"order_id": "0b6f7a4e-9d1c-4d3e-8a55-3f1f0c2b7d10",
        "items": [{"product_id": "5d3c9a8e-1b2f-4c6d-9e0a-7f8b6c5d4e3f", "quantity": 2}]}


def own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(call, calls: int, concurrency: int) -> float:
    """Make `calls` calls from `concurrency` tasks; the seconds it took."""
    left = calls

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await call()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


def burn(us: float) -> None:
    end = time.thread_time() + us / 1e6
    while time.thread_time() < end:
        pass


async def http_floor(calls: int, concurrency: int, *, server_burn_us: int = 0,
                     client_burn_us: int = 0) -> tuple[float, float]:
    """(client µs, server µs) of CPU per aiohttp -> uvicorn/FastAPI request.
    The burns add a known CPU time per call on either side (calibration)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "floor_app.py"
        app.write_text(APP)
        server = subprocess.Popen([sys.executable, str(app), str(port)],
                                  env={**os.environ, "FLOOR_BURN_US": str(server_burn_us)})
        try:
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=30),
                    json_serialize=lambda o: orjson.dumps(o).decode()) as session:
                url = f"http://127.0.0.1:{port}/call"
                for _ in range(200):   # bounded: the server is up within 20 s or this fails
                    try:
                        async with session.post(url, json=BODY) as r:
                            await r.read()
                        break
                    except aiohttp.ClientConnectorError:
                        await asyncio.sleep(0.1)
                else:
                    raise SystemExit("the floor's uvicorn did not start")

                async def call():
                    async with session.post(url, json=BODY) as r:
                        orjson.loads(await r.read())
                    if client_burn_us:
                        burn(client_burn_us)
                await drive(call, calls // 10, concurrency)   # warm up
                c0, s0 = own_cpu_s(), ticks(server.pid)
                await drive(call, calls, concurrency)
                c1, s1 = own_cpu_s(), ticks(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=10)
    return (c1 - c0) / calls * 1e6, (s1 - s0) / TCK / calls * 1e6


async def pg_floor(dsn: str, calls: int, concurrency: int) -> tuple[float, float]:
    """(client µs, backend µs) of CPU per pooled `SELECT 1` (autocommit, dict rows as the services)."""
    backends: set[int] = set()

    async def note_pid(conn):
        backends.add(conn.info.backend_pid)
    async with AsyncConnectionPool(dsn, min_size=concurrency, max_size=concurrency, open=False,
                                   kwargs={"row_factory": dict_row, "autocommit": True},
                                   configure=note_pid) as pool:
        await pool.wait()

        async def call():
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT 1 AS x WHERE %s::int IS NOT NULL", (1,))
                await cur.fetchone()
        await drive(call, calls // 10, concurrency)
        c0, b0 = own_cpu_s(), sum(ticks(p) for p in backends)
        await drive(call, calls, concurrency)
        c1, b1 = own_cpu_s(), sum(ticks(p) for p in backends)
    return (c1 - c0) / calls * 1e6, (b1 - b0) / TCK / calls * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base-port", default="30600")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="msdb-floor-"))
    with fresh_stack(StackOptions(state_dir=state, base_port=int(args.base_port)),
                     log=lambda *a: None) as backend:
        dsn = backend.info().instance_of("orders").admin_dsn
        # The services sit idle through this benchmark; only our calls run.
        print(f"load average at the start: {loadavg()}")
        rows = []
        for r in range(args.rounds):
            hc, hs = uvloop.run(http_floor(args.calls, args.concurrency))
            pc, pb = uvloop.run(pg_floor(dsn, args.calls, args.concurrency))
            floor = 4 * hs + 3 * hc + 6 * (pc + pb)
            rows.append(floor)
            print(f"round {r + 1}: HTTP client {hc:.0f} µs, server {hs:.0f} µs; "
                  f"SELECT 1 client {pc:.0f} µs, backend {pb:.0f} µs per call; "
                  f"an order's floor (4 served, 3 made, 6 statements) {floor / 1000:.2f} ms")
        rows.sort()
        print(f"floor per order: median {rows[len(rows) // 2] / 1000:.2f} ms "
              f"[{rows[0] / 1000:.2f}-{rows[-1] / 1000:.2f}]; "
              f"load average at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
