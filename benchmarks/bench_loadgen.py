"""The load generator's own cost: msdb's hooks on a Locust worker, side by
side with plain Locust, in one run.

    python benchmarks/bench_loadgen.py [--seconds 10] [--rounds 9] [--users 10]

A trivial endpoint (HTTP/1.1 keep-alive answered by a bare asyncio protocol
on uvloop, started here on 127.0.0.1, which counts what it served; far
cheaper per request than the worker, so the worker is what limits the rate) is loaded by ONE Locust worker
process under a Locust master in this process, two ways:

- plain: `locust --worker -f benchmarks/bench_loadgen.py`, a FastHttpUser
  and nothing else; the master keeps Locust's own statistics only;
- msdb:  `python -m harness.run.worker` with the same user: every request
  becomes a sample, shipped to the master in Locust's worker reports each
  second, and the master's `WorkerSink` writes requests.csv, exactly as
  `msdb run --workers 1` does.

The worker being measured gets a CPU of its own (`sched_setaffinity`: the
last CPU for the worker, the others for the endpoint and the master), in
both modes alike, as workers run on machines of their own in a real
distributed run: otherwise the master's requests.csv writes, which plain
Locust does not do, compete with the worker on a 2-core machine and the
per-worker rate measures the master too.  `--no-pin` turns this off.

Each round runs both (the order alternates), with a fresh master and worker
each, a 2 s warm-up, then --seconds of measurement.  Per mode it prints the
requests per second the server counted (one worker process: this is the
per-worker rate), the worker's CPU per request, and the master's.
Target (issue 14): msdb's rate >= 0.95 x plain's in the same round (its
hooks cost <= 5%).  The rate moves with whatever else the 2 cores do; the
worker's CPU per request, also compared per round, moves far less.  The summary gives the median and range of the
per-round ratios and the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from locust import FastHttpUser, constant, task  # noqa: E402  (patches with gevent)


class PingUser(FastHttpUser):
    """As many requests as one user can make: the worker's own cost dominates."""
    wait_time = constant(0)

    @task
    def ping(self):
        self.client.get("/", name="GET /")


# -- the endpoint ----------------------------------------------------------------------

_served = 0
_OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class _Endpoint(asyncio.Protocol):
    """HTTP/1.1 keep-alive by hand, on purpose: the endpoint must cost far less
    per request than the worker being measured, or the benchmark measures the
    endpoint (uvicorn's ASGI path, on the CPU it shares with the master,
    moved the figure from run to run).  It answers every request `ok`, and
    `GET /count` with how many it answered; requests have no body."""

    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        global _served
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            if head.startswith(b"GET /count "):
                body = str(_served).encode()
                out.append(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
                           + str(len(body)).encode() + b"\r\n\r\n" + body)
            else:
                _served += 1
                out.append(_OK)
        if out:
            self.t.write(b"".join(out))


def serve(port: int) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Endpoint, "127.0.0.1", port))
    try:
        loop.run_forever()
    finally:
        server.close()


