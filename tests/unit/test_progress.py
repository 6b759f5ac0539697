"""The live progress line: a pure rendering, the TTY/plain/quiet modes, and
what a run's snapshot reads (samples, faults.jsonl, the user count)."""

from __future__ import annotations

import io
import json
import os
import sys
import time

from harness.run.progress import INTERVAL_S, RunProgress, Snapshot, Ticker, mode_for, render
from reports.rundata import Request

FULL = Snapshot(label="saga", elapsed_s=75, total_s=120, users=20, rps=153.27, p95_ms=41.26, errors=3,
                faults=("latency orders-payments", "reset_peer orders-catalog", "kill orders"))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_render_shows_every_field():
    line = render(FULL)
    assert line == ("saga | 1:15/2:00 | 20 users | 153 req/s | p95 41.3 ms | 3 err | faults: "
                    "latency orders-payments, reset_peer orders-catalog, kill orders")


def test_render_leaves_out_what_is_unknown_and_shows_a_phase():
    line = render(Snapshot(label="drill restore", elapsed_s=3725, phase="restoring base backup"))
    assert line == "drill restore | 1:02:05 | restoring base backup"
    # Active faults win over a phase: the run's faults are what the line is for.
    assert render(Snapshot(label="x", elapsed_s=0, faults=("down catalog-db",), phase="p")).endswith(
        "faults: down catalog-db")


def test_render_fits_80_columns_without_touching_the_last_one():
    line = render(FULL, width=80)
    assert len(line) == 79 and line.endswith("…")
    assert line.startswith("saga | 1:15/2:00 | 20 users | 153 req/s | p95 41.3 ms | 3 err | faults: ")
    short = Snapshot(label="smoke", elapsed_s=5, total_s=30, users=2)
    assert render(short, width=80) == render(short)        # nothing cut when it fits
    assert len(render(FULL, width=20)) == 19


def test_modes_tty_plain_quiet():
    assert mode_for(_Tty(), quiet=False) == "tty"
    assert mode_for(io.StringIO(), quiet=False) == "plain"
    assert mode_for(_Tty(), quiet=True) == "off" and mode_for(io.StringIO(), quiet=True) == "off"
    assert INTERVAL_S == {"tty": 1.0, "plain": 10.0}


def test_tty_redraws_one_line_and_clears_it_at_the_end(monkeypatch):
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=None: os.terminal_size((80, 24)))
    out = _Tty()
    t = Ticker(lambda: FULL, stream=out)
    t.draw()
    t.draw()
    t.stop()
    text = out.getvalue()
    assert "\n" not in text
    frames = [f for f in text.split("\r\x1b[K") if f]
    assert len(frames) == 2 and all(len(f) <= 79 for f in frames)


def test_plain_prints_whole_lines_and_quiet_prints_nothing():
    out = io.StringIO()
    Ticker(lambda: FULL, stream=out).draw()
    assert out.getvalue() == render(FULL) + "\n"
    quiet = _Tty()
    t = Ticker(lambda: FULL, stream=quiet, quiet=True)
    with t:
        pass
    assert t.mode == "off" and quiet.getvalue() == ""


def test_ticker_thread_draws_and_other_output_clears_the_line(monkeypatch):
    monkeypatch.setitem(INTERVAL_S, "tty", 0.01)
    out = _Tty()
    monkeypatch.setattr(sys, "stdout", out)
    with Ticker(lambda: Snapshot(label="suite", elapsed_s=1)) as t:
        time.sleep(0.1)
        print("[2/3] db-latency ...")
        assert t.last_line == "[2/3] db-latency ..."
        time.sleep(0.1)
    assert sys.stdout is out
    text = out.getvalue()
    assert "\r\x1b[K[2/3] db-latency ...\n" in text    # the progress line was cleared first
    assert text.endswith("\r\x1b[K")


def test_run_progress_reads_samples_faults_and_users(tmp_path):
    now = [1000.0]
    samples: list[Request] = []
    faults = tmp_path / "faults.jsonl"
    rec = {"name": "f1", "kind": "latency", "target": "orders-db", "params": {}, "scheduled_at_s": 1,
           "scheduled_for_s": 5, "start": "x", "end": None, "status": "active", "error": None}
    faults.write_text(json.dumps(rec) + "\n")
    prog = RunProgress("db-latency", samples, total_s=60, faults_path=faults, users=lambda: 7,
                       clock=lambda: now[0])
    for i in range(100):
        samples.append(Request(1000.0 + i / 100, "n", "GET", 200 if i % 10 else 500, float(i), 1,
                               bool(i % 10), ""))
    now[0] = 1002.0
    s = prog()
    assert (s.users, s.errors, s.rps, s.faults) == (7, 10, 50.0, ("latency orders-db",))
    assert s.p95_ms == 94.0 and s.elapsed_s == 2.0 and s.total_s == 60
    # The fault healed (the journal's last line per fault is final); old samples leave the p95 window.
    faults.write_text(faults.read_text() + json.dumps({**rec, "status": "healed", "end": "y"}) + "\n")
    now[0] = 1020.0
    s = prog()
    assert s.faults == () and s.p95_ms is None and s.errors == 10
