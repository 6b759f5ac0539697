"""A scenario run once per topology (noisy-neighbour): the seed's 推奨構成表
trade-off, measured.

Each topology gets a fresh stack of its own (state dir
`<state-dir>-<scenario>-<topology>`, each on a port block of its own from
--base-port, default 15800, so a developer's stack on 15400 is left alone) and one `msdb run <matrix_of>` into
`<run dir>/<topology>`.  The parent run directory is judged from its
children (harness.checks.matrix): a results.json whose checks mirror each
topology's, and a report with the comparison table.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from reports.summary import format_summary
from scenarios.registry import Scenario

from ..checks.core import exit_code
from ..checks.judge import judge
from ..errors import MsdbError
from ..stack.backend import fresh_stack
from ..stack.embedded import StackOptions
from ..stack.topology import PORT_BLOCK
from ..utc import utc_now
from .execute import RunParams, write_reports
from .rundir import RunDir

__all__ = ["run_matrix", "MATRIX_BASE_PORT"]

MATRIX_BASE_PORT = 15800     # 15800, 15870, 15940: clear of suite (15500) and drill (15700)
CHILD_TIMEOUT_S = 900


def run_matrix(p: RunParams, sc: Scenario, slo: dict, rd: RunDir, *, slo_path: str | None) -> int:
    run_info = {"scenario": sc.name, "parameters": dict(p.__dict__), "slo": slo,
                "topology": "+".join(sc.matrix), "matrix": list(sc.matrix), "children": {},
                "start": utc_now(), "end": None, "status": "running", "stack": {}}
    rd.write_json("run.json", run_info)
    # One port block per topology: a topology's stack stops in the background
    # while the next one starts (never while a load runs: joined first).
    stopping: list[threading.Thread] = []
    try:
        for i, topo in enumerate(sc.matrix):
            base_port = (p.base_port or MATRIX_BASE_PORT) + i * PORT_BLOCK
            state = Path(f"{p.state_dir}-{sc.name}-{topo}")
            out = rd.path / topo
            print(f"[{topo}] fresh stack on ports from {base_port} ...", flush=True)
            t0 = time.monotonic()
            try:
                with fresh_stack(StackOptions(state_dir=state, topology=topo, base_port=base_port),
                                 log=lambda *a: None, stopping=stopping):
                    for t in stopping:
                        t.join()
                    argv = [sys.executable, "-m", "harness.cli", "run", sc.matrix_of, "--state-dir",
                            str(state), "--out", str(out), "--duration", f"{p.duration_s}s"]
                    if slo_path:
                        argv += ["--slo", slo_path]
                    if not p.report:
                        argv += ["--no-report"]
                    r = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
                    (rd.path / f"{topo}.log").write_text(r.stdout + r.stderr)
                    run_info["children"][topo] = f"exit {r.returncode} in {time.monotonic() - t0:.0f} s"
            except (MsdbError, subprocess.TimeoutExpired) as e:
                run_info["children"][topo] = f"{type(e).__name__}: {e}"[-500:]
                print(f"[{topo}] not measured: {run_info['children'][topo]}", flush=True)
                continue
            res = (out / "results.json")
            if res.exists():
                m = judge(out, write=False)["metrics"]
                print(f"[{topo}] users p95 {m.get('baseline_p95_ms')} ms alone, "
                      f"{m.get('noisy_p95_ms')} ms with neighbours (x{m.get('p95_ratio')})", flush=True)
        run_info["status"] = "completed"
    except KeyboardInterrupt as e:
        run_info.update(status="interrupted", error=f"interrupted ({e or 'Ctrl-C'})")
        raise
    finally:
        for t in stopping:
            t.join()
        run_info["end"] = utc_now()
        rd.write_json("run.json", run_info)
        results = judge(rd.path)
        print(format_summary(rd.path))
        # "in Locust": the same probe inside the load generator, for comparison.
        print("\ntopology     users p95 alone  with neighbours  ratio  in Locust  neighbour orders/s")
        for r in results["metrics"].get("comparison", []):
            print(f"{r['topology']:<12} {str(r.get('baseline_p95_ms')):>15}  {str(r.get('noisy_p95_ms')):>15}  "
                  f"{str(r.get('p95_ratio')):>5}  {str(r.get('locust_probe_p95_ratio')):>9}  "
                  f"{str(r.get('neighbour_orders_per_s')):>18}")
        if p.report:
            write_reports(rd)
    return exit_code(results["verdict"])
