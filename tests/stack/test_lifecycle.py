"""Whole-stack lifecycles on the other topologies: foreground + Ctrl-C, up/status/down,
and that nothing outlives `msdb down`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fix_cli import MSDB, msdb
from fix_stack import TEST_BASE_PORT, wait_no_leftovers
from harness.stack.info import StackInfo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def purged(tmp_path):
    """A state dir whose data (also under /var/lib/msdb as root) is purged whatever happens."""
    state = tmp_path / "state"
    yield state
    msdb("down", "--state-dir", str(state), "--purge")


def test_dedicated_topology_up_status_isolation_down(tmp_path, purged):
    state = str(purged)
    base = str(TEST_BASE_PORT + 100)
    r = msdb("up", "--topology", "dedicated", "--base-port", base, "--state-dir", state)
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        info = StackInfo.load(tmp_path / "state")
        assert len(info.primaries) == 5
        assert len({info.part(i.name).endpoint for i in info.primaries}) == 5
        st = msdb("status", "--state-dir", state)
        assert st.returncode == 0, st.stdout + st.stderr
        assert "streaming" in st.stdout
        # The orders role does not exist on the users instance at all.
        mine = conninfo_to_dict(info.databases["orders"].dsn)
        other = conninfo_to_dict(info.databases["users"].dsn)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(make_conninfo(host=other["host"], port=other["port"], dbname=other["dbname"],
                                          user=mine["user"], password=mine["password"]))
        again = msdb("up", "--topology", "dedicated", "--base-port", base, "--state-dir", state)
        assert again.returncode == 0 and "already running" in again.stdout
        clash = msdb("up", "--topology", "single", "--base-port", base, "--state-dir", state)
        assert clash.returncode == 2 and "msdb down" in clash.stderr
    finally:
        d = msdb("down", "--state-dir", state)
    assert d.returncode == 0, d.stderr
    assert not wait_no_leftovers(info)
    st = msdb("status", "--state-dir", state)
    assert st.returncode == 3
    # A killed part makes status fail, and `up` repairs the stack on the same data.
    r = msdb("up", "--topology", "dedicated", "--base-port", base, "--state-dir", state)
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        info = StackInfo.load(tmp_path / "state")
        victim = info.part("payments").proc["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (st := msdb("status", "--state-dir", state)).returncode == 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert st.returncode == 1 and "payments" in st.stderr
        fix = msdb("up", "--topology", "dedicated", "--base-port", base, "--state-dir", state)
        assert fix.returncode == 0, fix.stderr[-3000:]
        assert msdb("status", "--state-dir", state).returncode == 0
        info = StackInfo.load(tmp_path / "state")
    finally:
        msdb("down", "--state-dir", state, "--purge")
    assert not wait_no_leftovers(info)
    assert not (tmp_path / "state").exists()


def test_grouped_foreground_stops_cleanly_on_ctrl_c(purged):
    state = purged
    proc = subprocess.Popen([*MSDB, "up", "--foreground",
                             "--topology", "grouped", "--base-port", str(TEST_BASE_PORT + 200),
                             "--state-dir", str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    info = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                info = StackInfo.load(state)
                if info.state == "running":
                    break
            except Exception:  # not written yet, or half-way
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        assert info and info.state == "running"
        assert [i.name for i in info.primaries] == ["pg-core", "pg-transactions", "pg-reference"]
        assert info.replica.primary == "pg-transactions"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopping the stack" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            msdb("down", "--state-dir", str(state))
    assert not wait_no_leftovers(info)
    assert not (state / "stack.json").exists()


def test_sigterm_mid_run_leaves_an_unknown_verdict_and_no_processes(purged, tmp_path):
    """A run that starts its own stack and is killed (CI timeout) cleans up after itself."""
    out = tmp_path / "run"
    proc = subprocess.Popen([*MSDB, "run", "smoke", "--duration", "120s",
                             "--users", "3", "--state-dir", str(purged), "--base-port",
                             str(TEST_BASE_PORT + 300), "--out", str(out), "--seed-users", "5",
                             "--seed-products", "10"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    info = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "requests.csv").exists() and (out / "requests.csv").stat().st_size > 200:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        info = StackInfo.load(purged)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, output[-2000:]    # 128 + SIGTERM, as shells report it
    results = json.loads((out / "results.json").read_text())
    assert results["verdict"] == "unknown"
    assert "SIGTERM" in results["checks"][0]["details"]["reason"]
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert (out / "report.html").exists()          # what was measured is still reported
    assert not (purged / "stack.json").exists()
    assert not wait_no_leftovers(info)


def test_a_fresh_stack_stops_in_the_background_while_the_next_one_starts(tmp_path, purged):
    """noisy-neighbour's matrix: a topology's stack stops in a thread (its
    own port block) while the next one starts; joined, nothing of it is left."""
    from harness.stack.backend import fresh_stack
    from harness.stack.embedded import StackOptions
    from harness.stack.topology import PORT_BLOCK
    stopping = []
    base = TEST_BASE_PORT + 100
    with fresh_stack(StackOptions(state_dir=purged, base_port=base), log=lambda *a: None,
                     stopping=stopping) as b:
        first = b.info()
    assert len(stopping) == 1          # the block returned; the stop goes on in its thread
    second_state = tmp_path / "second"
    try:
        with fresh_stack(StackOptions(state_dir=second_state, base_port=base + PORT_BLOCK),
                         log=lambda *a: None) as b2:
            stopping[0].join(timeout=60)
            assert not stopping[0].is_alive()
            assert not wait_no_leftovers(first), "the first stack outlived its stop"
            assert not purged.exists()                     # purged, as on a plain exit
            assert b2.info().state == "running"
    finally:
        msdb("down", "--state-dir", str(second_state), "--purge")
    # an error in the block stops the stack before fresh_stack returns, thread or not
    stopping = []
    with pytest.raises(RuntimeError):
        with fresh_stack(StackOptions(state_dir=purged, base_port=base), log=lambda *a: None,
                         stopping=stopping) as b:
            third = b.info()
            raise RuntimeError("the run failed")
    assert stopping == [] and not purged.exists()      # stopped and purged before the raise went on
    assert not wait_no_leftovers(third)
