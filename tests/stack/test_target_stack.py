"""Targets files against the session's stack: `msdb target export`, reading
it back against the live deployment, `msdb part`, and the exit codes of a
file the deployment does not match."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
import yaml

from fix_cli import msdb
from harness.stack import procs
from harness.stack.target import TargetBackend

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def target(stack, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("target") / "deployment.yaml"
    r = msdb("target", "export", "--state-dir", stack.state_dir, "--out", path, timeout=60)
    assert r.returncode == 0, r.stderr
    return path


def edited(target: Path, tmp_path: Path, edit) -> Path:
    doc = yaml.safe_load(target.read_text())
    edit(doc)
    out = tmp_path / "edited.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def test_export_holds_passwords_so_only_its_owner_reads_it(target):
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_an_exported_file_resolves_to_the_same_stack(stack, target, tmp_path):
    b = TargetBackend.open(target, tmp_path / "scratch")
    info = b.info()
    assert info.backend == "target" and info.urls == stack.urls
    assert {(p.name, p.listen, p.upstream) for p in info.proxy.proxies} == \
        {(p.name, p.listen, p.upstream) for p in stack.proxy.proxies}
    assert info.databases["orders"].instance == stack.databases["orders"].instance
    assert "proxy" not in b.actions().names()      # every heal needs the proxy
    health = {p.name: p.healthy for p in b.status()}
    assert all(health.values()) and {"pg-main", "replication", "redis", "orders"} <= set(health)
    b.down()
    assert not (tmp_path / "scratch").exists()


def test_part_pauses_and_resumes_a_process(backend, state_dir):
    # stack.json now: earlier tests may have killed and restarted search
    rec = procs.ProcRecord.from_json(backend.info().part("search").proc)

    def state() -> str:
        return Path(f"/proc/{rec.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert msdb("part", "running", "search", "--state-dir", state_dir).returncode == 0
    try:
        assert msdb("part", "pause", "search", "--state-dir", state_dir).returncode == 0
        assert state() == "T"
    finally:
        assert msdb("part", "resume", "search", "--state-dir", state_dir).returncode == 0
    assert state() != "T"
    r = msdb("part", "kill", "nosuch", "--state-dir", state_dir)
    assert r.returncode == 2 and "unknown part 'nosuch'" in r.stderr


def test_a_url_that_does_not_answer_is_exit_3_and_no_run_dir(target, tmp_path):
    def users_elsewhere(doc):
        doc["services"]["users"] = "http://127.0.0.1:1"
    before = set(os.listdir(tempfile.gettempdir()))
    r = msdb("run", "smoke", "--target", edited(target, tmp_path, users_elsewhere), cwd=tmp_path,
             timeout=60)
    assert r.returncode == 3, r.stderr
    assert "services.users: http://127.0.0.1:1 does not answer" in r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / ".msdb").exists()
    left = set(os.listdir(tempfile.gettempdir())) - before
    assert not {d for d in left if d.startswith("msdb-target-")}, "the scratch state dir was left"


def test_a_proxy_the_deployment_lacks_is_exit_2_naming_it(target, tmp_path):
    def extra_link(doc):
        doc["toxiproxy"]["links"]["ghost-db"] = {"kind": "db", "from": "users", "to": "pg-main"}
    r = msdb("run", "smoke", "--target", edited(target, tmp_path, extra_link), cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "toxiproxy.links.ghost-db: no proxy of that name" in r.stderr


@pytest.mark.slow   # several seconds: the full suite runs it, the fast loop does not
def test_a_scenario_the_file_cannot_serve_is_exit_2_naming_the_key(target, tmp_path):
    def no_kill(doc):
        inst = next(i for i, v in doc["instances"].items() if "orders" in v["services"]
                    and v["role"] == "primary")
        del doc["parts"][inst]["kill"]
    r = msdb("run", "db-restart", "--target", edited(target, tmp_path, no_kill), cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and ".kill (the command for the kill fault" in r.stderr
    r = msdb("suite", "nightly", "--target", target, "--out", tmp_path / "suite", cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert "saga: needs settings.payments.PAYMENT_DECLINE_RATE" in r.stderr
    assert "noisy-neighbour: compares topologies" in r.stderr
    r = msdb("run", "smoke", "--target", target, "--base-port", "20000", timeout=60)
    assert r.returncode == 2 and "--base-port" in r.stderr
