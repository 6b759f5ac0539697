"""The verdict table as an SRE reads it: each check's name (an API, kept as
it is in results.json and junit.xml) beside a phrase that reads the right way
round, its measured value and threshold with units, and one sentence made
from its details.  The raw details stay in results.json and in a collapsed
element of the HTML.

Pure: a results.json check in, a `VerdictRow` out.  A check this module does
not know still gets a row (its reason or error, else its plain details).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from .templating import fmt

__all__ = ["VerdictRow", "verdict_row", "verdict_rows", "with_unit"]


@dataclass(frozen=True)
class VerdictRow:
    name: str
    verdict: str
    label: str          # what the measured figure is, e.g. "faults left unhealed"
    measured: str       # with its unit
    threshold: str      # with its direction and unit: "at most 0", "accepted 160–400 ms"
    sentence: str       # one sentence from the details, or ""
    raw: str            # the details as JSON (no traceback), for the collapsed element


@dataclass(frozen=True)
class _Spec:
    label: str
    op: str = "≤"                   # ≤ at most, ≥ at least, = equal, "" none, else a prefix
    unit: str | None = None         # ms, s, req/s, %, ×; details.unit wins
    say: Callable[[dict, dict], str] | None = None   # (details, check) -> sentence


def with_unit(v, unit: str | None, digits: int = 3) -> str:
    """A figure with its unit; rates (unit `%`) are fractions shown as percent."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if unit == "%" and isinstance(v, (int, float)):
        return f"{fmt(float(v) * 100, digits)}\u00a0%"
    if unit == "×":
        return f"{fmt(v, digits)}×"
    # a non-breaking space: a figure and its unit never wrap apart
    return f"{fmt(v, digits)}\u00a0{unit}" if unit and isinstance(v, (int, float)) else fmt(v, digits)


def _n(x) -> str:
    return fmt(x)


def _join(items, limit: int = 3) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _judged(d: dict) -> str:
    return f" Judged on the requests {d['judged']}." if d.get("judged") else ""


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {_n(v)}" for k, v in d.items())


# -- one sentence per check kind -------------------------------------------------

def _workload(d, c):
    e = d.get("errors") or {}
    return f"Exceptions inside the workload: {_counts(e)}." if e else "No exception inside the workload code."


def _healthy_after_run(d, c):
    u = d.get("unhealthy") or []
    return f"Unhealthy after the load: {_join(u)}." if u else "Every part was healthy after the load."


def _sampled(d, c):
    svc = d.get("service")
    failed = sum((d.get("failures") or {}).values())
    s = (f"The least-sampled service, {svc}, was scraped {_n((d.get('scrapes') or {}).get(svc))} times "
         f"(at least {_n(c.get('threshold'))} needed); {failed} scrape(s) failed in all.")
    stopped = d.get("stopped_by_faults_s") or {}
    if stopped:
        s += " Faults stopped " + ", ".join(f"{k} for {_n(v)} s" for k, v in stopped.items()) + "."
    return s


def _injected(d, c):
    bad = d.get("not_injected") or {}
    if bad:
        return "Not injected: " + _join(f"{k} ({v})" if v else k for k, v in bad.items()) + "."
    return f"All {_n(c.get('threshold'))} scheduled fault(s) were injected and healed."


def _healed(d, c):
    bad = d.get("not_healed") or []
    return f"Still active or failed to heal: {_join(bad)}." if bad else "Every fault was healed."


def _internal(d, c):
    ex = d.get("examples") or []
    return (f"HTTP 500 responses, e.g. {_join(ex, 2)}." if ex else
            "No HTTP 500: the faults surfaced as clean 4xx/503 responses.")


def _rate_during(d, c):
    return f"{_n(d.get('failures'))} of {_n(d.get('requests'))} requests started during the faults failed."


def _after_heal(d, c):
    s = (f"{_n(c.get('measured'))} failed among the {_n(d.get('requests_after'))} requests started "
         f"more than {_n(d.get('grace_s'))} s after the last heal.")
    ex = d.get("examples") or []
    return s + (f" E.g. {_join(ex, 2)}." if ex else "")


