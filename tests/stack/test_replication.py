"""Replication lag and CDC, proved against known causes on the real stack:
latency L on the replica's link shows as lag >= L; a stopped replica's lag
grows about 1 s per second and falls back after SIGCONT; read-your-writes
routing never serves a stale read where replica routing does; a CDC consumer
killed between applying and acknowledging a batch ends with exactly-once
effects, and a planted bug (no LSN guard) is caught by the end-state check."""

from __future__ import annotations

import time
import uuid

import httpx
import psycopg
import pytest

from chaos.client import ToxiproxyServer
from fix_stack import TEST_BASE_PORT, wait_no_leftovers
from harness.checks.lag import CdcChecks
from harness.run.endstate import compare_cdc, wait_cdc_quiet
from harness.run.lagmon import LagMonitor
from harness.stack import procs
from harness.stack.backend import fresh_stack
from harness.stack.embedded import StackOptions
from rundirs import make_run
from system_under_test.cdc.pgoutput import Decoder, Begin, Change, Commit, Relation

pytestmark = [pytest.mark.integration]


def _world(urls: dict, products: int = 3):
    with httpx.Client(timeout=30) as c:
        pids = [c.post(f"{urls['catalog']}/products", json={
            "sku": uuid.uuid4().hex[:10], "name": "Lag widget", "price": "2.50", "stock": 100000}).json()["id"]
            for _ in range(products)]
        user = c.post(f"{urls['users']}/users", json={"email": f"{uuid.uuid4().hex[:10]}@x.com",
                                                      "password": "lag-password"}).json()["id"]
    return pids, user


def _order(c: httpx.Client, urls, user, pid) -> str:
    r = c.post(f"{urls['orders']}/orders", json={"user_id": user, "items": [{"product_id": pid, "quantity": 1}]})
    assert r.status_code == 201, r.text
    return r.json()["order"]["id"]


@pytest.fixture
def monitor(stack, tmp_path):
    m = LagMonitor(stack, tmp_path)
    m.start()
    yield m
    m.stop()
    ToxiproxyServer.at(stack.proxy.api).reset()


def test_pgoutput_decoder_reads_a_real_slot(stack):
    """The hand-written decoder against PostgreSQL's own pgoutput bytes."""
    dsn = stack.primaries[0].admin_dsn
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS dec_t (id int PRIMARY KEY, doc jsonb, price numeric, ok bool, "
                  "note text)")
        c.execute("ALTER TABLE dec_t REPLICA IDENTITY FULL")
        c.execute("DROP PUBLICATION IF EXISTS dec_pub")
        c.execute("CREATE PUBLICATION dec_pub FOR TABLE dec_t")
        c.execute("SELECT pg_create_logical_replication_slot('dec_slot', 'pgoutput')")
        try:
            c.execute("INSERT INTO dec_t VALUES (1, '{\"a\": [1, \"x\"]}', 12.50, true, NULL)")
            c.execute("UPDATE dec_t SET note = 'it''s', price = 13 WHERE id = 1")
            c.execute("DELETE FROM dec_t WHERE id = 1")
            rows = c.execute("SELECT data FROM pg_logical_slot_get_binary_changes('dec_slot', NULL, NULL, "
                             "'proto_version', '1', 'publication_names', 'dec_pub')").fetchall()
        finally:
            c.execute("SELECT pg_drop_replication_slot('dec_slot')")
            c.execute("DROP PUBLICATION dec_pub")
            c.execute("DROP TABLE dec_t")
    dec = Decoder()
    msgs = [dec.decode(bytes(r[0])) for r in rows]
    changes = [m for m in msgs if isinstance(m, Change)]
    assert [ch.op for ch in changes] == ["c", "u", "d"]
    assert isinstance(msgs[0], Begin) and isinstance(msgs[-1], Commit)
    assert any(isinstance(m, Relation) and m.table == "dec_t" for m in msgs)
    ins, upd, dele = changes
    assert ins.after == {"id": 1, "doc": {"a": [1, "x"]}, "price": "12.50", "ok": True, "note": None}
    assert upd.before["price"] == "12.50" and upd.after["note"] == "it's" and upd.after["price"] == "13"
    assert dele.before["id"] == 1 and dele.after is None
    assert abs(msgs[0].commit_ts_ms - time.time() * 1000) < 60_000


def _lags_for(m: LagMonitor, seconds: float) -> list[float]:
    """Beat lags measured during the next `seconds`."""
    path = m.beats.path
    m.beats._f.flush()
    before = len(path.read_text().splitlines())
    time.sleep(seconds)
    m.beats._f.flush()
    lines = path.read_text().splitlines()[max(before, 1):]
    return [float(x.split(",")[3]) for x in lines if x]


