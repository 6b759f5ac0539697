"""The drills of tests/drills, run once per module: six `msdb drill` processes
at once, each on its own fresh stack and port block (MSDB_TEST_DRILL_PORT,
default 20900; 70 ports each), and the encrypted geo copy's two failure
drills on the next two blocks.  The four restore drills keep their stacks so
that the tests can query the restored instances themselves; teardown purges
them and fails if any process of theirs is left."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest

from fix_cli import MSDB
from harness.stack import procs
from harness.stack.info import StackInfo

__all__ = ["drills", "geo_drills", "DRILLS", "BASE", "GEO_BASE", "GEO_KEY_A", "GEO_KEY_B"]

BASE = int(os.environ.get("MSDB_TEST_DRILL_PORT", "20900"))
DRILLS = {
    "archive": ["restore", "--wal", "archive", "--archive-timeout", "15min", "--disaster-after", "6s",
                "--writers", "3", "--keep-stack"],
    "sync": ["restore", "--wal", "stream-sync", "--disaster-after", "5s", "--writers", "3", "--keep-stack"],
    "stream": ["restore", "--wal", "stream", "--disaster-after", "5s", "--writers", "3", "--keep-stack"],
    "geo": ["restore", "--from", "geo", "--disaster-after", "4s", "--writers", "2", "--keep-stack"],
    "pitr": ["pitr", "--disaster-after", "3s", "--writers", "2"],
    "masked": ["masked", "--disaster-after", "3s", "--writers", "2"],
}


def _launch(root, specs: dict, base: int):
    """Start every drill of `specs` ({name: (argv, extra env)}) at once, each on
    its own port block; wait for them; on the way out stop them (SIGTERM),
    purge their stacks and fail if any process of theirs is left."""
    running = {}
    for i, (name, (argv, env)) in enumerate(specs.items()):
        st, out = root / f"state-{name}", root / f"run-{name}"
        cmd = [*MSDB, "drill", *argv, "--state-dir", str(st),
               "--base-port", str(base + 70 * i), "--out", str(out), "--no-pdf"]
        running[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          env={**os.environ, **env}), st, out)
    done = {}
    try:
        for name, (proc, st, out) in running.items():
            text, _ = proc.communicate(timeout=400)
            done[name] = {"rc": proc.returncode, "log": text, "state": st, "out": out,
                          "results": json.loads((out / "results.json").read_text())
                          if (out / "results.json").exists() else None}
        yield done
    finally:
        infos, downs = {}, []
        for name, (proc, st, out) in running.items():
            if proc.poll() is None:
                proc.terminate()      # the drill cleans up on SIGTERM
                proc.wait(timeout=60)
            try:
                infos[name] = StackInfo.load(st)
            except Exception:  # no stack left to look at: nothing can be left over
                pass
            downs.append(subprocess.Popen([*MSDB, "down", "--state-dir", str(st), "--purge"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for d in downs:
            d.wait(timeout=120)
        for name, info in infos.items():
            left = [f"{p.name}: {pid}" for p in info.parts if p.proc
                    for pid in procs.members(procs.ProcRecord.from_json(p.proc))]
            assert not left, f"drill {name} left processes: {left}"


@pytest.fixture(scope="module")
def drills(tmp_path_factory):
    yield from _launch(tmp_path_factory.mktemp("drills"), {k: (v, {}) for k, v in DRILLS.items()}, BASE)


# The encrypted geo copy's two failure drills (tests/drills/test_geo_encryption.py),
# on the port blocks after the six above.  Keys: A writes the copy, B is the wrong one.
GEO_KEY_A = base64.b64encode(bytes(range(32))).decode()
GEO_KEY_B = base64.b64encode(bytes(range(100, 132))).decode()
GEO_BASE = BASE + 70 * len(DRILLS)


@pytest.fixture(scope="module")
def geo_drills(tmp_path_factory):
    """planted: MSDB_DRILL_PLANT_PLAINTEXT_GEO=1, key A from MSDB_GEO_KEY, restored
    from this region (its checks must fail, exit 1); wrongkey: --from geo, written
    with --geo-key-file A, restored with --restore-key-file B (exit 3)."""
    root = tmp_path_factory.mktemp("geo-drills")
    keys = root / "keys"
    keys.mkdir()
    for name, text in (("a.key", GEO_KEY_A), ("b.key", GEO_KEY_B)):
        (keys / name).write_text(text + "\n")
        (keys / name).chmod(0o600)
    specs = {
        "planted": (["restore", "--disaster-after", "2s", "--writers", "1"],
                    {"MSDB_DRILL_PLANT_PLAINTEXT_GEO": "1", "MSDB_GEO_KEY": GEO_KEY_A}),
        "wrongkey": (["restore", "--from", "geo", "--disaster-after", "2s", "--writers", "1",
                      "--geo-key-file", str(keys / "a.key"), "--restore-key-file", str(keys / "b.key")],
                     {}),
    }
    for done in _launch(root, specs, GEO_BASE):
        yield {**done, "keys": keys}
