"""`msdb suite NAME`: a matrix of scenarios, one after another, on a fresh stack.

Each scenario is its own `msdb run` process (its own Locust, its own heal),
with its run directory under the suite's --out.  The suite writes
`index.html`, `summary.pdf` and `junit.xml` (one testcase per check: a
failed check is a <failure>, an unknown one an <error>), and exits with the
worst verdict's code (PRODUCT.md).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, nullcontext
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


REPORT_PROCESSES = 2


def _report_job(run_dir: Path) -> list[str] | None:
    """`msdb report` arguments for one finished run (a matrix run's
    per-topology runs and their index with it), or None if it has its report
    already (a scenario whose checks read it writes it itself)."""
    if not (run_dir / "run.json").exists() or (run_dir / "report.html").exists():
        return None
    subs = sorted(c for c in run_dir.iterdir() if c.is_dir() and (c / "run.json").exists())
    return [str(c) for c in subs] + [str(run_dir)] + (["--index", str(run_dir)] if subs else [])


class BackgroundReports:
    """report.html and report.pdf of each finished run, written while the next
    runs, one at a time, by a `msdb report` process at SCHED_IDLE: it gets a
    core only when the system under test leaves one idle, and the kernel
    preempts it as soon as a process of the stack or the load wakes up, so
    the measurements of the run going on are not taken from.  What is left
    when the last run ends is finished at normal priority, REPORT_PROCESSES
    at once, with the stack stopping beside it.  (Drawing each report right
    after its run, as `msdb run` does, cost the nightly suite ~6 s a run.)"""

    def __init__(self, cli: list[str]):
        self._cli = [*cli, "report"]
        self._todo: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._current: subprocess.Popen | None = None
        self._finishing: list[subprocess.Popen] = []
        self._closed = False
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._work, name="suite-reports", daemon=True)
        self._thread.start()

    def add(self, run_dir: Path) -> None:
        job = _report_job(run_dir)
        if job:
            self._todo.put(job)

    def _run(self, job: list[str], *, idle: bool) -> subprocess.Popen:
        pr = subprocess.Popen([*self._cli, *job], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if idle:
            try:
                os.sched_setscheduler(pr.pid, os.SCHED_IDLE, os.sched_param(0))
            except OSError:     # no SCHED_IDLE here: the lowest nice value instead
                os.setpriority(os.PRIO_PROCESS, pr.pid, 19)
        return pr

    def _reap(self, pr: subprocess.Popen, job: list[str]) -> None:
        _, err = pr.communicate()
        if pr.returncode != 0:
            self.failures.append(f"{' '.join(job)}: exit {pr.returncode}: {err.strip()[-600:]}")

    def _drain(self) -> list[list[str]]:
        out = []
        while True:
            try:
                job = self._todo.get_nowait()
            except queue.Empty:
                return out
            if job is not None:
                out.append(job)

    def _work(self) -> None:
        while True:
            job = self._todo.get()
            with self._lock:
                if job is None:
                    return
                if self._closed:        # taken as finish() closed: back for finish() to write
                    self._todo.put(job)
                    return
                self._current = pr = self._run(job, idle=True)
            self._reap(pr, job)
            with self._lock:
                self._current = None

    def finish(self, beside=None) -> float:
        """Write what is left (the one being written now back at normal
        priority, the rest REPORT_PROCESSES at a time) while `beside()` runs
        (the stack's stop); the seconds it took."""
        t0 = time.monotonic()
        with self._lock:
            self._closed = True
            if self._current is not None:
                try:
                    os.sched_setscheduler(self._current.pid, os.SCHED_OTHER, os.sched_param(0))
                except OSError:
                    pass
        left = self._drain()
        self._todo.put(None)
        shares = [[a for job in left[i::REPORT_PROCESSES] for a in job] for i in range(REPORT_PROCESSES)]
        procs = [(self._run(sh, idle=False), sh) for sh in shares if sh]
        self._finishing = [pr for pr, _ in procs]
        try:
            if beside is not None:
                beside()
        finally:
            for pr, job in procs:
                self._reap(pr, job)
            self._thread.join()
        # a job the worker had taken just as this closed it, put back
        for job in self._drain():
            pr = self._run(job, idle=False)
            self._finishing = [pr]
            self._reap(pr, job)
        return time.monotonic() - t0

    def kill(self) -> None:
        """Ctrl-C or an error: stop the report being written, drop the rest."""
        with self._lock:
            self._closed = True
            for pr in [self._current, *self._finishing]:
                if pr is not None and pr.poll() is None:
                    pr.kill()
                    pr.wait()
        self._todo.put(None)


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
    reports = BackgroundReports(cli)
    try:
        with ExitStack() as held:
            held.enter_context(nullcontext() if args.target else fresh_stack(opts, keep=args.keep_stack))
            held.enter_context(ticker)
            _run_entries(entries, cli, state, out, args, runs, now, reports)
            now.update(label="reports", t0=time.monotonic())
            # the reports not yet written, while the stack stops
            took = reports.finish(beside=held.close)
    except BaseException:
        reports.kill()
        raise
    if not getattr(args, "quiet", False):
        print(f"reports written; {took:.0f} s after the last run (the stack stopping beside them)",
              flush=True)
    for f in reports.failures:
        print(f"warning: a report was not written: {f}; retry with `msdb report RUN_DIR`",
              file=sys.stderr)
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


def _run_entries(entries, cli, state, out, args, runs, now, reports) -> None:
    """Each scenario as its own `msdb run`, one after another."""
    for i, e in enumerate(entries, start=1):
        label = f"{i:02d}-{e['scenario']}"
        run_dir = out / label
        t0 = time.monotonic()
        argv = [*cli, "run", e["scenario"], *state, "--out", str(run_dir), "--quiet", *_argv(e)]
        if not registry.get(e["scenario"]).judge_reports:
            argv += ["--no-report"]     # BackgroundReports writes it
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
        reports.add(run_dir)
        if r.returncode == 2:      # a usage error will repeat for every scenario
            print(r.stderr, file=sys.stderr)
            break