def _healthy_again(d, c):
    m = c.get("measured")
    return f"Every part was healthy again {_n(m)} s after the last heal." if m is not None else ""


def _pools(d, c):
    low = d.get("below_min") or {}
    mins = d.get("pool_min") or {}
    if low:
        return "Below their minimum after the run: " + _join(f"{k} {_n(v)}" for k, v in low.items()) + "."
    return (f"Every pool was back at or above its minimum size ({_n(mins.get('*'))}"
            + "".join(f"; {k} {_n(v)}" for k, v in mins.items() if k != "*") + ") after the run.")


def _added(d, c):
    return (f"{d['endpoint']}: median {_n(d['median_before_ms'])} ms before the fault, "
            f"{_n(d['median_during_ms'])} ms during it ({_n(d['samples_before'])} and "
            f"{_n(d['samples_during'])} successful requests).")


def _pool_timeouts(d, c):
    s = (f"{d['endpoint']}: {_n(d.get('timeouts'))} request(s) timed out waiting for the pool; "
         f"{_n(d.get('not_503'))} of them were not a 503.")
    ex = d.get("examples_not_503") or []
    return s + (f" E.g. {_join(ex, 2)}." if ex else "")


def _effect(d, c):
    others = len(d.get("endpoints") or []) > 1
    return (f"{_n(d['requests_during'])} request(s) on {d['endpoint']}"
            + (" and the other endpoints of the same database instance" if others else "")
            + f" were in flight during the fault: {_n(d['failed'])} failed and "
              f"{_n(d['held_through_fault'])} were held until the heal.")


def _exited(d, c):
    return f"Exit code {_n(c.get('measured'))}; see {d.get('log')}."


def _server_errors(d, c):
    bad = {k: v for k, v in (d.get("by_endpoint") or {}).items() if v}
    return ((f"5xx responses by endpoint: {_counts(bad)}." if bad else "No 5xx response.") + _judged(d))


def _error_rate(d, c):
    return f"{_n(d.get('failures'))} of {_n(d.get('requests'))} requests failed." + _judged(d)


def _p95(d, c):
    s = f"The slowest endpoint with enough samples: {d['worst_endpoint']}." if d.get("worst_endpoint") else ""
    few = d.get("too_few_samples") or {}
    if few:
        s += f" Too few samples for a p95 (not judged): {_join(few)}."
    return (s + _judged(d)).strip()


def _endpoint_q(d, c):
    return _judged(d).strip()


def _endpoint_rate(d, c):
    return f"{_n(d.get('requests'))} requests." + _judged(d)


def _stepped(d, c):
    s = f"{_n(d.get('steps'))} load step(s) recorded, {_n(c.get('measured'))} judged."
    return s + (f" The live judge crashed: {d['error']}." if d.get("error") else "")


def _knee(d, c):
    parts = []
    if d.get("knee_users") is not None:
        parts.append(f"The knee is at {_n(d['knee_users'])} users")
    else:
        parts.append("No step met the SLO")
    if d.get("first_breach"):
        parts.append(f"the first breach: {d['first_breach']}")
    if d.get("stopped_because"):
        parts.append(f"the load stopped after {d['stopped_because']}")
    return "; ".join(parts) + "."


def _neighbour(d, c):
    text = (f"{d['endpoint']}: p95 {_n(d['baseline_p95_ms'])} ms alone, {_n(d['noisy_p95_ms'])} ms beside "
            f"neighbours making {_n(d.get('neighbour_orders_per_s'))} orders/s")
    if d.get("probe") == "own process":
        text += (f", from a probe in a process of its own (inside Locust the same probe saw "
                 f"{_n(d.get('locust_probe_p95_ratio'))}x)")
    return text + "."


def _lag_felt(d, c):
    return (f"Median heartbeat lag over {_n(d.get('beats'))} beats during {d.get('fault')}, with "
            f"{_n(d.get('injected_latency_ms'))} ms injected on the replica's link.")


def _caught_up(d, c):
    return (f"From the heal to the first heartbeat visible on the replica within "
            f"{_n(d.get('caught_up_ms'))} ms.")


def _lag_outside(d, c):
    return f"p99 of the heartbeats ({_n(d.get('heartbeats'))} in all) committed outside the faults."


