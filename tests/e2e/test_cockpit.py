"""The cockpit end to end: a real `locust -f locustfile.py` process with its
web UI against the session stack, driven through its /msdb/ API and Locust's
own /swarm and /stop, faults checked on the real proxy; and a browser
(Playwright on Debian's Chromium) driving the real UI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from chaos.client import ToxiproxyServer
from harness.stack.backend import heal
from reports.rundata import REQUEST_COLUMNS

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
LOCUST = str(Path(sys.executable).parent / "locust")
BASE = int(os.environ.get("MSDB_TEST_BASE_PORT", "25400"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


class LocustUI:
    """One `locust -f locustfile.py` process with its web UI on 127.0.0.1."""

    def __init__(self, state_dir: Path, runs: Path, port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.runs = runs
        env = {**os.environ, "MSDB_STATE_DIR": str(state_dir), "MSDB_RUNS_DIR": str(runs),
               "MSDB_SEED_USERS": "20", "MSDB_SEED_PRODUCTS": "30"}
        env.pop("MSDB_TARGET", None)
        self.log = log
        with open(log, "wb") as out:
            # As a terminal's Locust: Ctrl-C delivered (a test session run as a
            # background job inherits SIGINT ignored, which the cockpit respects).
            self.proc = subprocess.Popen([LOCUST, "-f", "locustfile.py", "--web-host", "127.0.0.1",
                                          "--web-port", str(port)], cwd=REPO, env=env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"locust exited: {log.read_text()[-3000:]}"
            try:
                if requests.get(self.url + "/msdb/status", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"the cockpit did not answer: {log.read_text()[-3000:]}")

    def get(self, path: str) -> dict:
        r = requests.get(self.url + path, timeout=30)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        return r.json()

    def start_test(self, users: int = 6) -> dict:
        r = requests.post(self.url + "/swarm", data={"user_count": users, "spawn_rate": users,
                                                     "user_classes": "ShopUser"}, timeout=120)
        assert r.json()["success"], r.text
        return self.until(lambda: (s := self.get("/msdb/status"))["test"]["run_dir"] and s, 60,
                          "the UI test's run directory")

    def until(self, fn, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = fn()
            if got:
                return got
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; locust log: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """By PID: SIGTERM (the cockpit heals and judges), then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(180)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def locust_ui(state_dir, backend, tmp_path):
    uis = []

    def start(port_offset: int = 88) -> LocustUI:
        ui = LocustUI(state_dir, tmp_path / "runs", BASE + port_offset, tmp_path / f"locust-{port_offset}.log")
        uis.append(ui)
        return ui
    yield start
    for ui in uis:
        ui.stop()
    heal(backend)       # whatever a failed test left: the next test starts from a whole stack


