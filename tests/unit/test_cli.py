"""The CLI as a newcomer meets it: wrong arguments name the bad value, exit codes hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import socket

import pytest

from fix_cli import MSDB, msdb, msdb_many


USAGE = [
    (["up", "--topology", "star"], "star"),
    (["up", "--base-port", "80"], "--base-port 80"),
    (["up", "--base-port", "lots"], "lots"),
    (["up", "--archive-timeout", "soon"], "--archive-timeout 'soon'"),
    (["run", "nosuch"], "nosuch"),
    (["run", "smoke", "--duration", "forever"], "--duration 'forever'"),
    (["run", "smoke", "--users", "0"], "--users 0"),
    (["run", "smoke", "--spawn-rate", "-1"], "--spawn-rate -1"),
    (["run", "smoke", "--slo", "/nonexistent/slo.yaml"], "/nonexistent/slo.yaml"),
    (["run", "security", "--no-report"], "--no-report: a check of 'security' reads its reports"),
    (["frobnicate"], "frobnicate"),
    ([], "COMMAND"),
]


@pytest.fixture(scope="module")
def usage_results(tmp_path_factory):
    """Every USAGE command, run a few at a time (each its own state dir)."""
    return msdb_many([((*args, "--state-dir", tmp_path_factory.mktemp("usage"))
                       if args and args[0] in ("up", "run") else tuple(args), {}) for args, _ in USAGE])


@pytest.mark.parametrize("i", range(len(USAGE)), ids=[" ".join(a) or "no-args" for a, _ in USAGE])
def test_usage_errors_exit_2_and_name_the_value(i, usage_results):
    r, needle = usage_results[i], USAGE[i][1]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_status_without_a_stack_says_so_on_stdout_and_exits_3(tmp_path):
    r = msdb("status", "--state-dir", str(tmp_path / "none"))
    assert r.returncode == 3 and "no stack is running" in r.stdout and "msdb up" in r.stdout
    assert "Traceback" not in r.stderr
    r = msdb("status", "--state-dir", str(tmp_path / "none"), "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["stack"] is None


def test_down_without_a_stack_is_fine(tmp_path):
    r = msdb("down", "--state-dir", str(tmp_path / "none"))
    assert r.returncode == 0 and "no stack" in r.stdout


def test_help_everywhere():
    for cmd in ([], ["up"], ["down"], ["status"], ["run"], ["scenarios"]):
        r = msdb(*cmd, "--help")
        assert r.returncode == 0 and "usage: msdb" in r.stdout


def test_scenarios_lists_smoke():
    r = msdb("scenarios")
    assert r.returncode == 0 and "smoke" in r.stdout


def free_block(n: int = 70) -> int:
    """A base port whose whole block is free now (below the ephemeral range,
    so that no client connection lands in it meanwhile)."""
    for base in range(31000, 32700 - n, 100):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no free 70-port block between 31000 and 32700")


def test_taken_port_is_named(tmp_path):
    base = free_block()
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 10))     # the Redis port of the block
        s.listen()
        port = base + 10
        r = msdb("up", "--state-dir", str(tmp_path), "--base-port", str(base))
    assert r.returncode == 3, r.stderr
    assert f"port {port}" in r.stderr and "Redis" in r.stderr


def widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def test_terminal_output_fits_80_columns_even_on_a_wide_terminal():
    for argv in (["scenarios"], ["run", "--help"]):
        r = msdb(*argv, env={**os.environ, "COLUMNS": "250"})
        assert r.returncode == 0 and widest(r.stdout) <= 80, (argv, widest(r.stdout))
    r = msdb("scenarios")
    assert "noisy-neighbour" in r.stdout and "starts 3 stacks of its own" in r.stdout


def test_term_table_wraps_the_last_column_or_puts_it_under_the_row():
    from harness.term import table
    long = "word " * 40
    lines = table([["a", "b", long]], ["x", "y", "detail"], cols=80)
    assert all(len(line) <= 80 for line in lines) and len(lines) > 3
    lines = table([["x" * 70, long]], ["wide", "detail"], cols=80)
    assert all(len(line) <= 80 for line in lines) and lines[3].startswith("    word")
    assert table([["a", "1"]], ["name", "n"], right=(1,))[2] == "a     1"


def test_a_value_that_looks_like_an_option_is_named():
    r = msdb("run", "smoke", "--duration", "-5s")
    assert r.returncode == 2 and "--duration '-5s'" in r.stderr


def test_report_of_a_missing_directory_says_it_does_not_exist(tmp_path):
    r = msdb("report", tmp_path / "nope")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_a_closed_pipe_is_not_a_traceback():
    p = subprocess.Popen([*MSDB, "scenarios"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()       # the reader left before msdb wrote
    err = p.stderr.read().decode()
    assert p.wait(30) == 0 and "Traceback" not in err


UNREADABLE = [
    ["suite", "quick", "--out", "{file}/x"],
    ["run", "smoke", "--out", "{file}/x"],
    ["drill", "restore", "--out", "{file}/x"],
    ["run", "smoke", "--slo", "{file}"],
    ["run", "smoke", "--faults", "{file}"],
    ["check", "{dir}"],
    ["report", "{dir}"],
]


@pytest.fixture(scope="module")
def unreadable_results(tmp_path_factory):
    """Every UNREADABLE command, a few at a time, each in a directory of its own
    holding a binary file and a run directory with a broken run.json."""
    calls, places = [], []
    for argv in UNREADABLE:
        d = tmp_path_factory.mktemp("unreadable")
        binary = d / "binary.yaml"
        binary.write_bytes(b"\xff\xfe\x00\x01 caf\xe9")
        run_dir = d / "run"
        run_dir.mkdir()
        (run_dir / "run.json").write_text("{not json")
        calls.append(([a.format(file=binary, dir=run_dir) for a in argv], {"cwd": d, "timeout": 60}))
        places.append((d, binary, run_dir))
    return list(zip(msdb_many(calls), places))


@pytest.mark.parametrize("i", range(len(UNREADABLE)), ids=[" ".join(a) for a in UNREADABLE])
def test_unreadable_files_and_impossible_paths_are_exit_2(i, unreadable_results):
    r, (d, binary, run_dir) = unreadable_results[i]
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and (str(binary) in r.stderr or str(run_dir) in r.stderr)
    assert not (d / "runs").exists()


def test_locust_with_no_stack_says_so_and_exits_non_zero(tmp_path):
    """`locust -f locustfile.py` where no stack runs: one clear message, no
    traceback loop, exit 3 (as `msdb status` with no stack)."""
    locustfile = Path(__file__).resolve().parents[2] / "locustfile.py"
    env = {**os.environ, "MSDB_STATE_DIR": str(tmp_path / "none")}
    env.pop("MSDB_TARGET", None)
    r = subprocess.run([sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", "1",
                        "-t", "3s"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "no stack to drive" in r.stderr and "msdb up" in r.stderr
    assert "Traceback" not in r.stderr and "KeyError" not in r.stderr
