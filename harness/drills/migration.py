"""`msdb drill migration`: a schema change under load (seed §10.1).

A migration plan (scenarios/migrations/*.yaml, docs/drills.md) is a list of
steps: SQL (applied through yoyo, one versioned migration per step, as the
orders service's own role), batched backfills, the start of the orders
service's new version ("green") beside the old one ("blue"), the switch of
the workload's traffic between them through a fault-proxy link of the
drill's own (`orders-public`), and waits.

The drill starts a fresh stack, lints the plan with squawk, prefills
order_items, runs a workload through `orders-public`, and measures a window
before, the change, and a window after.  While the change runs, a sampler
reads pg_locks/pg_stat_activity every SAMPLE_S for workload backends waiting
(directly or behind another waiter) on a lock held by the migration's
backend (application_name `msdb-migration`).  drill.json gets the steps and
their durations, the longest such wait, the workload's requests and errors
per window, p99 per window and squawk's findings; harness.checks.drill
judges it.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import requests
from yoyo import get_backend, read_migrations

from chaos.client import ToxiproxyServer
from reports.measures import percentile
from scenarios.seed import seed

from ..durations import parse_duration
from ..errors import ConfigError, InfraError
from ..files import read_yaml
from ..run.rundir import RunDir
from ..stack import procs
from ..stack.embedded import wait_service
from ..stack.topology import SERVICE_BY_NAME
from ..utc import utc
from .stack import DrillStack

__all__ = ["MigrationPlan", "PlanStep", "load_plan", "lint_plan", "migration_drill",
           "PLANS_DIR", "BLOCKING_RULES", "APP_NAME"]

PLANS_DIR = Path(__file__).resolve().parent.parent.parent / "scenarios" / "migrations"
APP_NAME = "msdb-migration"
# squawk rules whose statement takes a lock that stops reads or writes for as
# long as it runs (or rewrites the table): migration-lint fails on these; the
# other findings (timeouts, robustness) are listed and do not fail it.
BLOCKING_RULES = frozenset({
    "adding-field-with-default", "require-concurrent-index-creation", "changing-column-type",
    "adding-not-nullable-field", "setting-not-nullable-field", "constraint-missing-not-valid",
    "disallowed-unique-constraint", "adding-foreign-key-constraint", "adding-serial-primary-key-field",
    "adding-required-field", "ban-alter-domain-with-add-constraint", "renaming-column",
    "renaming-table", "ban-drop-column", "ban-drop-table", "require-concurrent-index-deletion",
})
PLAN_KEYS = ("description", "prefill_rows", "before", "after", "steps")
STEP_KINDS = ("sql", "sql_file", "start", "switch", "wait")
STEP_KEYS = ("name", *STEP_KINDS, "batch", "transactional")
COLORS = ("blue", "green")
GREEN_OFFSET = 29            # free in the dedicated embedded block (topology.py)
PUBLIC_OFFSET = 27           # the drill's own proxy listener for the workload


@dataclass(frozen=True)
class PlanStep:
    name: str
    kind: str                       # sql | start | switch | wait
    sql: str | None = None
    batch: int | None = None
    transactional: bool = True
    target: str | None = None       # start/switch: green|blue
    wait_s: float | None = None


@dataclass(frozen=True)
class MigrationPlan:
    name: str
    path: Path
    description: str
    steps: tuple[PlanStep, ...]
    prefill_rows: int = 100_000
    before_s: float = 10.0
    after_s: float = 10.0
    raw: dict = field(default_factory=dict, repr=False, compare=False)


def _bad(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def load_plan(name_or_file: str) -> MigrationPlan:
    """A plan by name (scenarios/migrations/NAME.yaml) or path, strictly read:
    an unknown key, a missing one or a bad value is exit 2 naming it."""
    p = Path(name_or_file)
    if not p.suffix and not p.exists():
        p = PLANS_DIR / f"{name_or_file}.yaml"
        if not p.exists():
            known = sorted(x.stem for x in PLANS_DIR.glob("*.yaml"))
            raise ConfigError(f"--plan {name_or_file!r}: no such plan (known: {', '.join(known)}; "
                              f"or give a file)")
    raw = read_yaml(p, "--plan")
    where = str(p)
    if not isinstance(raw, dict):
        raise _bad(where, "expected a mapping with `steps`")
    for k in raw:
        if k not in PLAN_KEYS:
            raise _bad(where, f"{k}: unknown key (known: {', '.join(PLAN_KEYS)})")
    if not isinstance(raw.get("steps"), list) or not raw["steps"]:
        raise _bad(where, "steps: missing key or empty (a list of steps)")
    prefill = raw.get("prefill_rows", 100_000)
    if isinstance(prefill, bool) or not isinstance(prefill, int) or not 0 <= prefill <= 5_000_000:
        raise _bad(where, f"prefill_rows: expected an integer 0..5000000, got {prefill!r}")
    before = parse_duration(str(raw.get("before", "10s")), f"{where}: before")
    after = parse_duration(str(raw.get("after", "10s")), f"{where}: after")
    steps, names, started = [], set(), False
    for i, s in enumerate(raw["steps"]):
        at = f"{where}: steps[{i}]"
        if not isinstance(s, dict):
            raise _bad(at, "expected a mapping")
        for k in s:
            if k not in STEP_KEYS:
                raise _bad(at, f"{k}: unknown key (known: {', '.join(STEP_KEYS)})")
        name = s.get("name")
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise _bad(at, f"name: missing or not a word (letters, digits, - and _): {name!r}")
        if name in names:
            raise _bad(at, f"name: {name!r} appears twice")
        names.add(name)
        at = f"{where}: steps[{i}] ({name})"
        kinds = [k for k in STEP_KINDS if k in s]
        if len(kinds) != 1:
            raise _bad(at, f"needs exactly one of {', '.join(STEP_KINDS)}, has "
                       f"{', '.join(kinds) or 'none'}")
        kind = kinds[0]
        if kind not in ("sql", "sql_file"):
            for k in ("batch", "transactional"):
                if k in s:
                    raise _bad(at, f"{k}: only for sql or sql_file steps")
        if kind in ("sql", "sql_file"):
            if kind == "sql_file":
                f = (p.parent / str(s["sql_file"])).resolve()
                if not f.is_file():
                    raise _bad(at, f"sql_file: {s['sql_file']!r} is not a file (relative to the plan)")
                sql = f.read_text()
            else:
                sql = s["sql"]
            if not isinstance(sql, str) or not sql.strip():
                raise _bad(at, f"{kind}: empty SQL")
            batch = s.get("batch")
            if batch is not None:
                if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
                    raise _bad(at, f"batch: expected a positive integer, got {batch!r}")
                if ":batch" not in sql:
                    raise _bad(at, "batch: the SQL must contain :batch (the rows per batch)")
            tr = s.get("transactional", True)
            if not isinstance(tr, bool):
                raise _bad(at, f"transactional: expected true or false, got {tr!r}")
            steps.append(PlanStep(name, "sql", sql=sql, batch=batch, transactional=tr))
        elif kind in ("start", "switch"):
            target = s[kind]
            if target not in COLORS:
                raise _bad(at, f"{kind}: expected one of {', '.join(COLORS)}, got {target!r}")
            if kind == "start" and target != "green":
                raise _bad(at, "start: only green can be started (blue is the running service)")
            if kind == "start":
                started = True
            if kind == "switch" and target == "green" and not started:
                raise _bad(at, "switch: green before a `start: green` step")
            steps.append(PlanStep(name, kind, target=target))
        else:
            steps.append(PlanStep(name, "wait", wait_s=parse_duration(str(s["wait"]), f"{at}: wait")))
    return MigrationPlan(name=p.stem, path=p, description=str(raw.get("description") or ""),
                         steps=tuple(steps), prefill_rows=prefill, before_s=before, after_s=after,
                         raw=raw)


def _squawk() -> str | None:
    here = Path(sys.executable).parent / "squawk"
    return str(here) if here.exists() else shutil.which("squawk")


def lint_plan(plan: MigrationPlan, out_dir: Path) -> dict:
    """squawk over each SQL step (a file per step, `:batch` replaced by its
    number); {"tool", "version", "findings": [...], "error"}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = _squawk()
    if exe is None:
        return {"tool": "squawk", "version": None, "findings": [],
                "error": "squawk not found (pip install squawk-cli)"}
    version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    findings, files = [], {}
    for i, st in enumerate(plan.steps, 1):
        if st.kind != "sql":
            continue
        f = out_dir / f"{i:03d}_{st.name}.sql"
        f.write_text(st.sql.replace(":batch", str(st.batch or 1)))
        files[str(f)] = st.name
    if not files:
        return {"tool": "squawk", "version": version, "findings": [], "error": None}
    r = subprocess.run([exe, "--reporter", "json", *files], capture_output=True, text=True, timeout=60)
    try:
        raw = json.loads(r.stdout or "[]")
    except ValueError:
        return {"tool": "squawk", "version": version, "findings": [],
                "error": f"squawk exited {r.returncode}: {(r.stderr or r.stdout)[:500]}"}
    for x in raw:
        findings.append({"step": files.get(x.get("file"), x.get("file")), "rule": x.get("rule_name"),
                         "level": x.get("level"), "line": (x.get("line") or 0) + 1,
                         "message": x.get("message"), "help": x.get("help"),
                         "blocking": x.get("rule_name") in BLOCKING_RULES})
    return {"tool": "squawk", "version": version, "findings": findings, "error": None}


