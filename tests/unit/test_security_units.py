"""The audit-trail parser, the anomaly detector, the secret scan and the
`security` checks, on made-up records and run directories (no server)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness.checks.security import SecurityChecks
from harness.security.auditlog import LogTail, parse_line
from harness.security.detector import Detector, DetectorConfig
from harness.security.secretscan import fingerprints, scan, scan_text
from tests.rundirs import make_run

SLO = {"detect_within_s_max": 10.0, "false_positives_max": 0, "audit_missing_max": 0}
T0 = 1_790_000_000.0


def _log(msg: str, sev: str = "LOG", user: str = "users_svc", db: str = "user_service_db",
         ts: str = "2026-12-02 01:00:00.250 UTC", app: str = "svc") -> str:
    return json.dumps({"timestamp": ts, "user": user, "dbname": db, "error_severity": sev,
                       "message": msg, "application_name": app})


# -- the audit log ---------------------------------------------------------------------

def test_a_pgaudit_record_is_read_with_role_database_class_object_rows_and_time():
    line = _log('AUDIT: SESSION,3,1,READ,SELECT,TABLE,public.users,"SELECT id, email FROM users '
                'WHERE id = $1",<not logged>,1')
    r = parse_line(line, "pg-main")
    assert (r.kind, r.role, r.db, r.cls, r.command, r.object, r.rows, r.instance) == \
        ("access", "users_svc", "user_service_db", "READ", "SELECT", "public.users", 1, "pg-main")
    assert r.statement.startswith("SELECT id, email")
    assert r.time == pytest.approx(1796173200.25)


@pytest.mark.parametrize("msg,kind,role,db", [
    ('password authentication failed for user "catalog_svc"', "auth_fail", "catalog_svc",
     "catalog_service_db"),
    ('permission denied for database "order_service_db"', "db_denied", "users_svc", "order_service_db"),
    ('no pg_hba.conf entry for host "127.0.0.1", user "users_svc", database "user_service_db", '
     'no encryption', "hba_reject", "users_svc", "user_service_db"),
])
def test_refused_logins_are_read(msg, kind, role, db):
    r = parse_line(_log(msg, sev="FATAL", user=role if kind != "auth_fail" else None,
                        db=db if kind != "db_denied" else "order_service_db"))
    assert (r.kind, r.role, r.db) == (kind, role, db)


@pytest.mark.parametrize("line", ["not json", json.dumps([1]), _log("checkpoint starting: time"),
                                  _log("some error", sev="ERROR"),
                                  _log("AUDIT: SESSION,1", ts="yesterday")])
def test_other_lines_are_not_records(line):
    assert parse_line(line) is None


def test_the_tail_reads_only_whole_new_lines(tmp_path):
    p = tmp_path / "postgresql.json"
    one = _log('AUDIT: SESSION,1,1,WRITE,INSERT,TABLE,public.orders,"INSERT",<not logged>,1')
    p.write_text(one + "\n" + one[:20])
    t = LogTail(p)
    assert len(t.read()) == 1
    with open(p, "a") as f:
        f.write(one[20:] + "\n")
    assert [r.object for r in t.read()] == ["public.orders"]
    assert t.read() == []
    assert LogTail(p, from_end=True).read() == []


# -- the detector ----------------------------------------------------------------------

def _acc(t, role="payments_svc", obj="public.payments", rows=1, cls="READ"):
    from harness.security.auditlog import AuditRecord
    return AuditRecord(time=t, kind="access", role=role, db="x", cls=cls, object=obj, rows=rows)


def _fail(t, kind="auth_fail", role="catalog_svc", db="catalog_service_db"):
    from harness.security.auditlog import AuditRecord
    return AuditRecord(time=t, kind=kind, role=role, db=db)


OWN = {"users_svc": "user_service_db", "catalog_svc": "catalog_service_db",
       "payments_svc": "payment_service_db"}


def test_one_cross_database_attempt_is_flagged():
    d = Detector(OWN)
    a = d.feed(_fail(T0, "db_denied", "users_svc", "order_service_db"), T0 + 0.3)
    assert [x.kind for x in a] == ["cross-database"] and a[0].detected_at == T0 + 0.3
    assert d.feed(_fail(T0, "db_denied", "users_svc", "user_service_db"), T0) == []


def test_failed_logins_are_flagged_at_the_threshold_and_not_before():
    d = Detector(OWN, cfg=DetectorConfig(failed_logins=5))
    kinds = [[x.kind for x in d.feed(_fail(T0 + i), T0 + i)] for i in range(6)]
    assert kinds == [[], [], [], [], ["failed-logins"], []]   # then the cooldown


def test_failed_logins_spread_beyond_the_window_are_not_flagged():
    d = Detector(OWN, cfg=DetectorConfig(failed_logins=3, failed_window_s=10))
    assert all(d.feed(_fail(T0 + 20 * i), T0) == [] for i in range(6))


def test_a_bulk_read_of_the_users_table_is_flagged_and_a_single_row_is_not():
    d = Detector(OWN)
    assert d.feed(_acc(T0, "users_svc", "public.users", rows=1), T0) == []
    assert d.feed(_acc(T0, "users_svc", "public.orders", rows=500), T0) == []
    assert [x.kind for x in d.feed(_acc(T0, "users_svc", "public.users", rows=60), T0)] == ["bulk-read"]


def test_an_odd_rate_is_measured_against_the_learnt_busiest_bin():
    cfg = DetectorConfig(rate_bin_s=5, rate_factor=3, rate_floor=50)
    d = Detector(OWN, learn_until=T0 + 20, cfg=cfg)
    for i in range(200):                      # 40 per 5 s while learning
        assert d.feed(_acc(T0 + i * 0.1), T0) == []
    assert d.baseline["payments_svc"] == 50
    out = []
    for i in range(149):                      # at most 3 x 50 in one bin: normal
        out += d.feed(_acc(T0 + 100 + i * 0.01), T0)
    assert out == []
    out = [x.kind for i in range(2) for x in d.feed(_acc(T0 + 101.5 + i * 0.001), T0)]
    assert out == ["odd-rate"]


# -- the secret scan -------------------------------------------------------------------

PW = "0123456789abcdef0123456789abcdef"


def test_a_password_is_found_inside_a_dsn_and_nowhere_else(tmp_path):
    fp = fingerprints([PW, "short"])
    assert PW not in json.dumps(fp)
    assert scan_text(f"dsn=postgresql://users_svc:{PW}@127.0.0.1:5432/db".encode(), fp) == 1
    assert scan_text(f'{{"pw": "{PW}"}}'.encode(), fp) == 1
    assert scan_text(PW[:-1].encode() + b"0", fp) == 0
    assert scan_text(b"x" + PW.encode(), fp) == 0        # a longer token is another token
    (tmp_path / "a.log").write_text(f"connect failed: password={PW}\n")
    (tmp_path / "b.csv").write_text("clean\n")
    res = scan(sorted(tmp_path.iterdir()), fp, root=tmp_path)
    assert res["files"] == 2 and res["matches"] == [{"file": "a.log", "tokens": 1}]


def test_a_private_key_leaks_by_its_lines(tmp_path):
    key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQ5d6x1Y2\n" \
          "-----END PRIVATE KEY-----\n"
    fp = fingerprints([key])
    assert scan_text(b"leaked: MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQ5d6x1Y2", fp) >= 1


# -- the checks from a run directory -----------------------------------------------------

def _security_run(tmp_path, *, alerts, intrusions, audit_found=10, let_in=False, leak=False,
                  extra_roles=None):
    fp = fingerprints([PW])
    roles = {"users_svc": {"expected": 10, "found": audit_found, "incomplete": [],
                           "database": "user_service_db"}, **(extra_roles or {})}
    doc = {"tls": True, "transport": [
        {"name": "plaintext-refused", "verdict": "pass", "measured": 0, "threshold": 0, "details": {}}],
        "isolation": {"postgres": {"own": {"users": "accepted"},
                                   "cross": {"users_svc -> order_service_db":
                                             "ACCEPTED" if let_in else "refused: permission denied"}},
                      "redis": {"own": {"users": "allowed"}, "cross": {"users -> orders:x": "refused: NOPERM"}}},
        "audit": {"ops_per_role": 10, "roles": roles},
        "stack_logs_scan": {"files": 3, "bytes": 100, "matches": [], "unscanned": {}}}
    files = {"security.json": doc, "secrets.fingerprints.json": fp,
             "audit.jsonl": json.dumps({"time": T0, "kind": "access", "role": "users_svc"}) + "\n",
             "alerts.jsonl": "".join(json.dumps(a) + "\n" for a in alerts),
             "intrusions.jsonl": "".join(json.dumps(i) + "\n" for i in intrusions)}
    if leak:
        files["lagmon.log"] = f"connecting with password {PW}\n"
    return make_run(tmp_path / "run", scenario="security", files=files,
                    info={"load": {"duration_s": 60}})


def _all_intrusions():
    kinds = ("cross-database", "failed-logins", "bulk-read", "odd-rate")
    return [{"kind": k, "start": T0 + 10 * i, "end": T0 + 10 * i + 2} for i, k in enumerate(kinds)]


def _alerts_for(intrusions, delay=1.5):
    return [{"kind": i["kind"], "role": "r", "db": "d", "at": i["start"] + 1,
             "detected_at": i["start"] + delay, "evidence": "e"} for i in intrusions]


def _verdicts(run):
    checks, _ = SecurityChecks()(run, SLO)
    return {c.name: c.verdict for c in checks}, {c.name: c for c in checks}


def test_a_clean_security_run_passes_every_check(tmp_path):
    its = _all_intrusions()
    v, c = _verdicts(_security_run(tmp_path, alerts=_alerts_for(its), intrusions=its))
    assert set(v.values()) == {"pass"}, v
    assert c["detects-odd-rate"].measured == 1.5
    assert c["no-secret-in-outputs"].details["run_files"] >= 5


def test_each_weakness_fails_its_own_check(tmp_path):
    its = _all_intrusions()
    late = _alerts_for(its)
    late[2] = {**late[2], "detected_at": its[2]["start"] + 11}
    v, _ = _verdicts(_security_run(tmp_path / "a", alerts=late + [
        {"kind": "odd-rate", "role": "x", "db": "y", "at": T0 - 100, "detected_at": T0 - 99,
         "evidence": "normal load"}], intrusions=its))
    assert v["detects-bulk-read"] == "fail" and v["false-positives"] == "fail"
    assert v["detects-odd-rate"] == "pass"
    v, _ = _verdicts(_security_run(tmp_path / "b", alerts=_alerts_for(its)[:3], intrusions=its))
    assert v["detects-odd-rate"] == "fail"
    v, _ = _verdicts(_security_run(tmp_path / "c", alerts=_alerts_for(its), intrusions=its,
                                   audit_found=0, let_in=True, leak=True))
    assert v["audit-trail-complete"] == "fail"
    assert v["db-isolation"] == "fail"
    assert v["no-secret-in-outputs"] == "fail"


def test_with_no_audit_trail_a_missed_intrusion_is_unknown_not_a_detector_failure(tmp_path):
    its = _all_intrusions()
    run = _security_run(tmp_path, alerts=[], intrusions=its)
    (run.path / "audit.jsonl").write_text("")
    v, c = _verdicts(run)
    assert v["detects-bulk-read"] == "unknown" and "no audit record" in c["detects-bulk-read"].details["reason"]
    assert v["false-positives"] == "unknown"


def test_without_probes_the_checks_are_unknown_never_pass(tmp_path):
    run = make_run(tmp_path / "run", scenario="security")
    v, _ = _verdicts(run)
    assert "pass" not in v.values(), v



def test_a_role_whose_service_is_off_postgres_needs_no_records_under_load(tmp_path):
    """--engines seed: the catalog is on MongoDB, so product_service's database
    on PostgreSQL is probed but sees no traffic under load; a role the
    services do use still fails without records."""
    its = _all_intrusions()
    probed = {"expected": 10, "found": 10, "incomplete": [], "database": "product_service_db"}
    v, c = _verdicts(_security_run(tmp_path / "a", alerts=_alerts_for(its), intrusions=its,
                                   extra_roles={"product_service": {**probed, "in_use": False}}))
    assert v["audit-trail-complete"] == "pass", c["audit-trail-complete"].details
    v, c = _verdicts(_security_run(tmp_path / "b", alerts=_alerts_for(its), intrusions=its,
                                   extra_roles={"product_service": probed}))
    assert v["audit-trail-complete"] == "fail"
    assert c["audit-trail-complete"].details["roles_without_records_under_load"] == ["product_service"]


def test_expected_connections_leave_out_a_service_whose_store_is_not_postgres():
    from harness.checks.security import expected_roles
    from harness.stack.info import Database, Engine
    from tests.unit.test_target import info_of
    dbs = {"orders": Database(instance="pg", database="order_service_db", role="order_service",
                              dsn="host=127.0.0.1"),
           "catalog": Database(instance="pg", database="product_service_db", role="product_service",
                               dsn="host=127.0.0.1")}
    info = info_of(databases=dbs)
    assert expected_roles(info) == {"pg": {"order_service", "product_service"}}
    on_mongo = dataclasses.replace(info, engines=(
        Engine(name="relational", kind="postgresql", version="18", stand_in=False),
        Engine(name="catalog", kind="secantusdb", version="0.7", stand_in=True,
               stands_in_for="mongodb")))
    assert on_mongo.off_postgres == {"catalog"}
    assert expected_roles(on_mongo) == {"pg": {"order_service"}}
    on_jsonb = dataclasses.replace(info, engines=(
        Engine(name="catalog", kind="postgresql-jsonb", version="18", stand_in=True,
               stands_in_for="mongodb"),))
    assert expected_roles(on_jsonb) == {"pg": {"order_service", "product_service"}}
