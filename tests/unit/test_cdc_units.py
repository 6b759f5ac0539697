"""The warehouse's CDC apply on its own (real DuckDB, no server): LSN-guarded,
totals from after - before, re-delivery dropped, and the planted bug counted."""

from __future__ import annotations

import uuid

from system_under_test.analytics import warehouse as W


def _events(oid: str, pid: str) -> list[dict]:
    return [
        {"op": "c", "before": None, "after": {"id": oid, "user_id": str(uuid.uuid4()), "status": "PENDING",
                                              "total_amount": "5.00", "created_at": None},
         "source": {"table": "orders", "lsn": 10}},
        {"op": "c", "before": None, "after": {"id": str(uuid.uuid4()), "order_id": oid, "product_id": pid,
                                              "quantity": 2, "unit_price": "2.50"},
         "source": {"table": "order_items", "lsn": 11}},
        {"op": "u", "before": {"id": oid, "status": "PENDING", "total_amount": "5.00"},
         "after": {"id": oid, "user_id": None, "status": "CONFIRMED", "total_amount": "5.00", "created_at": None},
         "source": {"table": "orders", "lsn": 12}},
        {"op": "t", "before": None, "after": None, "source": {"table": "orders", "lsn": 13}},
    ]


def test_apply_is_idempotent_by_lsn(tmp_path):
    w = W.Warehouse(str(tmp_path / "a.duckdb"))
    oid, pid = str(uuid.uuid4()), str(uuid.uuid4())
    ev = _events(oid, pid)
    assert len(w.apply_changes(ev)) == 3
    assert w.apply_changes(ev) == []                   # a re-delivered batch changes nothing
    assert w.apply_changes(ev[2:3]) == []              # nor does an old change arriving alone
    assert w.totals() == {"orders": 1, "confirmed": 1, "cancelled": 0, "revenue": "5.00"}
    assert w.facts(10, 0) == [{"order_id": oid, "status": "CONFIRMED", "total_amount": "5.00",
                               "item_count": 2, "source_lsn": 12}]
    # changes split across batches end the same
    w2 = W.Warehouse(str(tmp_path / "b.duckdb"))
    for e in ev:
        w2.apply_changes([e])
    assert w2.totals() == w.totals() and w2.facts(10, 0) == w.facts(10, 0)


def test_without_the_guard_a_redelivery_counts_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "NO_GUARD", True)
    w = W.Warehouse(str(tmp_path / "a.duckdb"))
    ev = _events(str(uuid.uuid4()), str(uuid.uuid4()))
    w.apply_changes(ev)
    w.apply_changes(ev)
    assert w.totals()["orders"] == 2                   # what the end-state check catches


def test_the_mutation_switch_needs_the_allow_flag(monkeypatch):
    monkeypatch.setenv("MSDB_MUTATION", "cdc-no-lsn-guard")
    monkeypatch.delenv("MSDB_ALLOW_MUTATIONS", raising=False)
    assert W._guard_disabled() is False
    monkeypatch.setenv("MSDB_ALLOW_MUTATIONS", "1")
    assert W._guard_disabled() is True


def test_the_cdc_end_state_converges_only_when_every_target_equals_its_source():
    """harness.run.endstate compares again until this holds (or its budget
    runs out): a difference that converged is not judged, one that lasts is."""
    import subprocess
    import sys
    from pathlib import Path
    code = r"""
import locust  # gevent first
from harness.run.endstate import _cdc_converged
same = {"missing": 0, "extra": 0, "different": 0}
ok = {"search": same, "analytics": same, "user_replica": same,
      "analytics_totals": {"equal": {"orders": True, "revenue": True}}}
assert _cdc_converged(ok)
assert not _cdc_converged({**ok, "search": {**same, "different": 14}})
assert not _cdc_converged({**ok, "user_replica": {**same, "missing": 1}})
assert not _cdc_converged({**ok, "analytics_totals": {"equal": {"orders": True, "revenue": False}}})
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