def _ryw(d, c):
    return (f"{_n(c.get('measured'))} of {_n(d.get('reads'))} reads right after the client's own write "
            f"missed it ({_n(d.get('served_by_replica'))} served by the replica).")


def _stale_detected(d, c):
    return (f"{_n(c.get('measured'))} of {_n(d.get('reads'))} replica-routed reads missed the client's "
            f"own write under the injected lag: the stale-read detector works.")


def _cdc_caught(d, c):
    return f"Not caught up: {d['problem']}." if d.get("problem") else "Every CDC consumer drained its backlog."


def _cdc_match(d, c):
    if "source" not in d:
        return ""
    return (f"{_n(d['source'])} rows at the source, {_n(d['target'])} in the target: {_n(d['missing'])} missing, "
            f"{_n(d['extra'])} extra, {_n(d['different'])} different.")


def _totals(d, c):
    if "expected" not in d:
        return ""
    return f"Expected {_counts(d['expected'])}; got {_counts(d['got'])}."


def _cdc_consumer(d, c):
    return (f"Backlog peak {_n(d.get('backlog_peak'))} event(s), drained at {_n(d.get('rate_eps'))} "
            f"events/s after the consumer came back.")


def _cdc_lag(d, c):
    per = d.get("per_consumer") or {}
    return ("p99 per consumer: " + ", ".join(f"{k} {with_unit(v, 'ms')}" for k, v in per.items()) + "."
            if per else "")


def _invariant(d, c):
    s = f"{_n(d.get('checked'))} checked: {d.get('rule')}."
    ex = d.get("counterexamples") or []
    return s + (f" {len(ex)} counterexample(s) shown in the saga section." if ex else "")


def _sagas(d, c):
    return f"Sagas by final state: {_counts(d.get('by_state') or {})}." if d.get("by_state") else ""


def _rpo(d, c):
    return f"{_n(d.get('lost_writes'))} acknowledged write(s) lost; WAL strategy {d.get('wal')}."


def _rto(d, c):
    parts = [(k[4:-2].replace("_", " "), v) for k, v in d.items() if k.startswith("rto_") and k.endswith("_s")]
    return ("Parts: " + ", ".join(f"{k} {_n(v)} s" for k, v in parts) + ".") if parts else ""


def _tls_seen(d, c):
    conns = d.get("connections") or {}
    n_roles = sum(len(r) for r in conns.values())
    bad = d.get("not_tls") or []
    miss = d.get("missing_roles") or []
    out = f"{_n(d.get('seen', 0))} client connection(s) of {n_roles} role(s) on {len(conns)} instance(s)"
    out += (f"; not TLS 1.3: {_join(bad)}" if bad else ", every one TLS 1.3 (pg_stat_ssl)")
    return out + (f"; never connected: {_join(miss)}." if miss else ".")


def _refusals(d, c):
    acc = d.get("accepted") or []
    n = len(d.get("refused") or {}) + len(acc)
    return (f"Accepted: {_join(acc)}." if acc else f"All {n} login(s) refused.")


def _isolated(d, c):
    let = d.get("let_in") or []
    if let:
        return f"Let in: {_join(let)}."
    return f"{_n(d.get('refused'))} of {_n(d.get('attempts'))} cross-service attempts refused; " \
           f"each role's own access allowed."


def _audited(d, c):
    per = d.get("per_role") or {}
    out = "Audit records for the probe's operations: " + \
        ", ".join(f"{r} {v}" for r, v in per.items()) + "."
    silent = d.get("roles_without_records_under_load") or []
    if silent:
        out += f" No record under load for {_join(silent)}."
    return out + f" {_n(d.get('records_under_load'))} records under load."


def _detected(d, c):
    it = d.get("intrusion") or {}
    al = d.get("alert") or {}
    if not al:
        return f"No {c['name'][len('detects-'):]} alert for the intrusion at {it.get('start_utc', '?')}."
    return f"{al.get('evidence', '')} (intrusion at {it.get('start_utc', '?')})."


