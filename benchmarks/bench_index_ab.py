"""Catalog migration 006 side by side: the old state-only index against the new one, on one stack.

    python benchmarks/bench_index_ab.py [--seconds 30] [--pairs 3] [--base-port 30700]

A fresh single-topology stack is seeded as bench_stack.py seeds it.  Then
old and new alternate (old-new, new-old, ...): the indexes are swapped, the
reservations and inventory tables vacuumed so that each window starts from
the same state, and POST /orders runs for --seconds at 16 closed-loop
clients.  Each window prints catalog's PostgreSQL backends' CPU per order
(the part the index moves), the catalog service's, the stack's, and the
load generator's (the same work per order in every window: a gauge of the
machine's speed).  The old index is put back only inside this benchmark's
own stack, which is stopped and purged at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.stack.backend import fresh_stack  # noqa: E402
from harness.stack.embedded import StackOptions  # noqa: E402
from scenarios.seed import seed  # noqa: E402
from bench_stack import cpu_by_part, cpu_snapshot, loadavg, order_step, stack_ms_per_order  # noqa: E402

INDEXES = {
    "old": ["DROP INDEX IF EXISTS reservations_reserved_idx",
            "CREATE INDEX IF NOT EXISTS reservations_state_idx ON reservations (state) "
            "WHERE state = 'RESERVED'"],
    "new": ["DROP INDEX IF EXISTS reservations_state_idx",
            "CREATE INDEX IF NOT EXISTS reservations_reserved_idx ON reservations (order_id) "
            "WHERE state = 'RESERVED'"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--base-port", default="30700")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="msdb-bench-ab-"))
    tck = os.sysconf("SC_CLK_TCK")
    with fresh_stack(StackOptions(state_dir=state, base_port=int(args.base_port)),
                     log=lambda *a: None) as backend:
        info = backend.info()
        roots = {p.proc["pid"] for p in info.parts if p.proc}
        data = seed(info.urls, users=50, products=200, stock=10_000_000)
        users, products = [u["id"] for u in data["users"]], data["products"]
        dsn = info.databases["catalog"].dsn   # the catalog's own role: it owns the tables
        asyncio.run(order_step(info.urls["orders"], users, products, 16, 5))   # warm up
        print(f"load average at the start: {loadavg()}")
        for i in range(args.pairs):
            for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                with psycopg.connect(dsn, autocommit=True) as c:
                    for q in INDEXES[name]:
                        c.execute(q)
                    c.execute("VACUUM (ANALYZE) reservations")
                    c.execute("VACUUM inventory")
                before = cpu_snapshot(roots)
                res = asyncio.run(order_step(info.urls["orders"], users, products, 16, args.seconds))
                ticks = cpu_by_part(before, cpu_snapshot(roots))

                def per(part: str) -> float:
                    return ticks.get(part, 0) / tck * 1000 / max(1, res["orders"])
                print(f"{name}: {res['rate']:6.1f} orders/s, p99 {res['p99_ms']:5.1f} ms; ms/order: "
                      f"catalog's backends {per('pg: product_service'):.3f}, catalog {per('catalog'):.3f}, "
                      f"stack {stack_ms_per_order(ticks, res['orders'], tck):.2f}, "
                      f"load generator {per('(load generator: this benchmark)'):.3f}; load {loadavg()}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