# -- yoyo: one versioned migration per SQL step ----------------------------------------


def _write_migration(d: Path, i: int, st: PlanStep, prev: str | None) -> str:
    """The step as a yoyo migration file in the run directory; its id."""
    mid = f"{i:03d}_{st.name.replace('-', '_')}"
    dep = f"__depends__ = {{{prev!r}}}\n" if prev else ""
    if st.batch:
        # A backfill: one short transaction per batch (autocommit), until none is left.
        body = (f'"""{st.name}: backfill in batches of {st.batch}."""\n'
                f"from yoyo import step\n{dep}__transactional__ = False\nSQL = {st.sql.replace(':batch', str(st.batch))!r}\n"
                "BATCHES = []\n\n\ndef backfill(conn):\n    cur = conn.cursor()\n    while True:\n"
                "        cur.execute(SQL)\n        BATCHES.append(cur.rowcount)\n"
                "        if cur.rowcount <= 0:\n            break\n\n\nsteps = [step(backfill)]\n")
        (d / f"{mid}.py").write_text(body)
    else:
        head = [f"-- {st.name}"]
        if prev:
            head.append(f"-- depends: {prev}")
        if not st.transactional:
            head.append("-- transactional: false")
        (d / f"{mid}.sql").write_text("\n".join(head) + "\n" + st.sql.strip() + "\n")
    return mid


