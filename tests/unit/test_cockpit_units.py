"""The cockpit's pure parts: the error body, the live tables, the fault kinds
the panel offers, and how a nemesis notices that the Locust process that
started it has died (also while nobody has reaped it yet)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chaos.faults import NETWORK_KINDS, PROCESS_KINDS
from harness.cockpit.desk import fault_kinds
from harness.cockpit.errors import ApiError
from harness.cockpit.live import LatestTable
from harness.run.nemesis import parent_gone
from harness.run.rundir import CsvTable

REPO = Path(__file__).resolve().parents[2]


def test_an_api_error_names_its_field():
    e = ApiError(400, "latency", "expected an integer >= 0, got -1")
    assert e.body() == {"error": "bad-request", "field": "latency", "message": "expected an integer >= 0, got -1"}
    assert ApiError(409, "state", "x").body()["error"] == "conflict"


def test_the_panel_offers_every_fault_kind_with_its_parameters():
    kinds = fault_kinds()
    assert set(kinds["network"]) == set(NETWORK_KINDS) and set(kinds["process"]) == set(PROCESS_KINDS)
    assert kinds["network"]["latency"] == ["latency", "jitter"] and kinds["network"]["down"] == []
    assert kinds["network"]["bandwidth"] == ["rate"] and kinds["network"]["reset_peer"] == ["timeout"]


def test_a_latest_table_keeps_the_newest_row_per_key_and_writes_every_row(tmp_path):
    t = LatestTable(["time", "service", "metric", "labels", "value"], 3)
    t.row(1.0, "orders", "psycopg_pool_pool_size", "pool=primary", 5)
    sink = CsvTable(tmp_path / "metrics.csv", t.columns)
    t.sink = sink
    t.row(2.0, "orders", "psycopg_pool_pool_size", "pool=primary", 7)
    t.row(2.0, "orders", "psycopg_pool_pool_size", "pool=replica", 5)
    t.sink = None
    t.row(3.0, "users", "up", "", 1)
    sink.close()
    assert sorted((r["labels"], r["value"]) for r in t.rows() if r["service"] == "orders") == \
        [("pool=primary", 7), ("pool=replica", 5)]
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "time,service,metric,labels,value", "2.0,orders,psycopg_pool_pool_size,pool=primary,7",
        "2.0,orders,psycopg_pool_pool_size,pool=replica,5"]


def test_a_dead_parent_is_gone_even_as_an_unreaped_zombie():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert not parent_gone(child.pid, os.getppid())
        child.kill()
        deadline = time.monotonic() + 5
        while not parent_gone(child.pid, os.getppid()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert Path(f"/proc/{child.pid}").exists()      # a zombie: not reaped yet
        assert parent_gone(child.pid, os.getppid())
    finally:
        child.kill()
        child.wait()
    assert parent_gone(child.pid, os.getppid())


GRANDCHILD = """
import os, sys, time
from harness.run.nemesis import parent_gone
parent = os.getppid()
print("watching", flush=True)
deadline = time.monotonic() + 20
while not parent_gone(parent, parent) and time.monotonic() < deadline:
    time.sleep(0.05)
print("gone" if parent_gone(parent, parent) else "still there", flush=True)
"""


def test_a_nemesis_sees_its_parent_die_at_once(tmp_path):
    """Its parent SIGKILLed and left unreaped (a zombie, as a Locust killed under a
    shell that has not waited yet): the child is given to another parent at once."""
    out = tmp_path / "grandchild.out"
    middle = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         f"subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}], stdout=open({str(out)!r}, 'w')); "
         "time.sleep(60)"], cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while "watching" not in (out.read_text() if out.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "watching" in out.read_text()
        os.kill(middle.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while "gone" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Path(f"/proc/{middle.pid}").exists()    # still a zombie: we have not reaped it
        assert out.read_text().split() == ["watching", "gone"]
    finally:
        middle.kill()
        middle.wait()