def served(url: str) -> int:
    with urllib.request.urlopen(url + "/count", timeout=5) as r:
        return int(r.read())


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            served(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- one measurement ---------------------------------------------------------------------

def pin(pid: int, cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(pid, cpus)


def measure(mode: str, url: str, users: int, seconds: float, out_dir: Path,
            worker_cpus: set[int] | None = None, warmup_s: float = 2.0) -> dict:
    import gevent
    from locust.env import Environment
    from locust.event import Events

    from harness.run.locust_driver import WorkerSink, free_port
    from harness.run.rundir import RunDir
    from reports.rundata import REQUEST_COLUMNS
    from scenarios.workload import WorkloadContext

    env = Environment(user_classes=[PingUser], events=Events(), host=url, stop_timeout=2)
    port = free_port()
    runner = env.create_master_runner(master_bind_host="127.0.0.1", master_bind_port=port)
    table = sink = None
    if mode == "msdb":
        table = RunDir(out_dir).table("requests.csv", REQUEST_COLUMNS)

        def on_sample(r) -> None:      # execute.py's on_sample, minus the in-memory list
            table.row(r.time, r.name, r.method, r.status, r.response_ms, r.bytes, int(r.ok), r.error)
        sink = WorkerSink(env, WorkloadContext(), on_sample)
        argv = [sys.executable, "-m", "harness.run.worker", "--master-port", str(port),
                "--classes", "bench_loadgen:PingUser", "--parent", str(os.getpid())]
    else:
        argv = [sys.executable, "-m", "locust", "-f", str(Path(__file__).resolve()), "--worker",
                "--master-host", "127.0.0.1", "--master-port", str(port)]
    envvars = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    worker = subprocess.Popen(argv, env=envvars, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=open(out_dir / f"worker-{mode}.log", "w"))
    pin(worker.pid, worker_cpus)
    try:
        deadline = time.monotonic() + 30
        while runner.worker_count < 1 or (sink is not None and sink.ready() < 1):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{mode} worker did not connect (see {out_dir}/worker-{mode}.log)")
            gevent.sleep(0.05)
        runner.start(users, spawn_rate=users)
        gevent.sleep(warmup_s)
        n0, w0, m0, t0 = served(url), cpu_s(worker.pid), cpu_s(os.getpid()), time.monotonic()
        gevent.sleep(seconds)
        n1, w1, m1, t1 = served(url), cpu_s(worker.pid), cpu_s(os.getpid()), time.monotonic()
        runner.stop()
        n = n1 - n0
        return {"rps": n / (t1 - t0), "worker_cpu_us": (w1 - w0) / n * 1e6 if n else None,
                "master_cpu_us": (m1 - m0) / n * 1e6 if n else None,
                "rows": None if table is None else table.rows}
    finally:
        runner.quit()
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if table is not None:
            table.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=9,
                    help="rounds of both modes (default 9: three rounds moved the median by +-3%%)")
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--port", type=int, default=30710, help="the endpoint's port (default 30710)")
    ap.add_argument("--warmup", type=float, default=6.0,
                    help="seconds of load before each measurement (default 6: the msdb worker reaches its steady rate later than plain Locust)")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not give the measured worker a CPU of its own")
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    url = f"http://127.0.0.1:{args.port}"
    load0 = os.getloadavg()
    # The server process needs no gevent: Locust's import-time patching is skipped there.
    server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(args.port)],
                              env={**os.environ, "LOCUST_SKIP_MONKEY_PATCH": "1"})
    ratios: list[float] = []
    cpu: list[float] = []
    cpus = sorted(os.sched_getaffinity(0))
    worker_cpus = others = None
    if not args.no_pin and len(cpus) >= 2:
        worker_cpus, others = {cpus[-1]}, set(cpus[:-1])
        pin(os.getpid(), others)
        pin(server.pid, others)
    try:
        wait_http(url)
        print(f"endpoint {url}, one worker process, {args.users} users, {args.seconds:g} s per mode "
              f"and round; " + (f"worker on CPU {sorted(worker_cpus)}, endpoint and master on "
                                f"{sorted(others)}" if worker_cpus else "no CPU pinning"))
        print(f"{'round':<6} {'mode':<6} {'req/s':>8} {'worker CPU/req':>15} {'master CPU/req':>15}")
        for i in range(1, args.rounds + 1):
            order = ("plain", "msdb") if i % 2 else ("msdb", "plain")
            res = {}
            for mode in order:
                with tempfile.TemporaryDirectory(prefix="msdb-bench-loadgen-") as d:
                    res[mode] = m = measure(mode, url, args.users, args.seconds, Path(d),
                                            worker_cpus, args.warmup)
                print(f"{i:<6} {mode:<6} {m['rps']:>8.0f} {m['worker_cpu_us']:>12.0f} us "
                      f"{m['master_cpu_us']:>12.0f} us", flush=True)
            ratios.append(res["msdb"]["rps"] / res["plain"]["rps"])
            cpu.append(res["msdb"]["worker_cpu_us"] / res["plain"]["worker_cpu_us"])
            print(f"{i:<6} msdb/plain: req/s {ratios[-1]:.3f}, worker CPU per request {cpu[-1]:.3f}")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    load1 = os.getloadavg()
    print(f"\nmsdb/plain req/s per worker: median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}] over {len(ratios)} rounds (target >= 0.95)")
    print(f"msdb/plain worker CPU per request: median {statistics.median(cpu):.3f} "
          f"[{min(cpu):.3f}-{max(cpu):.3f}] (the hooks' cost where the CPU is the limit)")
    print(f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
