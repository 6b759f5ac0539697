"""The report as an SRE reads it (issue 18 §5): verdicts in sentences with
units and ranges, the fault's own view first, charts without impossible axes,
the SLO in full, the index newest first, and a PDF that stays on the page."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from reports.build import build_index, build_report
from reports.templating import fmt
from reports.verdicts import verdict_row, verdict_rows

DATA = Path(__file__).resolve().parents[1] / "data"
NBSP = "\u00a0"


def _checks(run: str) -> list[dict]:
    return json.loads((DATA / run / "results.json").read_text())["checks"]


def _row(checks: list[dict], name: str):
    return verdict_row(next(c for c in checks if c["name"] == name))


def _plain(s: str) -> str:
    return s.replace(NBSP, " ")


# -- the verdict table, pure -----------------------------------------------------------

@pytest.mark.parametrize("run", ["run-db-latency", "run-capacity"])
def test_every_checked_in_check_reads_as_a_sentence_not_a_dict(run):
    for r in verdict_rows(_checks(run)):
        assert not re.search(r"[{}\[\]]|\w+: \{|: \[\]", r.sentence), (r.name, r.sentence)
        assert r.label and r.label != r.name, r.name


def test_backward_names_get_a_phrase_that_reads_the_right_way_round():
    r = _row(_checks("run-db-latency"), "faults-healed")
    assert r.name == "faults-healed"                       # the API name is kept
    assert r.label == "faults left unhealed" and r.measured == "0" and r.threshold == "at most 0"
    assert r.sentence == "Every fault was healed."
    assert json.loads(r.raw) == {"not_healed": []}       # the raw details stay available


def test_measured_values_and_thresholds_carry_units():
    lat, cap = _checks("run-db-latency"), _checks("run-capacity")
    healthy = _row(lat, "healthy-again-after-heal")
    assert _plain(healthy.measured).endswith(" s") and _plain(healthy.threshold) == "at most 15 s"
    rate = _row(lat, "error-rate-during-fault")
    assert _plain(rate.measured) == "0 %" and _plain(rate.threshold) == "at most 1 %"   # 0.01 as a rate
    knee = _row(cap, "knee-throughput")
    assert _plain(knee.measured) == "37 req/s" and _plain(knee.threshold) == "at least 50 req/s"


def test_a_range_check_shows_its_range():
    r = _row(_checks("run-db-latency"), "injected-latency-observed")
    assert _plain(r.threshold) == "200 ms injected, accepted 160–400 ms"
    assert _plain(r.measured) == "202 ms"
    assert "catalog GET /products" in r.sentence and "before the fault" in r.sentence


def test_unknown_checks_show_their_reason_and_unknown_kinds_still_read():
    reason = "only 3 samples; judging this needs at least 20 (min_samples_p95)"
    r = verdict_row({"name": "p95-latency", "verdict": "unknown", "measured": None, "threshold": 500,
                     "details": {"reason": reason, "samples": 3, "unit": "ms"}})
    assert r.sentence == reason and r.measured == "–" and _plain(r.threshold) == "at most 500 ms"
    crashed = verdict_row({"name": "LoadChecks-judged", "verdict": "unknown", "measured": None,
                           "threshold": None, "details": {"error": "KeyError: 'x'", "traceback": "…"}})
    assert "KeyError" in crashed.sentence and "traceback" not in crashed.raw
    new = verdict_row({"name": "brand-new-check", "verdict": "pass", "measured": 3, "threshold": 5,
                       "details": {"widgets": 3, "seen": {"a": 1}}})
    assert new.label == "brand new check" and new.sentence == "widgets 3."


def test_per_endpoint_and_mirrored_checks_get_their_base_phrase():
    ep = verdict_row({"name": "p99[catalog GET /products]", "verdict": "pass", "measured": 12.34,
                      "threshold": 300, "details": {"unit": "ms"}})
    assert ep.label == "p99 latency of catalog GET /products" and _plain(ep.measured) == "12.3 ms"
    mirrored = verdict_row({"name": "faults-healed[single]", "verdict": "pass", "measured": 0,
                            "threshold": 0, "details": {"not_healed": []}})
    assert mirrored.label == "faults left unhealed (single)"


def test_a_figure_is_never_rounded_onto_its_threshold():
    r = verdict_row({"name": "p95-latency", "verdict": "fail", "measured": 200.4, "threshold": 200,
                     "details": {"unit": "ms", "worst_endpoint": "x"}})
    assert _plain(r.measured) == "200.4 ms"


def test_figures_have_three_significant_digits_and_no_exponent():
    assert [fmt(v) for v in (0.005967, 1524.0, 207.2, 3.571, 0.0, 12345.6)] == \
        ["0.00597", "1524", "207", "3.57", "0", "12346"]


# -- charts ----------------------------------------------------------------------------

def test_pool_axes_never_go_below_zero_and_size_differs_from_available():
    import matplotlib.pyplot as plt
    from reports.charts import pool_figure
    t = list(range(10))
    flat = pd.DataFrame({"service": "orders", "pool": "primary", "t": t, "pool_size": 5.0,
                         "pool_available": 5.0, "requests_waiting": 0.0, "requests_wait_ms_per_s": 0.0})
    fig = pool_figure(flat, [])
    try:
        for ax in fig.axes:
            lo, hi = ax.get_ylim()
            assert lo == 0 and hi >= 1, (ax.get_ylabel(), lo, hi)
        size, available = fig.axes[0].get_lines()[:2]
        assert (size.get_linewidth(), size.get_linestyle()) != (available.get_linewidth(),
                                                                available.get_linestyle())
    finally:
        plt.close(fig)


# -- the page ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def html(tmp_path_factory) -> str:
    run = tmp_path_factory.mktemp("sre") / "run"
    shutil.copytree(DATA / "run-db-latency", run)
    return build_report(run, pdf=False)[0].read_text()


def test_the_fault_is_charted_first_where_it_was_aimed(html):
    focus = html.index('id="fault-focus"')
    assert html.index('id="verdict-table"') < focus < html.index('id="charts"')
    assert "catalog GET /products" in html[focus:focus + 20000]
    assert 'alt="Capacity"' not in html


def test_no_raw_dict_in_the_verdict_cells_and_raw_details_collapsed(html):
    table = html[html.index('id="verdict-table"'):html.index("</table>", html.index('id="verdict-table"'))]
    visible = re.sub(r"<details.*?</details>", "", table, flags=re.S)
    assert "{" not in visible and "not_healed" not in visible
    assert table.count('<details class="raw">') >= 10


def test_environment_shows_every_slo_key_in_full(html):
    slo = json.loads((DATA / "run-db-latency" / "run.json").read_text())["slo"]
    env = html[html.index('id="environment-table"'):]
    for k, v in slo.items():
        assert f"<b>{k}</b> {v}" in env
    assert ", </td>" not in env


def test_a_fault_run_with_steps_draws_no_capacity_curve(tmp_path):
    from reports.render import report_context
    run = tmp_path / "run"
    shutil.copytree(DATA / "run-db-latency", run)
    doc = json.loads((run / "results.json").read_text())
    doc["metrics"]["steps"] = json.loads((DATA / "run-capacity" / "results.json").read_text())["metrics"]["steps"]
    (run / "results.json").write_text(json.dumps(doc))
    assert "Capacity" not in [t for t, _ in report_context(run)["charts"]]


def test_index_lists_runs_newest_first(tmp_path):
    for name, start in (("b-old", "2026-12-01T10:00:00.000Z"), ("a-new", "2026-12-02T10:00:00.000Z"),
                        ("c-mid", "2026-12-01T12:00:00.000Z"), ("d-none", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"scenario": "smoke", "start": start}))
    text = build_index(tmp_path).read_text()
    order = [text.index(f"<td>{n}</td>") for n in ("a-new", "c-mid", "b-old", "d-none")]
    assert order == sorted(order)
