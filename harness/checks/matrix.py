"""Checks of a matrix run (noisy-neighbour): one child run per topology, each
judged on its own first (harness.checks.judge); here every child's checks are
mirrored with the topology in their name, and the comparison table is built."""

from __future__ import annotations

from dataclasses import dataclass

from reports.rundata import Run

from .core import Check

__all__ = ["MatrixChecks", "COMPARED"]

COMPARED = ("baseline_p50_ms", "noisy_p50_ms", "baseline_p95_ms", "noisy_p95_ms", "p95_ratio",
            "locust_probe_p95_ratio", "neighbour_orders_per_s")


@dataclass(frozen=True)
class MatrixChecks:
    keys = ()

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        checks, rows = [], []
        for topo in run.info.get("matrix") or []:
            child = run.path / topo
            res = run.children.get(topo) or (Run(child).results if (child / "run.json").exists() else None)
            if res is None:
                why = (run.info.get("children") or {}).get(topo) or "no results.json"
                checks.append(Check(f"measured[{topo}]", "unknown", None, None,
                                    {"reason": f"the {topo} run was not judged: {why}"}))
                rows.append({"topology": topo, "verdict": "unknown"})
                continue
            m = res.get("metrics", {})
            rows.append({"topology": topo, "verdict": res["verdict"], "report": f"{topo}/report.html",
                         **{k: m.get(k) for k in COMPARED}})
            for c in res["checks"]:
                checks.append(Check(f"{c['name']}[{topo}]", c["verdict"], c["measured"], c["threshold"],
                                    c.get("details", {})))
        return checks, {"comparison": rows}
