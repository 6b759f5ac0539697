"""`msdb suite NAME`: a matrix of scenarios, one after another, on a fresh stack.

Each scenario is its own `msdb run` process (its own Locust, its own heal),
with its run directory under the suite's --out.  The suite writes
`index.html`, `summary.pdf` and `junit.xml` (one testcase per check: a
failed check is a <failure>, an unknown one an <error>), and exits with the
worst verdict's code (PRODUCT.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from xml.etree import ElementTree as ET

from scenarios import registry

from ..checks.core import exit_code, worst
from ..errors import ConfigError, UsageError
from ..files import make_dir, read_yaml
from ..stack.backend import fresh_stack
from ..stack.embedded import StackOptions
from ..utc import stamp
from .progress import Snapshot, Ticker, clock

__all__ = ["run_suite", "write_junit", "load_suite", "SUITES_PATH"]

SUITES_PATH = Path(__file__).resolve().parent.parent.parent / "scenarios" / "suites.yaml"
ENTRY_KEYS = ("scenario", "duration", "users", "steps", "step_duration", "faults")


def load_suite(name: str, path: str | None = None) -> list[dict]:
    p = Path(path) if path else SUITES_PATH
    raw = read_yaml(p, "--suites")
    if not isinstance(raw, dict) or name not in raw:
        known = ", ".join(raw) if isinstance(raw, dict) else "none"
        raise UsageError(f"unknown suite {name!r} (known: {known})")
    entries = raw[name]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{p}: {name}: expected a non-empty list of scenarios")
    for i, e in enumerate(entries, start=1):
        if not isinstance(e, dict) or "scenario" not in e:
            raise ConfigError(f"{p}: {name}[{i}]: expected a mapping with a scenario")
        for k in e:
            if k not in ENTRY_KEYS:
                raise ConfigError(f"{p}: {name}[{i}].{k}: unknown key (known: {', '.join(ENTRY_KEYS)})")
        try:
            registry.get(e["scenario"])
        except registry.UnknownScenario as err:
            raise ConfigError(f"{p}: {name}[{i}].scenario: {err}") from None
    return entries


def check_target_suite(target: str, entries: list[dict]) -> None:
    """Before any run: every scenario of the suite can run against the targets
    file (exit 2 listing those that cannot, and the key each lacks)."""
    from ..stack.target import TargetBackend, missing_for
    backend = TargetBackend.open(target)
    try:
        info = backend.info()
        problems = []
        for e in entries:
            sc = registry.get(e["scenario"])
            if sc.matrix:
                problems.append(f"{sc.name}: compares topologies on fresh stacks of msdb's own")
                continue
            raw = list(sc.faults)
            if "faults" in e:
                raw = read_yaml(e["faults"], f"{e['scenario']} faults")
                raw = raw.get("faults", raw) if isinstance(raw, dict) else raw
            why = missing_for(info, raw if isinstance(raw, list) else [], sc.stack_needs(),
                              sc.service_env)
            if why:
                problems.append(f"{sc.name}: {why}")
    finally:
        backend.down()
    if problems:
        raise ConfigError(f"--target {target!r}: {len(problems)} scenario(s) of this suite cannot run "
                          f"against it (give --suites FILE with the ones it can):\n  "
                          + "\n  ".join(problems))


def _argv(entry: dict) -> list[str]:
    out = []
    for key, flag in (("duration", "--duration"), ("users", "--users"), ("steps", "--steps"),
                      ("step_duration", "--step-duration"), ("faults", "--faults")):
        if key in entry:
            out += [flag, str(entry[key])]
    return out


def write_junit(path: Path, suite: str, runs: list[tuple[str, Path, dict | None, float]]) -> None:
    root = ET.Element("testsuites", name=f"msdb {suite}")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for label, run_dir, results, seconds in runs:
        ts = ET.SubElement(root, "testsuite", name=label, time=f"{seconds:.1f}")
        counts = {"tests": 0, "failures": 0, "errors": 0}
        checks = (results or {}).get("checks") or [
            {"name": "run-completed", "verdict": "unknown", "measured": None, "threshold": None,
             "details": {"reason": "the run wrote no results.json"}}]
        for c in checks:
            counts["tests"] += 1
            tc = ET.SubElement(ts, "testcase", classname=label, name=c["name"])
            msg = f"measured {c['measured']!r}, threshold {c['threshold']!r}"
            detail = json.dumps(c.get("details", {}), default=str)[:4000]
            if c["verdict"] == "fail":
                counts["failures"] += 1
                ET.SubElement(tc, "failure", message=msg).text = detail
            elif c["verdict"] == "unknown":
                counts["errors"] += 1
                ET.SubElement(tc, "error", message=f"verdict unknown: {msg}").text = detail
            ET.SubElement(tc, "system-out").text = f"report: {run_dir / 'report.html'}"
        for k, v in counts.items():
            ts.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def run_suite(args) -> int:
    entries = load_suite(args.suite, args.suites)
    if args.quick and args.suite == "nightly":
        entries = load_suite("quick", args.suites)
    if args.target:
        check_target_suite(args.target, entries)
    title = f"msdb suite {args.suite}{' (quick)' if args.quick else ''}"
    out = Path(args.out or f"runs/suite-{args.suite}{'-quick' if args.quick else ''}-{stamp()}")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {str(out)!r} exists and is not empty")
    make_dir(out, "--out")
    cli = [sys.executable, "-m", "harness.cli"]
    if args.target:
        state = ["--target", args.target]
        where = f"the deployment of {args.target}"
    else:
        state = ["--state-dir", args.state_dir]
        where = f"fresh stack in {args.state_dir}"
    print(f"{title}: {len(entries)} scenarios, {where}, results in {out}", flush=True)
    runs = []
    t_suite = time.monotonic()
    opts = StackOptions(state_dir=Path(args.state_dir), topology=args.topology, base_port=args.base_port)
    now = {"label": f"suite {args.suite}", "t0": time.monotonic()}
    # The children's output goes to their logs: the suite shows its own
    # progress (which scenario, for how long), and the children run --quiet.
    ticker = Ticker(lambda: Snapshot(label=now["label"], elapsed_s=time.monotonic() - now["t0"],
                                     phase=f"suite {clock(time.monotonic() - t_suite)}"),
                    quiet=getattr(args, "quiet", False))
    with (nullcontext() if args.target else fresh_stack(opts, keep=args.keep_stack)), ticker:
        for i, e in enumerate(entries, start=1):
            label = f"{i:02d}-{e['scenario']}"
            run_dir = out / label
            t0 = time.monotonic()
            argv = [*cli, "run", e["scenario"], *state, "--out", str(run_dir), "--quiet", *_argv(e)]
            if args.slo:
                argv += ["--slo", args.slo]
            print(f"[{i}/{len(entries)}] {e['scenario']} ...", flush=True)
            now.update(label=f"[{i}/{len(entries)}] {e['scenario']}", t0=t0)
            r = subprocess.run(argv, capture_output=True, text=True)
            (out / f"{label}.log").write_text(r.stdout + r.stderr)
            results = None
            if (run_dir / "results.json").exists():
                results = json.loads((run_dir / "results.json").read_text())
            verdict = results["verdict"] if results else "unknown"
            print(f"      {verdict.upper()} in {time.monotonic() - t0:.0f} s  (exit {r.returncode})",
                  flush=True)
            runs.append((label, run_dir, results, time.monotonic() - t0))
            if r.returncode == 2:      # a usage error will repeat for every scenario
                print(r.stderr, file=sys.stderr)
                break
    write_junit(out / "junit.xml", args.suite, runs)
    from reports.build import build_index     # seconds of imports: not before the suite is known
    from reports.output import write_pdf
    index = build_index(out, title=title)
    try:
        write_pdf(index.read_text(), out / "summary.pdf", base_url=out)
    except Exception as e:  # the PDF is a convenience; the verdicts are in junit.xml
        print(f"warning: summary.pdf not written: {e}", file=sys.stderr)
    verdict = worst([r[2]["verdict"] if r[2] else "unknown" for r in runs])
    print(f"\nsuite {args.suite}: {verdict.upper()} in {time.monotonic() - t_suite:.0f} s — "
          f"{out / 'index.html'}, {out / 'junit.xml'}")
    return exit_code(verdict)