class Migrator:
    """Applies the plan's SQL steps through yoyo as the orders role, one at a time."""

    def __init__(self, *, port: int, dbname: str, user: str, password: str, mig_dir: Path):
        self.url = (f"postgresql+psycopg://{quote(user, safe='')}:{quote(password, safe='')}"
                    f"@127.0.0.1:{port}/{quote(dbname, safe='')}?sslmode=disable"
                    f"&application_name={APP_NAME}")
        self.dir = mig_dir

    def apply(self, mid: str) -> dict:
        backend = get_backend(self.url)
        migrations = read_migrations(str(self.dir))
        one = migrations.filter(lambda m: m.id == mid)
        with backend.lock():
            backend.apply_migrations(backend.to_apply(one))
        m = one[0]
        batches = getattr(getattr(m, "module", None), "BATCHES", None)
        return {"batches": len(batches) - 1, "rows": sum(b for b in batches if b > 0)} if batches else {}


# -- the lock sampler ---------------------------------------------------------------------


class LockSampler:
    """Every SAMPLE_S: which workload backends wait on a lock the migration's
    backend holds, directly or queued behind another such waiter.  The wait
    of each (pid, waitstart) is its longest observed age."""
    SAMPLE_S = 0.05
    QUERY = ("SELECT a.pid, a.application_name, l.waitstart, clock_timestamp(), "
             "pg_blocking_pids(a.pid), left(a.query, 200), l.mode, l.relation::regclass::text "
             "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
             "WHERE NOT l.granted AND a.datname = %s")

    def __init__(self, connect, dbname: str):
        self.connect, self.dbname = connect, dbname
        self.waits: dict[tuple, dict] = {}
        self.samples = 0
        self.step: str | None = None
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True, name="lock-sampler")

    def start(self) -> "LockSampler":
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=10)

    def _loop(self) -> None:
        conn = self.connect(self.dbname)
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    self._sample(conn)
                except Exception as e:   # noted; a sampler gap must show in drill.json
                    self.errors.append(f"{type(e).__name__}: {e}"[:300])
                    try:
                        conn.close()
                    except Exception:
                        pass
                    conn = self.connect(self.dbname)
                self._stop.wait(max(0.0, self.SAMPLE_S - (time.monotonic() - t0)))
        finally:
            conn.close()

    def _sample(self, conn) -> None:
        mig = {r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APP_NAME,))}
        rows = conn.execute(self.QUERY, (self.dbname,)).fetchall()
        self.samples += 1
        if not mig or not rows:
            return
        blockers = {r[0]: set(r[4] or ()) for r in rows}
        # A waiter is imposed by the migration if its chain of blockers reaches it.
        imposed = set()
        changed = True
        while changed:
            changed = False
            for pid, bs in blockers.items():
                if pid not in imposed and (bs & mig or bs & imposed):
                    imposed.add(pid)
                    changed = True
        for pid, app, waitstart, now, bs, query, mode, rel in rows:
            if pid not in imposed or app == APP_NAME or waitstart is None:
                continue
            ms = (now - waitstart).total_seconds() * 1000
            key = (pid, waitstart.isoformat())
            w = self.waits.get(key)
            if w is None or ms > w["wait_ms"]:
                self.waits[key] = {"pid": pid, "application_name": app, "wait_ms": round(ms, 1),
                                   "waitstart": waitstart.isoformat(), "mode": mode, "relation": rel,
                                   "query": query, "step": self.step,
                                   "direct": bool(set(bs) & mig)}

    def longest(self) -> dict | None:
        return max(self.waits.values(), key=lambda w: w["wait_ms"], default=None)