def _false_alarms(d, c):
    un = d.get("unexplained") or []
    if un:
        return "Unexplained: " + _join([f"{a.get('kind')} ({a.get('evidence')})" for a in un], 2) + "."
    return f"{_n(d.get('alerts'))} alert(s), every one explained by an intrusion; " \
           f"{_n(d.get('normal_load_s'))} s of normal load."


def _secrets(d, c):
    m = d.get("matches") or []
    if m:
        return "Found in: " + _join([x["file"] for x in m]) + "."
    return (f"{_n(d.get('secrets'))} secrets looked for in {_n(d.get('run_files'))} run files and "
            f"{_n(d.get('stack_logs'))} stack logs; none found.")


def _workers(d, c):
    bad = d.get("incomplete") or {}
    if bad:
        return "; ".join(f"{k}: {v}" for k, v in bad.items()) + "."
    by = d.get("requests_by_worker") or {}
    return f"All {_n(d.get('workers'))} workers reported to the end: " + \
        ", ".join(f"{k} {_n(v)}" for k, v in by.items()) + " requests."


def _geo_encrypted(d, c):
    bad = (d.get("plaintext") or []) + (d.get("failed") or [])
    if bad:
        return f"Not encrypted or not authenticated: {_join(bad)}."
    return f"All {_n(d.get('files'))} files of the geo copy authenticate with the key " \
           f"(from {d.get('key_source')})."


def _geo_leak(d, c):
    if d.get("matched_files"):
        return f"The marker is in {_join(d['matched_files'])}."
    mb = (d.get("bytes") or 0) / 1e6
    return f"The marker is in none of {_n(d.get('files'))} files ({mb:.1f} MB); " \
           f"the control found it {_n(d.get('control_matches'))} time(s) in this region's " \
           f"unencrypted backup."