@pytest.mark.slow   # several seconds: the full suite runs it, the fast loop does not
def test_latency_on_the_replication_link_shows_as_replica_lag(stack, monitor):
    base = _lags_for(monitor, 1.5)
    api = ToxiproxyServer.at(stack.proxy.api)
    L = 200
    api.add_toxic("orders-replication", "latency", attributes={"latency": L, "jitter": 0})
    time.sleep(0.6)                      # beats already in flight arrive early
    during = sorted(_lags_for(monitor, 3.0))
    # pg_stat_replication's own view while the toxic is in place
    with psycopg.connect(stack.instance(stack.replica.primary).admin_dsn, autocommit=True) as c:
        replay = c.execute("SELECT extract(epoch FROM replay_lag) * 1000 FROM pg_stat_replication "
                           "WHERE application_name = %s", (stack.replica.instance,)).fetchone()[0]
    api.reset()
    time.sleep(1.0)
    after = sorted(_lags_for(monitor, 1.5))
    med = during[len(during) // 2]
    assert len(during) >= 20
    assert L <= med <= L + 60, (med, during[:5], during[-5:])
    assert during[0] >= L * 0.95        # no beat arrives faster than the link allows
    assert replay is None or float(replay) >= L * 0.95
    assert sorted(base)[len(base) // 2] < 50 and after[len(after) // 2] < 50


@pytest.mark.slow   # several seconds: the full suite runs it, the fast loop does not
def test_a_stopped_replica_lags_one_second_per_second_and_recovers(backend, monitor):
    time.sleep(1.0)
    actions = backend.actions()
    actions.pause("pg-replica")
    try:
        t0 = time.time()
        points = []
        for _ in range(4):
            time.sleep(1.0)
            now = time.time()
            points.append((now - t0, monitor.hb_lag_ms(now)[0]))
    finally:
        actions.resume("pg-replica")
    # lag(t) ~ t: the slope between the first and last point is about 1 s/s
    slope = (points[-1][1] - points[0][1]) / 1000 / (points[-1][0] - points[0][0])
    assert 0.85 <= slope <= 1.15, points
    assert points[-1][1] >= 3500
    deadline = time.time() + 10
    while monitor.hb_lag_ms(time.time())[0] > 100 and time.time() < deadline:
        time.sleep(0.2)
    assert monitor.hb_lag_ms(time.time())[0] <= 100


@pytest.mark.slow   # several seconds: the full suite runs it, the fast loop does not
def test_read_your_writes_routing_never_reads_stale(stack, urls):
    pids, user = _world(urls, 1)
    api = ToxiproxyServer.at(stack.proxy.api)
    api.add_toxic("orders-replication", "latency", attributes={"latency": 300})
    stale = {"replica": 0, "read-your-writes": 0}
    served = {"replica": set(), "read-your-writes": set()}
    try:
        time.sleep(0.5)
        with httpx.Client(timeout=30) as c:
            for _ in range(6):
                oid = _order(c, urls, user, pids[0])
                for mode in ("replica", "read-your-writes"):
                    r = c.get(f"{urls['orders']}/users/{user}/orders", params={"read": mode, "limit": 5})
                    body = r.json()
                    served[mode].add(body["served_by"])
                    stale[mode] += oid not in {o["id"] for o in body["items"]}
    finally:
        api.reset()
    assert stale["replica"] >= 5 and served["replica"] == {"replica"}   # the anomaly is real and seen
    assert stale["read-your-writes"] == 0 and "primary" in served["read-your-writes"]
    # Once the replica has caught up, read-your-writes reads go back to it.
    time.sleep(1.0)
    r = httpx.get(f"{urls['orders']}/users/{user}/orders", params={"read": "read-your-writes"})
    assert r.json()["served_by"] == "replica" and len(r.json()["items"]) == 6


def test_history_routing_is_set_at_run_time_and_bad_modes_are_named(urls):
    u = f"{urls['orders']}/admin/history-routing"
    try:
        assert httpx.put(u, json={"mode": "primary"}).json() == {"mode": "primary"}
        r = httpx.get(f"{urls['orders']}/users/{uuid.uuid4()}/orders")
        assert r.json()["served_by"] == "primary"
        bad = httpx.put(u, json={"mode": "eventually"})
        assert bad.status_code == 422 and bad.json()["field"] == "mode"
    finally:
        httpx.put(u, json={"mode": "replica"})


def test_cdc_carries_every_change_to_every_consumer(stack, urls):
    t0_ms = time.time() * 1000
    pids, user = _world(urls, 2)
    with httpx.Client(timeout=30) as c:
        for i in range(3):
            c.patch(f"{urls['catalog']}/products/{pids[0]}", json={"description": f"v{i}"})
        for _ in range(3):
            _order(c, urls, user, pids[1])
    wait_cdc_quiet(stack.redis.url, 30)
    end = compare_cdc(stack.urls)
    for key in ("search", "analytics", "user_replica"):
        d = end[key]
        assert d["missing"] == d["extra"] == d["different"] == 0, (key, d)
    assert all(end["analytics_totals"]["equal"].values()), end["analytics_totals"]
    doc = httpx.get(f"{urls['search']}/documents/{pids[0]}").json()
    assert doc["version"] == 4 and doc["description"] == "v2"
    lag = httpx.get(f"{urls['search']}/admin/cdc/search/lag").json()
    mine = [it for it in lag["items"] if it["commit_ms"] >= t0_ms]   # this test's changes
    assert len(mine) >= 5 and all(0 <= it["applied_ms"] - it["commit_ms"] < 30_000 for it in mine)
    # Each consumer's own backlog endpoint reads the relay's count under its
    # own Redis ACL user (it could not while the count lived under cdc:*).
    import redis
    with redis.Redis.from_url(stack.redis.url) as r:
        published = int(r.get("bus:seq:catalog") or 0)
    b = httpx.get(f"{urls['search']}/admin/cdc/search/backlog").json()
    assert b["up"] is True and b["published"] >= published >= 3, (b, published)
    assert b["backlog"] == 0, b          # quiet: everything was applied


# -- a consumer crash, on a stack of its own (the planted bug corrupts analytics) ----------

@pytest.fixture(scope="module")
def cdc_stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("cdc-state")
    with fresh_stack(StackOptions(state_dir=state, base_port=TEST_BASE_PORT + 500),
                     log=lambda *a: None) as backend:
        yield backend
        final = backend.info()
    assert not wait_no_leftovers(final)


def _crash_and_restart(backend, *, mutation: str | None) -> dict:
    """analytics dies (as kill -9 would) right after applying its first batch and
    before acknowledging it; then it is started again (with `mutation` if any)."""
    urls = backend.info().urls
    backend.actions().stop("analytics")
    rec = backend.stack().start_part("analytics", extra_env={
        "MSDB_ALLOW_MUTATIONS": "1", "MSDB_CDC_CRASH_AFTER_APPLY": "analytics:1"})
    pids, user = _world(urls, 1)
    with httpx.Client(timeout=30) as c:
        for _ in range(10):
            _order(c, urls, user, pids[0])
    deadline = time.time() + 30
    while procs.is_running(rec) and time.time() < deadline:
        time.sleep(0.2)
    assert not procs.is_running(rec), "the crash switch did not fire"
    env = {"MSDB_ALLOW_MUTATIONS": "1", "MSDB_MUTATION": mutation} if mutation else {}
    backend.stack().start_part("analytics", extra_env=env)
    wait_cdc_quiet(backend.info().redis.url, 60)
    lag = httpx.get(f"{urls['analytics']}/admin/cdc/analytics/lag").json()
    return {"end": compare_cdc(urls), "skipped": lag["skipped"], "applied": lag["applied"]}


def _cdc_checks(tmp_path, end: dict) -> dict:
    run = make_run(tmp_path / "run", scenario="cdc-lag",
                   files={"cdc_end_state.json": {"quiesce_s": 1.0, "problem": None, "state": end}})
    checks, _ = CdcChecks()(run, {"cdc_mismatches_max": 0, "cdc_catch_up_s_max": 30,
                                  "cdc_lag_p99_ms_max": 10_000, "cdc_quiesce_s": 60})
    return {c.name: c for c in checks}


@pytest.mark.slow
def test_consumer_crash_between_apply_and_ack_gives_exactly_once(cdc_stack, tmp_path):
    got = _crash_and_restart(cdc_stack, mutation=None)
    assert got["skipped"] > 0, "the unacknowledged batch was not delivered again"
    checks = _cdc_checks(tmp_path, got["end"])
    assert checks["analytics-totals-exactly-once"].verdict == "pass", checks
    assert checks["analytics-has-every-order-once"].verdict == "pass", checks


@pytest.mark.slow
def test_a_consumer_without_its_lsn_guard_is_caught(cdc_stack, tmp_path):
    """Planted bug: the restarted consumer applies the re-delivered batch again."""
    got = _crash_and_restart(cdc_stack, mutation="cdc-no-lsn-guard")
    c = _cdc_checks(tmp_path, got["end"])["analytics-totals-exactly-once"]
    assert c.verdict == "fail", c
    assert c.details["got"]["orders"] > c.details["expected"]["orders"]


@pytest.mark.slow   # several seconds: the full suite runs it, the fast loop does not
def test_no_start_up_artefact_in_the_replica_lag(stack, tmp_path):
    """Calibration with no fault: beats written while the monitor was still
    connecting to the replica are not lag.  The first measured beats and the
    samples stay within a few poll intervals of the idle lag."""
    m = LagMonitor(stack, tmp_path)
    # Beats committed before the poller can watch: connect the writer first.
    m.committed[10**9] = time.time() - 5.0     # a beat "committed" 5 s before the start
    m.start()
    try:
        time.sleep(2.0)
    finally:
        m.stop()
    lags = [float(r.split(",")[3]) for r in (tmp_path / "heartbeats.csv").read_text().splitlines()[1:]]
    samples = [r.split(",")[1] for r in (tmp_path / "replication.csv").read_text().splitlines()[1:]]
    assert len(lags) >= 10
    # idle lag is a few ms; "a few poll intervals" is generous on a busy CI machine
    assert max(lags) < 100, sorted(lags)[-5:]
    assert max(float(v) for v in samples if v) < 100, samples