# -- the workload ------------------------------------------------------------------------


class Workload:
    """Threads that order (POST /orders) and read an order back (GET
    /orders/{id}) through `orders-public`.  Each request opens its own
    connection (Connection: close), so a switch of the proxy takes every
    following request to the new upstream."""

    def __init__(self, url: str, data: dict, threads: int, rd: RunDir):
        self.url, self.data, self.n = url, data, threads
        self.records: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ts: list[threading.Thread] = []
        self._orders: list[str] = []
        self._out = open(rd.path / "requests.jsonl", "w")

    def _one(self, s: requests.Session, name: str, method: str, path: str, *, idem: str | None = None,
             retry: bool = False, **kw) -> requests.Response | None:
        headers = {"Connection": "close", **({"Idempotency-Key": idem} if idem else {})}
        t0 = time.time()
        rec = {"name": name, "start": t0, **({"retry": True} if retry else {})}
        r = None
        try:
            r = s.request(method, self.url + path, timeout=10, headers=headers, **kw)
            rec.update(status=r.status_code, ok=r.status_code in (200, 201))
            if not rec["ok"]:
                rec["error"] = r.text[:200]
        except requests.RequestException as e:
            rec.update(status=0, ok=False, error=f"{type(e).__name__}: {e}"[:200])
            # A connection the proxy dropped (a repoint stops and restarts the
            # Toxiproxy listener, as Toxiproxy does) is retried once, as a client
            # with idempotency keys does; the attempt is kept, marked retried.
            if isinstance(e, requests.ConnectionError) and not retry:
                rec["retried"] = True
        rec["ms"] = round((time.time() - t0) * 1000, 2)
        with self._lock:
            self.records.append(rec)
            self._out.write(json.dumps(rec) + "\n")
        if rec.get("retried"):
            time.sleep(0.05)
            return self._one(s, name, method, path, idem=idem, retry=True, **kw)
        return r

    def _loop(self) -> None:
        s = requests.Session()
        s.trust_env = False
        while not self._stop.is_set():
            body = {"user_id": random.choice(self.data["users"])["id"],
                    "items": [{"product_id": p, "quantity": 1}
                              for p in random.sample(self.data["products"], 2)]}
            r = self._one(s, "POST /orders", "POST", "/orders", json=body,
                          idem=f"mig-{uuid.uuid4().hex}")
            if r is not None and r.status_code == 201:
                doc = r.json()
                with self._lock:
                    self._orders.append((doc.get("order") or doc)["id"])
            with self._lock:
                oid = random.choice(self._orders) if self._orders else None
            if oid:
                self._one(s, "GET /orders/{id}", "GET", f"/orders/{oid}")

    def start(self) -> None:
        self._ts = [threading.Thread(target=self._loop, daemon=True, name=f"load-{i}")
                    for i in range(self.n)]
        for t in self._ts:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._ts:
            t.join(timeout=15)
        self._out.close()