SPECS: dict[str, _Spec] = {
    "geo-copy-encrypted": _Spec("geo copy files not encrypted or not authentic", say=_geo_encrypted),
    "geo-leak-scan": _Spec("known plaintext found in the geo copy", say=_geo_leak),
    "workers-complete": _Spec("Locust workers that did not report to the end", say=_workers),
    "tls-on-every-connection": _Spec("connections not on TLS 1.3", say=_tls_seen),
    "plaintext-refused": _Spec("plaintext logins accepted", say=_refusals),
    "tlsv1.2-refused": _Spec("TLS 1.2 logins accepted", say=_refusals),
    "db-isolation": _Spec("cross-service database logins accepted", say=_isolated),
    "redis-isolation": _Spec("cross-service Redis key accesses allowed", say=_isolated),
    "document-db-isolation": _Spec("MongoDB accesses beyond a login's need allowed", say=_isolated),
    "audit-trail-complete": _Spec("audited operations without a complete record", say=_audited),
    "detects-cross-database": _Spec("time to flag a cross-database login", unit="s", say=_detected),
    "detects-failed-logins": _Spec("time to flag repeated failed logins", unit="s", say=_detected),
    "detects-bulk-read": _Spec("time to flag a bulk read of emails", unit="s", say=_detected),
    "detects-odd-rate": _Spec("time to flag an odd access rate", unit="s", say=_detected),
    "false-positives": _Spec("alerts no intrusion explains", say=_false_alarms),
    "no-secret-in-outputs": _Spec("secrets found in outputs", say=_secrets),
    "requests-made": _Spec("requests made", "≥"),
    "workload-errors": _Spec("exceptions in the workload code", say=_workload),
    "healthy-after-run": _Spec("parts unhealthy after the load", say=_healthy_after_run),
    "metrics-sampled": _Spec("scrapes of the least-sampled service", "≥", say=_sampled),
    "faults-injected": _Spec("faults injected and healed", "of ", say=_injected),
    "faults-healed": _Spec("faults left unhealed", say=_healed),
    "no-internal-errors": _Spec("HTTP 500 responses", say=_internal),
    "error-rate-during-fault": _Spec("error rate during the faults", unit="%", say=_rate_during),
    "no-errors-after-heal": _Spec("errors after the heal", say=_after_heal),
    "healthy-again-after-heal": _Spec("time until healthy after the heal", unit="s", say=_healthy_again),
    "pools-recovered": _Spec("pools below their minimum after the run", say=_pools),
    "injected-latency-observed": _Spec("median latency the fault added", "range", "ms", _added),
    "fault-slowed-requests": _Spec("median latency the fault added", "≥", "ms", _added),
    "pool-timeouts-clean": _Spec("median latency of the pool-timeout 503s", "range", "ms", _pool_timeouts),
    "fault-had-effect": _Spec("requests that felt the fault", "≥", say=_effect),
    "nemesis-exited-cleanly": _Spec("exit code of the nemesis process", "=", say=_exited),
    "lag-monitor-exited-cleanly": _Spec("exit code of the lag monitor", "=", say=_exited),
    "no-server-errors": _Spec("5xx responses", say=_server_errors),
    "error-rate": _Spec("error rate", unit="%", say=_error_rate),
    "p95-latency": _Spec("p95 latency of the slowest endpoint", unit="ms", say=_p95),
    "load-stepped": _Spec("load steps judged", "", say=_stepped),
    "knee-throughput": _Spec("throughput at the knee", "≥", "req/s", _knee),
    "neighbour-p95-ratio": _Spec("p95 beside neighbours ÷ p95 alone", unit="×", say=_neighbour),
    "replica-lag-felt": _Spec("median replica lag during the fault", "≥", "ms", _lag_felt),
    "replica-caught-up": _Spec("time for the replica to catch up", unit="s", say=_caught_up),
    "replica-lag-outside-faults": _Spec("replica lag p99 outside the faults", unit="ms", say=_lag_outside),
    "read-your-writes-holds": _Spec("stale reads of the client's own writes", say=_ryw),
    "stale-reads-detected-under-lag": _Spec("stale reads seen under injected lag", "≥", say=_stale_detected),
    "cdc-consumers-caught-up": _Spec("every CDC consumer caught up", "=", say=_cdc_caught),
    "search-index-matches-catalog": _Spec("search index rows unlike the catalog", say=_cdc_match),
    "analytics-has-every-order-once": _Spec("analytics rows unlike the orders", say=_cdc_match),
    "user-replica-matches-users": _Spec("user replica rows unlike the users", say=_cdc_match),
    "analytics-totals-exactly-once": _Spec("analytics totals that differ from the source", say=_totals),
    "cdc-lag-p99-outside-faults": _Spec("CDC lag p99 outside the faults (worst consumer)", unit="ms",
                                        say=_cdc_lag),
    "stock-conservation": _Spec("products whose stock does not add up", say=_invariant),
    "no-oversell": _Spec("products with negative stock", say=_invariant),
    "orders-end": _Spec("orders or sagas that never ended", say=_invariant),
    "payments-match-orders": _Spec("orders whose payments do not match", say=_invariant),
    "outcomes-match-history": _Spec("client outcomes the database contradicts", say=_invariant),
    "idempotency": _Spec("idempotency keys with more than one order", say=_invariant),
    "enough-sagas": _Spec("sagas run", "≥", say=_sagas),
    "run-completed": _Spec("how the run ended", "="),
    "rpo-seconds": _Spec("RPO: data lost, in seconds of writes", unit="s", say=_rpo),
    "rto-seconds": _Spec("RTO: disaster to the first write", unit="s", say=_rto),
    "sync-no-acked-write-lost": _Spec("acknowledged writes lost"),
    "target-before-present": _Spec("writes before the target missing"),
    "target-after-absent": _Spec("writes after the target present"),
    "deleted-rows-back": _Spec("deleted rows restored", "≥"),
    "accident-deleted-rows": _Spec("rows the accident deleted", "≥"),
    "nothing-after-target": _Spec("rows from after the target present"),
    "writes-after-accident": _Spec("writes acknowledged after the accident", "≥"),
    "acked-before-target-present": _Spec("acknowledged writes before the target missing"),
    "check-sees-originals": _Spec("original emails found in the unmasked dump", "≥"),
    "masked-copy-complete": _Spec("rows in the masked copy", "≥"),
    "no-original-email-in-table": _Spec("original emails in the masked table"),
    "no-original-email-in-dump": _Spec("original emails in the masked dump"),
    "no-original-name-in-dump": _Spec("original names in the masked dump"),
}

