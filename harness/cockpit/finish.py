"""`python -m harness.cockpit.finish RUN_DIR`: judge a UI test's run directory
and build its report, in a process of its own (see harness/cockpit/uirun.py).

Exit codes as `msdb check`: 0 pass, 1 a check failed, 3 no verdict.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..run.rundir import RunDir

__all__ = ["finish", "main"]


def finish(run_dir: Path) -> dict:
    """results.json (a verdict that could not be reached is `unknown`, never a
    pass), then report.html and report.pdf."""
    from ..checks.judge import judge
    from ..run.execute import write_reports   # imports Locust: main() patched first
    rd = RunDir(Path(run_dir))
    try:
        results = judge(rd.path)
    except Exception as e:  # as `msdb run` does: say why, never pass
        results = {"scenario": rd.read_json("run.json")["scenario"], "verdict": "unknown",
                   "checks": [{"name": "judged", "verdict": "unknown", "measured": None, "threshold": None,
                               "details": {"error": f"{type(e).__name__}: {e}"}}], "metrics": {}}
        rd.write_json("results.json", results)
    print(f"verdict: {results['verdict']}", flush=True)
    write_reports(rd)
    return results


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.cockpit.finish RUN_DIR", file=sys.stderr)
        return 2
    # execute.py imports Locust, which needs gevent's patches before ssl is imported (as cli.main)
    from gevent import monkey
    monkey.patch_all()
    from ..checks.core import exit_code
    return exit_code(finish(Path(args[0]))["verdict"])


if __name__ == "__main__":
    sys.exit(main())