def window(records: list[dict], lo: float, hi: float) -> dict:
    rs = [r for r in records if lo <= r["start"] < hi]
    ms = [r["ms"] for r in rs if not r.get("retried")]
    failed = [r for r in rs if not r["ok"] and not r.get("retried")]
    return {"start_utc": utc(lo), "end_utc": utc(hi), "seconds": round(hi - lo, 3),
            "requests": sum(not r.get("retried") for r in rs), "failed": len(failed),
            "retried": sum(bool(r.get("retried")) for r in rs),
            "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms, default=None),
            "errors": sorted({f"{r['name']} {r['status']}: {r.get('error', '')[:80]}" for r in failed})[:10]}


# -- the drill ---------------------------------------------------------------------------


def _prefill(conn_factory, dbname: str, rows: int, data: dict) -> float:
    """Old data for the change to work on: rows/2 confirmed orders with two
    lines each, inserted directly (the API would take minutes)."""
    t0 = time.monotonic()
    if rows <= 0:
        return 0.0
    with conn_factory(dbname) as c:
        c.execute("SET ROLE order_service")
        c.execute(
            "WITH o AS (INSERT INTO orders (user_id, total_amount, status) "
            "SELECT %(u)s::uuid, 20.00, 'CONFIRMED' FROM generate_series(1, %(n)s) RETURNING id) "
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price) "
            "SELECT o.id, p.pid, 1, 10.00 FROM o CROSS JOIN unnest(%(p)s::uuid[]) AS p(pid)",
            {"u": data["users"][0]["id"], "n": rows // 2, "p": data["products"][:2]})
        c.execute("ANALYZE order_items")
    return time.monotonic() - t0


def migration_drill(*, plan: MigrationPlan, threads: int, state_dir: Path, base_port: int,
                    rd: RunDir) -> dict:
    svc = SERVICE_BY_NAME["orders"]
    lint = lint_plan(plan, rd.path / "lint")
    blocking = [f for f in lint["findings"] if f["blocking"]]
    print(f"  squawk {lint['version'] or ''}: {len(lint['findings'])} finding(s), {len(blocking)} "
          f"on a blocking lock{'; ' + lint['error'] if lint['error'] else ''}", flush=True)
    mig_dir = rd.path / "migrations"
    mig_dir.mkdir(exist_ok=True)
    ids, prev = {}, None
    for i, st in enumerate(plan.steps, 1):
        if st.kind == "sql":
            ids[st.name] = prev = _write_migration(mig_dir, i, st, prev)
    steps_out: list[dict] = []
    with DrillStack(state_dir, base_port, 900) as ds:
        inst = ds.instance("orders")
        data = seed(ds.info.urls, users=8, products=8, stock=10_000_000)
        t_pre = _prefill(inst.connect, svc.database, plan.prefill_rows, data)
        print(f"  prefilled {plan.prefill_rows} order_items in {t_pre:.1f} s", flush=True)
        blue = ds.info.services["orders"].url.rsplit(":", 1)[1]
        green_port = base_port + GREEN_OFFSET
        api = ToxiproxyServer.at(ds.info.proxy.api, timeout=10)
        public_port = base_port + PUBLIC_OFFSET
        api.create("orders-public", upstream=f"127.0.0.1:{blue}", listen=f"127.0.0.1:{public_port}")
        migrator = Migrator(port=inst.port, dbname=svc.database, user=svc.role,
                            password=ds.stack.sec["roles"][svc.role], mig_dir=mig_dir)
        load = Workload(f"http://127.0.0.1:{public_port}", data, threads, rd)
        sampler = LockSampler(inst.connect, svc.database)
        serving = "blue"
        load.start()
        try:
            t_before = time.time()
            print(f"  workload: {threads} threads through orders-public; before window "
                  f"{plan.before_s:g} s", flush=True)
            time.sleep(plan.before_s)
            sampler.start()
            t_change = time.time()
            for st in plan.steps:
                sampler.step = st.name
                t0 = time.time()
                rec = {"name": st.name, "kind": st.kind, "start_utc": utc(t0), "status": "ok"}
                try:
                    if st.kind == "sql":
                        rec["migration"] = ids[st.name]
                        rec["transactional"] = st.transactional
                        rec.update(migrator.apply(ids[st.name]))
                    elif st.kind == "start":
                        env = {**ds.stack.service_env("orders"), "ORDERS_LINE_TOTAL": "1"}
                        _, prc = procs.spawn("orders-green", [sys.executable, "-m", "system_under_test",
                                                             "orders", "--port", str(green_port)],
                                             log_path=ds.options.state_dir / "logs" / "svc-orders-green.log",
                                             env=env, cwd=ds.options.state_dir)
                        ds.adopt(prc, "process")
                        wait_service("orders-green", green_port, prc)
                        rec["port"] = green_port
                    elif st.kind == "switch":
                        port = green_port if st.target == "green" else int(blue)
                        ds.backend.repoint("orders-public", f"127.0.0.1:{port}")
                        serving = st.target
                        rec["to"] = st.target
                    else:
                        time.sleep(st.wait_s)
                except Exception as e:
                    rec.update(status="error", error=f"{type(e).__name__}: {e}"[:500])
                    raise
                finally:
                    rec["seconds"] = round(time.time() - t0, 3)
                    steps_out.append(rec)
                    print(f"  step {st.name} ({st.kind}): {rec['seconds']:.2f} s {rec['status']}", flush=True)
            sampler.step = None
            t_after = time.time()
            time.sleep(plan.after_s)
            t_end = time.time()
        finally:
            sampler.stop()
            load.stop()
        recs = load.records
        completed = len(steps_out) == len(plan.steps) and all(s["status"] == "ok" for s in steps_out)
        longest = sampler.longest()
        windows = {"before": window(recs, t_before, t_change), "during": window(recs, t_change, t_after),
                   "after": window(recs, t_after, t_end)}
        with inst.connect(svc.database) as c:
            applied = [r[0] for r in c.execute(
                "SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc")]
            cols = [r[0] for r in c.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'order_items' "
                "ORDER BY ordinal_position")]
            nulls = (c.execute("SELECT count(*) FROM order_items WHERE line_total IS NULL").fetchone()[0]
                     if "line_total" in cols else None)
        metrics = {
            "plan": plan.name, "plan_file": str(plan.path), "steps_completed": completed,
            "prefill_rows": plan.prefill_rows, "workload_threads": threads,
            "blocked_ms_max": longest["wait_ms"] if longest else 0.0,
            "blocked_waits": len(sampler.waits), "lock_samples": sampler.samples,
            "lock_sample_interval_ms": LockSampler.SAMPLE_S * 1000,
            "failed_during_change": windows["during"]["failed"],
            "failed_requests": sum(w["failed"] for w in windows.values()),
            "retried_connections": sum(w["retried"] for w in windows.values()),
            "requests": sum(w["requests"] for w in windows.values()),
            "p99_before_ms": windows["before"]["p99_ms"], "p99_during_ms": windows["during"]["p99_ms"],
            "p99_after_ms": windows["after"]["p99_ms"], "max_during_ms": windows["during"]["max_ms"],
            "change_seconds": round(t_after - t_change, 3), "serving_at_end": serving,
            "lint_findings": len(lint["findings"]), "lint_blocking_findings": len(blocking),
            "order_items_columns": cols, "line_total_nulls": nulls, "yoyo_applied": applied,
        }
        rd.write_json("drill.json", {
            "metrics": metrics, "steps": steps_out, "windows": windows, "lint": lint,
            "longest_wait": longest,
            "waits": sorted(sampler.waits.values(), key=lambda w: -w["wait_ms"])[:50],
            "sampler_errors": sampler.errors[:20]})
    return metrics
