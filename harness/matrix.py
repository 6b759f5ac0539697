"""A scenario run once per topology (noisy-neighbour): the seed's 推奨構成表
trade-off, measured.

Each topology gets its own fresh stack (state dir `<state-dir>-<scenario>-<topology>`,
on --base-port, default 15600 so a developer's stack on 15400 is left alone),
one `msdb run <one-scenario>` into `<run dir>/<topology>`, then the stack is
purged.  The parent run directory holds `comparison.json`, a results.json
whose checks mirror each topology's, and a report with the comparison table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from . import checks as C
from .rundir import RunDir, utc_now

__all__ = ["run_matrix", "MATRIX_BASE_PORT"]

MATRIX_BASE_PORT = 15600


def _msdb(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True,
                          text=True, timeout=timeout)


def run_matrix(p, sc, slo: dict, rd: RunDir, args) -> int:
    from reports.summary import format_summary
    run_info = {"scenario": sc.name, "parameters": dict(p.__dict__), "slo": slo,
                "topology": "+".join(sc.extra["matrix"]), "matrix": sc.extra["matrix"],
                "start": utc_now(), "end": None, "status": "running", "versions": {}, "machine": {},
                "stack": {}}
    rd.write_json("run.json", run_info)
    base_port = str(p.base_port or MATRIX_BASE_PORT)
    rows, checks = [], []
    try:
        for topo in sc.extra["matrix"]:
            state = f"{p.state_dir}-{sc.name}-{topo}"
            out = rd.path / topo
            print(f"[{topo}] fresh stack on ports from {base_port} ...", flush=True)
            _msdb("down", "--state-dir", state, "--purge")
            t0 = time.monotonic()
            up = _msdb("up", "--state-dir", state, "--topology", topo, "--base-port", base_port)
            if up.returncode != 0:
                checks.append(C.Check(f"measured[{topo}]", "unknown", None, None,
                                      {"reason": f"the {topo} stack would not start: {up.stderr[-500:]}"}))
                rows.append({"topology": topo, "verdict": "unknown"})
                continue
            try:
                argv = ["run", sc.extra["one"], "--state-dir", state, "--out", str(out),
                        "--duration", f"{p.duration_s}s"]
                if args.slo:
                    argv += ["--slo", args.slo]
                r = _msdb(*argv)
                (rd.path / f"{topo}.log").write_text(r.stdout + r.stderr)
            finally:
                _msdb("down", "--state-dir", state, "--purge")
            res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
            if res is None:
                checks.append(C.Check(f"measured[{topo}]", "unknown", None, None,
                                      {"reason": f"no results (exit {r.returncode}); see {topo}.log"}))
                rows.append({"topology": topo, "verdict": "unknown"})
                continue
            m = res.get("metrics", {})
            rows.append({"topology": topo, "verdict": res["verdict"], "report": f"{topo}/report.html",
                         "baseline_p50_ms": m.get("baseline_p50_ms"), "noisy_p50_ms": m.get("noisy_p50_ms"),
                         "baseline_p95_ms": m.get("baseline_p95_ms"), "noisy_p95_ms": m.get("noisy_p95_ms"),
                         "p95_ratio": m.get("p95_ratio"),
                         "neighbour_orders_per_s": m.get("neighbour_orders_per_s"),
                         "seconds": round(time.monotonic() - t0, 1)})
            for c in res["checks"]:
                checks.append(C.Check(f"{c['name']}[{topo}]", c["verdict"], c["measured"], c["threshold"],
                                      c.get("details", {})))
            print(f"[{topo}] {res['verdict'].upper()}: users p95 {m.get('baseline_p95_ms')} ms alone, "
                  f"{m.get('noisy_p95_ms')} ms with neighbours (x{m.get('p95_ratio')})", flush=True)
        run_info["status"] = "completed"
    except KeyboardInterrupt as e:
        run_info["status"] = "interrupted"
        checks.append(C.Check("run-completed", "unknown", None, None, {"reason": f"interrupted ({e})"}))
        raise
    finally:
        rd.write_json("comparison.json", rows)
        run_info["end"] = utc_now()
        rd.write_json("run.json", run_info)
        rd.write_json("results.json", C.results_doc(sc.name, checks, {"comparison": rows}))
    print(format_summary(rd.path))
    print("\ntopology     users p95 alone  with neighbours  ratio  neighbour orders/s")
    for r in rows:
        print(f"{r['topology']:<12} {str(r.get('baseline_p95_ms')):>15}  {str(r.get('noisy_p95_ms')):>15}  "
              f"{str(r.get('p95_ratio')):>5}  {str(r.get('neighbour_orders_per_s')):>18}")
    from .run import _write_report
    _write_report(rd)
    return C.exit_code(C.worst(c.verdict for c in checks))
