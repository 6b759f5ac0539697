"""Fault-proxy overhead, measured side by side in one run.

    python benchmarks/bench_proxy.py [--seconds 10]

pgbench select-only (scale 10) against one PostgreSQL instance of a fresh
embedded stack: direct, and through `msdb proxy` with no toxics, at 1 client
and at 8 clients (2 threads).  Prints tps ratios and the mean latency the
proxy adds at 1 client.  Targets: >= 0.7x direct tps at 8 clients, <= 50 us
added at 1 client.  (A naive asyncio stream proxy reaches ~0.45x here.)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos.client import ToxiproxyServer  # noqa: E402
from harness.pg import PgRuntime  # noqa: E402


def msdb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def pgbench(bin_dir: Path, port: int, pw: str, clients: int, seconds: int) -> tuple[float, float]:
    r = subprocess.run([str(bin_dir / "pgbench"), "-S", "-c", str(clients), "-j", str(min(clients, 2)),
                        "-T", str(seconds), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "pgbench_db"], env={"PGPASSWORD": pw, "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, check=True)
    tps = float(re.search(r"tps = ([\d.]+)", r.stdout).group(1))
    lat = float(re.search(r"latency average = ([\d.]+) ms", r.stdout).group(1))
    return tps, lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--base-port", default="30500")
    ap.add_argument("--api-port", type=int, default=30599)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="msdb-bench-proxy-"))
    proxy = None
    try:
        r = msdb("up", "--state-dir", str(state), "--base-port", args.base_port)
        if r.returncode != 0:
            print(r.stderr)
            return 3
        info = json.loads((state / "stack.json").read_text())
        inst = next(i for i in info["postgres"]["instances"] if i["role"] == "primary")
        pw = re.match(r"postgresql://postgres:([^@]+)@", inst["admin_dsn"]).group(1)
        with psycopg.connect(inst["admin_dsn"], autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS pgbench_db")
            c.execute("CREATE DATABASE pgbench_db")
        bin_dir = PgRuntime.for_state_dir(state).bin_dir
        subprocess.run([str(bin_dir / "pgbench"), "-i", "-s", "10", "-q", "-h", "127.0.0.1", "-p",
                        str(inst["port"]), "-U", "postgres", "pgbench_db"],
                       env={"PGPASSWORD": pw, "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
        proxy = subprocess.Popen([sys.executable, "-m", "harness.cli", "proxy", "--port", str(args.api_port)],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        server = ToxiproxyServer("127.0.0.1", args.api_port)
        for _ in range(100):
            try:
                server.version()
                break
            except Exception:
                time.sleep(0.1)
        p = server.create("bench-pg", upstream=f"127.0.0.1:{inst['port']}", listen="127.0.0.1:0")
        pport = int(p.listen.rsplit(":", 1)[1])
        rows = []
        for clients in (1, 8):
            d_tps, d_lat = pgbench(bin_dir, inst["port"], pw, clients, args.seconds)
            p_tps, p_lat = pgbench(bin_dir, pport, pw, clients, args.seconds)
            rows.append((clients, d_tps, p_tps, d_lat, p_lat))
        print(f"{'clients':>7}  {'direct tps':>11}  {'proxy tps':>10}  {'ratio':>6}  "
              f"{'direct ms':>9}  {'proxy ms':>9}  {'added us':>9}")
        for c, dt, pt, dl, pl in rows:
            print(f"{c:>7}  {dt:>11.0f}  {pt:>10.0f}  {pt / dt:>6.2f}  {dl:>9.3f}  {pl:>9.3f}  "
                  f"{(pl - dl) * 1000:>9.1f}")
        one, eight = rows
        print(f"\n8 clients: proxy/direct = {eight[2] / eight[1]:.2f}x   (target >= 0.70)")
        print(f"1 client: added mean latency = {(one[4] - one[3]) * 1000:.1f} us   (target <= 50 us)")
        return 0
    finally:
        if proxy is not None:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(10)
        msdb("down", "--state-dir", str(state), "--purge")
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
