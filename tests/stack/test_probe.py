"""noisy-neighbour's latency probe (harness/run/probe.py) as the process a run
starts: it writes probe.csv as requests.csv is written, stops on SIGTERM,
and stops by itself once its parent run is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from harness.checks.capacity import PROBE
from reports.rundata import Run
from scenarios.seed import seed

pytestmark = pytest.mark.slow


def start(state_dir, out, parent: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.run.probe", "--state-dir", str(state_dir),
                             "--out", str(out), "--parent", str(parent)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_the_probe_process_reads_each_users_own_record_and_stops_on_sigterm(urls, state_dir, tmp_path):
    seed(urls, users=5, products=1)
    proc = start(state_dir, tmp_path, os.getpid())
    try:
        csv_file, deadline = tmp_path / "probe.csv", time.monotonic() + 20
        while time.monotonic() < deadline and (
                not csv_file.exists() or len(csv_file.read_text().splitlines()) < 31):
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr.read()
    (tmp_path / "run.json").write_text("{}")   # probe.csv is read as part of a run directory
    rows = Run(tmp_path).probe
    assert len(rows) >= 30
    assert {r.name for r in rows} == {PROBE}
    assert all(r.ok and r.status == 200 and r.response_ms > 0 for r in rows), rows[:3]
    # five clients, 50-150 ms apart: about 10 reads a second each
    span = rows[-1].time - rows[0].time
    assert len(rows) / max(span, 0.1) < 5 * 1 / 0.05 + 5


def test_the_probe_process_stops_by_itself_when_its_parent_is_gone(urls, state_dir, tmp_path):
    seed(urls, users=5, products=1)
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    proc = start(state_dir, tmp_path, parent.pid)
    try:
        parent.wait(10)
        assert proc.wait(15) == 0, proc.stderr.read()
        assert "parent" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
