"""The CLI as a newcomer meets it: wrong arguments name the bad value, exit codes hold."""

from __future__ import annotations

import socket

import pytest

from fix_cli import msdb


@pytest.mark.parametrize("args,needle", [
    (["up", "--topology", "star"], "star"),
    (["up", "--base-port", "80"], "--base-port 80"),
    (["up", "--base-port", "lots"], "lots"),
    (["up", "--archive-timeout", "soon"], "--archive-timeout 'soon'"),
    (["run", "nosuch"], "nosuch"),
    (["run", "smoke", "--duration", "forever"], "--duration 'forever'"),
    (["run", "smoke", "--users", "0"], "--users 0"),
    (["run", "smoke", "--spawn-rate", "-1"], "--spawn-rate -1"),
    (["run", "smoke", "--slo", "/nonexistent/slo.yaml"], "/nonexistent/slo.yaml"),
    (["frobnicate"], "frobnicate"),
    ([], "COMMAND"),
])
def test_usage_errors_exit_2_and_name_the_value(args, needle, tmp_path):
    r = msdb(*args, "--state-dir", str(tmp_path)) if args and args[0] in ("up", "run") else msdb(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_status_without_a_stack_is_an_infrastructure_error(tmp_path):
    r = msdb("status", "--state-dir", str(tmp_path / "none"))
    assert r.returncode == 3 and "msdb up" in r.stderr and "Traceback" not in r.stderr


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


def test_taken_port_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # the port is the Redis port (base + 10) of a block starting 10 below it
        r = msdb("up", "--state-dir", str(tmp_path), "--base-port", str(port - 10))
    assert r.returncode == 3, r.stderr
    assert f"port {port}" in r.stderr and "Redis" in r.stderr