def nemesis_pids(run_dir: Path) -> list[int]:
    """The nemesis processes of one run directory (their command line names it)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"harness.run.nemesis" in cmd and any(str(run_dir).encode() in c for c in cmd):
                out.append(int(d.name))
    return out


@pytest.mark.slow
def test_a_latency_fault_in_a_ui_test_is_seen_journalled_judged_and_reported(locust_ui, stack):
    ui = locust_ui()
    st = ui.start_test()
    run_dir = Path(st["test"]["run_dir"])
    assert {p["part"] for p in st["health"]} >= {"pg-main", "proxy", "catalog", "orders"}
    time.sleep(4)   # load before the fault
    r = requests.post(ui.url + "/msdb/faults", json={"kind": "latency", "target": "catalog-db",
                                                     "for": "8s", "latency": 200, "jitter": 10}, timeout=60)
    assert r.status_code == 201, r.text
    fault = r.json()
    assert fault["status"] == "active" and fault["start"].endswith("Z")
    # On the real proxy, and in the live panels (the API and Locust's extended tabs).
    toxics = ToxiproxyServer.at(stack.proxy.api).toxics("catalog-db")
    assert toxics[fault["id"]]["attributes"]["latency"] == 200
    st = ui.get("/msdb/status")
    assert [(f["id"], f["params"]["latency"]) for f in st["faults"]] == [(fault["id"], 200)]
    assert any(p["service"] == "catalog" and p["size"] >= 1 for p in st["pools"])
    assert st["lag"]["replica"]["state"] == "streaming" and len(st["lag"]["cdc"]) == 3
    tabs = {t["key"]: t["data"] for t in ui.get("/stats/requests")["extended_stats"]}
    assert [(f["name"], f["params"]) for f in tabs["msdb-faults"]] == [(fault["id"], "latency=200, jitter=10")]
    assert {row["name"] for row in tabs["msdb-health"]} >= {"pg-main", "catalog"}
    # The fault heals at the end of its `for`, and the load goes on after it.
    ui.until(lambda: ui.get("/msdb/faults")["past"], 30, "the fault's heal")
    assert not ToxiproxyServer.at(stack.proxy.api).toxics("catalog-db")
    time.sleep(8)   # load after the heal and its grace (heal_grace_s, 5 s): no-errors-after-heal judges it
    assert requests.post(ui.url + "/stop", timeout=120).json()["success"]
    latest = ui.until(lambda: (d := ui.get("/msdb/runs/latest"))["state"] == "judged" and d, 180,
                      "the verdict")
    assert latest["run_dir"] == str(run_dir)
    checks = {c["name"]: c["verdict"] for c in latest["checks"]}
    # A short test may leave a threshold unmeasured (too few samples: unknown); the
    # fault's own checks and the load's basics are measured and must pass.
    for name in ("faults-injected", "faults-healed", "requests-made", "no-server-errors",
                 "no-internal-errors", "healthy-again-after-heal", "healthy-after-run"):
        assert checks[name] == "pass", (name, checks)
    worst = "fail" if "fail" in checks.values() else "unknown" if "unknown" in checks.values() else "pass"
    assert latest["verdict"] == worst
    run = json.loads((run_dir / "run.json").read_text())
    assert run["ui"] is True and run["scenario"] == "smoke" and run["status"] == "completed"
    assert run["start"].endswith("Z") and run["end"].endswith("Z") and run["load"]["locust_requests"] > 0
    journal = [json.loads(x) for x in (run_dir / "faults.jsonl").read_text().splitlines()]
    assert [(j["name"], j["status"]) for j in journal] == [(fault["id"], "active"), (fault["id"], "healed")]
    assert journal[-1]["end"].endswith("Z") and journal[-1]["params"]["latency"] == 200
    assert (run_dir / "requests.csv").read_text().splitlines()[0] == ",".join(REQUEST_COLUMNS)
    assert any(x.startswith("catalog") for x in json.loads((run_dir / "results.json").read_text())
               ["metrics"]["endpoints"])
    # The report, served by the cockpit, shows the fault window.
    report = requests.get(ui.url + latest["report"], timeout=30)
    assert report.status_code == 200 and "text/html" in report.headers["Content-Type"]
    assert fault["id"] in report.text and "catalog-db" in report.text
    assert requests.get(ui.url + "/msdb/runs/latest/report", timeout=30).url.endswith("/report.html")


@pytest.mark.slow
def test_sigkill_of_locust_mid_fault_heals_every_proxy(locust_ui, stack):
    api = ToxiproxyServer.at(stack.proxy.api)
    ui = locust_ui(89)
    run_dir = Path(ui.start_test(users=3)["test"]["run_dir"])
    for body in ({"kind": "latency", "target": "catalog-db", "for": "5min", "latency": 200},
                 {"kind": "down", "target": "search-db", "for": "5min"},
                 {"kind": "bandwidth", "target": "orders-db", "for": "5min", "rate": 10}):
        r = requests.post(ui.url + "/msdb/faults", json=body, timeout=60)
        assert r.status_code == 201, r.text
    assert api.toxics("catalog-db") and api.toxics("orders-db")
    assert not api.proxies()["search-db"].enabled
    assert len(nemesis_pids(run_dir)) == 3
    ui.proc.kill()     # SIGKILL; not reaped yet: the nemeses must not wait for that
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proxies = api.proxies()
        if all(p.enabled for p in proxies.values()) and not any(api.toxics(n) for n in proxies):
            break
        time.sleep(0.2)
    proxies = api.proxies()
    assert all(p.enabled for p in proxies.values()), [n for n, p in proxies.items() if not p.enabled]
    assert not {n: t for n in proxies if (t := api.toxics(n))}
    ui.proc.wait(10)
    journal = {}
    for line in (run_dir / "faults.jsonl").read_text().splitlines():
        rec = json.loads(line)
        journal[rec["name"]] = rec
    assert sorted(r["status"] for r in journal.values()) == ["healed"] * 3
    assert all(r["end"].endswith("Z") for r in journal.values())
    end = time.monotonic() + 15
    while nemesis_pids(run_dir) and time.monotonic() < end:
        time.sleep(0.2)
    assert not nemesis_pids(run_dir)


@pytest.mark.slow
def test_the_browser_drives_a_ui_test_with_a_fault_to_its_report(locust_ui, stack, tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
    from playwright.sync_api import expect, sync_playwright
    ui = locust_ui(87)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(ui.url + "/")
            # Locust's class picker offers every scenario user class; only ShopUser runs.
            for name in ("CdcUser", "NoisyUser", "ProbeUser", "RywUser", "SagaUser", "ShopUser"):
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            for name in ("CdcUser", "NoisyUser", "ProbeUser", "RywUser", "SagaUser"):
                page.get_by_role("row", name=name).get_by_role("checkbox").uncheck()
            page.locator("input[name=userCount]").fill("5")
            page.locator("input[name=spawnRate]").fill("5")
            page.get_by_role("button", name="Start").click()
            expect(page.get_by_role("tab", name="msdb faults")).to_be_visible()
            ui.until(lambda: ui.get("/msdb/status")["test"]["run_dir"], 60, "the test's run")
            # The fault panel: one click away from Locust's page.
            page.locator("#msdb-cockpit-link").click()
            page.wait_for_url("**/msdb/")
            page.select_option("#f-kind", "latency")
            page.select_option("#f-target", "catalog-db")
            page.fill("#f-latency", "200")
            page.fill("#f-for", "6")
            page.click("#f-apply")
            row = page.locator("#active-faults tbody tr")
            expect(row).to_contain_text("catalog-db")
            expect(row).to_contain_text("latency=200")
            expect(page.locator("#health tbody tr").first).to_be_visible()
            expect(page.locator("#pools tbody")).to_contain_text("catalog")
            expect(page.locator("#past-faults tbody")).to_contain_text("healed", timeout=30_000)
            page.screenshot(path=str(tmp_path / "cockpit.png"))
            # Locust's own tab shows it too; then stop the test from Locust's UI.
            page.goto(ui.url + "/?tab=msdb-faults")
            expect(page.get_by_text("latency=200").first).to_be_visible()
            page.get_by_role("button", name="Stop").click()
            page.goto(ui.url + "/msdb/")
            expect(page.locator("#run-report")).to_be_visible(timeout=180_000)
            verdict = page.locator("#run-verdict").inner_text()
            assert verdict in ("PASS", "FAIL", "UNKNOWN")   # judged; the API test checks the checks
            with page.context.expect_page() as new:
                page.click("#run-report")
            report = new.value
            report.wait_for_load_state()
            expect(report.locator("body")).to_contain_text("catalog-db")
        finally:
            browser.close()


# -- the API's errors and heals -------------------------------------------------------------

@pytest.mark.parametrize("body, status, field", [
    ({"kind": "bogus", "target": "users-db", "for": 5}, 400, "kind"),
    ({"kind": "latency", "target": "no-such-link", "for": 5, "latency": 10}, 400, "target"),
    ({"kind": "kill", "target": "users-db", "for": 5}, 400, "target"),        # a link is not a part
    ({"kind": "kill", "target": "proxy", "for": 5}, 400, "target"),           # every heal needs it
    ({"kind": "latency", "target": "users-db", "latency": 10}, 400, "for"),
    ({"kind": "latency", "target": "users-db", "for": "soon"}, 400, "for"),
    ({"kind": "latency", "target": "users-db", "for": 0}, 400, "for"),
    ({"kind": "latency", "target": "users-db", "for": "25%"}, 400, "for"),
    ({"kind": "latency", "target": "users-db", "for": 5, "latency": -1}, 400, "latency"),
    ({"kind": "latency", "target": "users-db", "for": 5, "latency": "200"}, 400, "latency"),
    ({"kind": "latency", "target": "users-db", "for": 5, "rate": 10}, 400, "rate"),
    ({"kind": "latency", "target": "users-db", "for": 5, "stream": "sideways"}, 400, "stream"),
    ({"kind": "down", "target": "users-db", "for": 5, "name": "../x"}, 400, "name"),
    ([{"kind": "down"}], 400, "body"),
])
@pytest.mark.slow   # several seconds: the full suite runs it, the fast loop does not
def test_a_bad_fault_is_a_400_naming_the_field(backend, tmp_path, body, status, field):
    from harness.cockpit.desk import FaultDesk
    from harness.cockpit.errors import ApiError
    desk = FaultDesk(tmp_path, backend, t0=time.time())
    with pytest.raises(ApiError) as e:
        desk.parse(body)
    assert (e.value.status, e.value.field) == (status, field), e.value.message
    assert e.value.body() == {"error": "bad-request", "field": field, "message": e.value.message}


@pytest.mark.slow
def test_the_api_answers_json_errors_and_never_a_traceback(locust_ui):
    ui = locust_ui(86)
    st = ui.get("/msdb/status")
    assert st["healthy"] is True and st["test"]["run_dir"] is None and st["test"]["state"] == "ready"
    r = requests.post(ui.url + "/msdb/faults", json={"kind": "latency", "target": "users-db", "for": 5})
    assert (r.status_code, r.json()["field"], r.json()["error"]) == (409, "state", "conflict")
    for method, path, status, field in (("POST", "/msdb/faults", 400, "body"),
                                        ("PUT", "/msdb/faults", 405, "method"),
                                        ("GET", "/msdb/nothing-here", 404, "path"),
                                        ("DELETE", "/msdb/faults/nope", 404, "id"),
                                        ("GET", "/msdb/runs/latest/report", 404, "run"),
                                        ("GET", "/msdb/runs/..%2f..%2fetc/report.html", 404, None)):
        r = requests.request(method, ui.url + path, data="not json", timeout=30,
                             headers={"Content-Type": "text/plain"})
        assert r.status_code == status, (method, path, r.status_code, r.text[:300])
        doc = r.json()
        assert set(doc) == {"error", "field", "message"} and (field is None or doc["field"] == field), doc
    assert ui.get("/msdb/runs/latest")["state"] == "none"
    page = requests.get(ui.url + "/msdb/", timeout=30)
    assert page.status_code == 200 and 'id="fault-form"' in page.text
    faults = ui.get("/msdb/faults")
    assert {"catalog-db", "orders-replication"} <= {x["name"] for x in faults["targets"]["links"]}
    assert "proxy" not in faults["targets"]["parts"] and "pg-main" in faults["targets"]["parts"]
    assert faults["kinds"]["network"]["latency"] == ["latency", "jitter"]
    # Locust's own page: the class picker, the extended tabs, the link to the cockpit.
    index = requests.get(ui.url + "/", timeout=30).text
    assert "msdb-cockpit-link" in index and "msdb-faults" in index
    assert '"show_userclass_picker": true' in index and '"SagaUser"' in index


@pytest.mark.slow
def test_faults_heal_one_by_one_and_all_at_once(locust_ui, stack):
    api = ToxiproxyServer.at(stack.proxy.api)
    ui = locust_ui(85)
    # A fault asked for at once after Locust's /swarm waits for the test's run directory
    # (the test seeds the stack first).
    r = requests.post(ui.url + "/swarm", data={"user_count": 2, "spawn_rate": 2, "user_classes": "ShopUser"},
                      timeout=60)
    assert r.json()["success"], r.text
    ids = []
    for body in ({"kind": "latency", "target": "users-db", "for": "1min", "latency": 5},
                 {"kind": "slow_close", "target": "orders-db", "for": 60, "delay": 10},
                 {"kind": "down", "target": "search-db", "for": "1min", "name": "search-down"}):
        r = requests.post(ui.url + "/msdb/faults", json=body, timeout=60)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    assert ids[2] == "search-down"
    run_dir = Path(ui.get("/msdb/status")["test"]["run_dir"])
    r = requests.post(ui.url + "/msdb/faults", timeout=60,
                      json={"kind": "down", "target": "search-db", "for": 5, "name": "search-down"})
    assert (r.status_code, r.json()["field"]) == (409, "name")
    assert [f["id"] for f in ui.get("/msdb/status")["faults"]] == ids
    r = requests.delete(ui.url + f"/msdb/faults/{ids[0]}", timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "healed" and r.json()["end"].endswith("Z")
    assert not api.toxics("users-db") and api.toxics("orders-db")
    r = requests.delete(ui.url + "/msdb/faults", timeout=60)
    assert r.status_code == 200 and sorted(f["status"] for f in r.json()["healed"]) == ["healed"] * 3
    assert not api.toxics("orders-db") and api.proxies()["search-db"].enabled
    faults = ui.get("/msdb/faults")
    assert faults["active"] == [] and [f["id"] for f in faults["past"]] == ids
    schedule = json.loads((run_dir / "faults.schedule.json").read_text())
    assert [f["name"] for f in schedule] == ids and all(f["at_s"] >= 0 for f in schedule)
    # Ctrl-C of Locust mid-test: the test is stopped, judged and reported before it exits.
    r = requests.post(ui.url + "/msdb/faults", json={"kind": "latency", "target": "users-db", "for": "1min",
                                                     "latency": 5}, timeout=60)
    assert r.status_code == 201
    ui.proc.send_signal(signal.SIGINT)
    assert ui.proc.wait(180) is not None
    assert not api.toxics("users-db")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["end"].endswith("Z")
    results = json.loads((run_dir / "results.json").read_text())
    assert {c["name"]: c["verdict"] for c in results["checks"]}["faults-healed"] == "pass"
    assert (run_dir / "report.html").exists()
