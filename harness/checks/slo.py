"""The SLO file: thresholds per scenario, strictly read.

A scenario's thresholds are the file's `defaults` overlaid by its own
section.  Every key in its own section must be one its checks use: a
mistyped or unused threshold is an error naming it (exit 2), never silently
ignored.  `defaults` may hold any known key (the seed's RPO and RTO live
there and only the drills use them).  Per-endpoint thresholds go under
`endpoints:`, by request name.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from scenarios.data import ENDPOINTS

from ..errors import ConfigError
from ..files import read_yaml
from .core import BUILT_IN

__all__ = ["load_slo", "SLO_PATH", "KNOWN_KEYS", "ENDPOINT_KEYS", "BUILT_IN"]

SLO_PATH = Path(__file__).resolve().parent.parent.parent / "scenarios" / "slo.yaml"

KNOWN_KEYS = {
    "error_rate_max": float, "server_errors_max": int, "p95_ms_max": float,
    "healthy_after_s": float, "recovery_s": float, "heal_grace_s": float,
    "errors_after_heal_max": int, "fault_error_rate_max": float, "internal_errors_max": int,
    "latency_observed_min_ratio": float, "latency_observed_max_ratio": float,
    "p99_ms_max": float, "knee_min_rps": float,
    # seed §7.2 and §9.1: recovery objectives and lag, for the drills and lag scenarios
    "rpo_seconds_max": float, "rto_seconds_max": float, "replica_lag_ms_max": float,
    "cdc_lag_p99_ms_max": float, "neighbour_p95_ratio_max": float, "min_sagas": int,
    "replica_caught_up_ms": float, "replica_catch_up_s_max": float,
    "replica_lag_effect_min_ratio": float, "stale_reads_ryw_max": int,
    "cdc_catch_up_s_max": float, "cdc_quiesce_s": float, "cdc_mismatches_max": int,
    # msdb drill migration (seed §10.1): a schema change under load
    "migration_blocked_ms_max": float, "migration_errors_max": int,
    # msdb run security (seed §8): detection time, false alarms, the audit trail's gaps
    "detect_within_s_max": float, "false_positives_max": int, "audit_missing_max": int,
    # minimum sample sizes: below them a percentile or a knee is `unknown`, not judged
    "min_samples_p95": int, "min_samples_p99": int, "min_samples_step": int,
}

ENDPOINT_KEYS = {"p95_ms_max": float, "p99_ms_max": float, "error_rate_max": float}


def _value(where: str, v, kind):
    if isinstance(v, bool):
        raise ConfigError(f"{where}: expected a number, got {v!r}")
    try:
        out = kind(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {v!r}") from None
    if out < 0:
        raise ConfigError(f"{where}: must be >= 0, got {v!r}")
    return out


def _endpoints(where: str, v, known: tuple[str, ...]) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: expected a mapping of endpoint names")
    out: dict = {}
    for ep, th in v.items():
        if ep not in known:
            raise ConfigError(f"{where}: unknown endpoint {ep!r} (known: {', '.join(known)})")
        if not isinstance(th, dict):
            raise ConfigError(f"{where}.{ep}: expected a mapping")
        for k, tv in th.items():
            if k not in ENDPOINT_KEYS:
                raise ConfigError(f"{where}.{ep}.{k}: unknown key (known: {', '.join(ENDPOINT_KEYS)})")
            out.setdefault(ep, {})[k] = _value(f"{where}.{ep}.{k}", tv, ENDPOINT_KEYS[k])
    return out


def load_slo(path: str | Path | None, scenario: str, keys: tuple[str, ...], *,
             endpoints: bool = True) -> dict:
    """The thresholds of one scenario whose checks use `keys` (and per-endpoint
    thresholds if `endpoints`)."""
    p = Path(path) if path else SLO_PATH
    where = str(p)
    raw = read_yaml(p, "--slo")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of scenario sections")
    from scenarios import registry      # here, not at the top: the registry imports the checks
    known = ["defaults", "drill", *(sc.name for sc in registry.all())]
    for section in raw:
        if section not in known:
            near = difflib.get_close_matches(str(section), known, n=1)
            raise ConfigError(f"{where}: {section}: unknown section"
                              + (f" (did you mean {near[0]!r}?)" if near else "")
                              + f"; sections are defaults, drill and the scenarios")
    if scenario not in raw:
        raise ConfigError(f"{where}: no section for scenario {scenario!r}")
    out: dict = {}
    for section in ("defaults", scenario):
        body = raw.get(section) or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {section}: expected a mapping")
        for k, v in body.items():
            at = f"{where}: {section}.{k}"
            if k == "endpoints":
                if section != "defaults" and not endpoints:
                    raise ConfigError(f"{at}: scenario {scenario!r} does not judge per-endpoint "
                                      f"thresholds")
                eps = _endpoints(at, v, ENDPOINTS)
                for ep, th in eps.items():
                    out.setdefault("endpoints", {}).setdefault(ep, {}).update(th)
                continue
            if k not in KNOWN_KEYS:
                raise ConfigError(f"{at}: unknown key (known: {', '.join(KNOWN_KEYS)})")
            if section != "defaults" and k not in keys:
                raise ConfigError(f"{at}: scenario {scenario!r} does not check this threshold "
                                  f"(its checks use: {', '.join(keys) or 'none'})")
            out[k] = _value(at, v, KNOWN_KEYS[k])
    for k, v in BUILT_IN.items():
        out.setdefault(k, v)
    missing = [k for k in keys if k not in out]
    if missing:
        raise ConfigError(f"{where}: {scenario}.{missing[0]}: missing key"
                          + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""))
    return {k: v for k, v in out.items() if k in keys or k == "endpoints"}