_BRACKET = re.compile(r"^(?P<base>.+)\[(?P<arg>[^\[\]]+)\]$")


def _spec(name: str) -> tuple[_Spec | None, str]:
    """The spec of a check name and what to add to its label: per-endpoint
    checks (`p95[catalog GET /products]`), a matrix child's mirror
    (`error-rate[single]`), a drill strategy's (`archive: rpo-seconds`), a
    consumer's catch-up (`cdc-caught-up-search`)."""
    if name in SPECS:
        return SPECS[name], ""
    m = _BRACKET.match(name)
    if m:
        base, arg = m["base"], m["arg"]
        if base in ("p95", "p99"):
            return _Spec(f"{base} latency of {arg}", unit="ms", say=_endpoint_q), ""
        if base == "error-rate" and " " in arg:
            return _Spec(f"error rate of {arg}", unit="%", say=_endpoint_rate), ""
        spec, extra = _spec(base)
        return spec, f"{extra} ({arg})"
    if ": " in name:
        mode, base = name.split(": ", 1)
        spec, extra = _spec(base)
        return spec, f"{extra} ({mode})"
    if name.startswith("cdc-caught-up-"):
        return _Spec(f"time for {name[len('cdc-caught-up-'):]} to catch up", unit="s", say=_cdc_consumer), ""
    return None, ""


def _generic(d: dict) -> str:
    """Plain details of a check this module does not know: scalars only."""
    parts = [f"{k.replace('_', ' ')} {fmt(v)}" for k, v in d.items()
             if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k != "unit"]
    return ("; ".join(parts) + ".") if parts else ""


def _threshold(spec: _Spec | None, c: dict, unit: str | None) -> str:
    t, d = c.get("threshold"), c.get("details") or {}
    if t is None:
        return "–"
    if spec is not None and spec.op == "range" and d.get("accepted_ms"):
        lo, hi = d["accepted_ms"]
        what = "injected" if c["name"].startswith("injected-latency") else "pool.acquire"
        return f"{with_unit(t, unit)} {what}, accepted {fmt(lo)}–{fmt(hi)}\u00a0{unit}"
    # an op that is not a comparison is the threshold's own prefix ("of ")
    word = {"≤": "at most ", "≥": "at least ", "=": "", "range": ""}.get(spec.op, spec.op) if spec else ""
    return word + with_unit(t, unit)


def verdict_row(c: dict) -> VerdictRow:
    d = c.get("details") or {}
    spec, extra = _spec(c["name"])
    unit = d.get("unit") or (spec.unit if spec else None)
    sentence = ""
    if c.get("verdict") == "unknown" and (d.get("reason") or d.get("error")):
        sentence = str(d.get("reason") or f"The check crashed: {d['error']}")
    else:
        if spec and spec.say:
            try:
                sentence = spec.say(d, c)
            except (KeyError, TypeError, ValueError, AttributeError):
                sentence = ""       # details of another shape: the plain ones below
        if not sentence:
            sentence = str(d.get("reason") or d.get("meaning") or d.get("note") or "") or \
                (_generic(d) if spec is None else "")
        if d.get("reason") and d["reason"] not in sentence:
            sentence = f"{sentence} {d['reason']}".strip()
    measured, threshold = c.get("measured"), c.get("threshold")
    digits = 3
    # a figure rounded to its threshold would hide why it failed: 200.4 is not 200
    while (digits < 8 and isinstance(measured, (int, float)) and isinstance(threshold, (int, float))
           and measured != threshold and fmt(measured, digits) == fmt(threshold, digits)):
        digits += 1
    raw = {k: v for k, v in d.items() if k != "traceback"}
    label = (spec.label if spec else c["name"].replace("-", " ")) + extra
    return VerdictRow(name=c["name"], verdict=c.get("verdict", "unknown"), label=label,
                      measured=with_unit(measured, unit, digits),
                      threshold=_threshold(spec, c, unit), sentence=sentence,
                      raw=json.dumps(raw, indent=1, default=str) if raw else "")


def verdict_rows(checks: list[dict]) -> list[VerdictRow]:
    return [verdict_row(c) for c in checks]
