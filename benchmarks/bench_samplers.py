"""The samplers' own CPU cost: what a run spends watching itself.

    python benchmarks/bench_samplers.py [--seconds 30]

Starts a fresh stack, then runs the run's samplers (services' /metrics,
PostgreSQL + Redis, parts' health, all at 1 Hz) alone in this process for
--seconds, and divides the process's CPU time by the wall time.
Target: under 2% of a core.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.run.rundir import RunDir  # noqa: E402
from harness.run.samplers import (HEALTH_COLUMNS, METRICS_COLUMNS, PG_COLUMNS, REDIS_COLUMNS,  # noqa: E402
                                  HealthSampler, MetricsSampler, StoreSampler)
from harness.stack.backend import fresh_stack  # noqa: E402
from harness.stack.embedded import StackOptions  # noqa: E402
from harness.stack.status import StatusProbe  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--base-port", default="30600")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="msdb-bench-samplers-"))
    out = Path(tempfile.mkdtemp(prefix="msdb-bench-samplers-run-"))
    try:
        with fresh_stack(StackOptions(state_dir=state, base_port=int(args.base_port)),
                         log=lambda *a: None) as backend:
            info = backend.info()
            rd = RunDir(out)
            probe = StatusProbe()
            tables = {n: rd.table(f"{n}.csv", c) for n, c in (("metrics", METRICS_COLUMNS),
                      ("health", HEALTH_COLUMNS), ("postgres", PG_COLUMNS), ("redis", REDIS_COLUMNS))}
            parts = {
                "services' /metrics": MetricsSampler(info.urls, tables["metrics"]),
                "postgres + redis": StoreSampler(info, tables["postgres"], tables["redis"]),
                "health of every part": HealthSampler(lambda: backend.status(probe), tables["health"]),
            }
            print(f"{'sampler':<22} {'CPU % of a core':>16}")
            total = 0.0
            for name, s in parts.items():
                s.sample_once()                      # warm up connections
                c0, t0 = cpu(), time.monotonic()
                s.start()
                time.sleep(args.seconds)
                s.stop()
                share = (cpu() - c0) / (time.monotonic() - t0) * 100
                total += share
                print(f"{name:<22} {share:>15.2f}%")
            print(f"{'all together':<22} {total:>15.2f}%   (target < 2%)")
        return 0
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
