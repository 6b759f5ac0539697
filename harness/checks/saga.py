"""The saga checker's invariants as checks, from the history and the final
state the run recorded after quiescence (final_state.json)."""

from __future__ import annotations

from dataclasses import dataclass

from reports.rundata import Run
from scenarios.saga_checker import INVARIANTS, check

from .core import Check, at_least

__all__ = ["SagaChecks", "SAGA_KEYS"]

SAGA_KEYS = ("min_sagas",)


@dataclass(frozen=True)
class SagaChecks:
    keys = SAGA_KEYS

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        end = (run.info.get("end_state") or {}).get("saga") or {}
        final = run.json("final_state.json")
        if final is None:
            reason = end.get("problem") or "the run recorded no final state"
            return [Check(n, "unknown", None, 0, {"reason": reason}) for n in INVARIANTS], {}
        history = run.history
        try:
            results = check(history, final)
        except Exception as e:  # a crashing checker must never pass
            return [Check(n, "unknown", None, 0, {"error": f"{type(e).__name__}: {e}"})
                    for n in INVARIANTS], {}
        checks = [Check(r["name"], r["verdict"], r["measured"], r["threshold"], r["details"])
                  for r in results]
        states: dict[str, int] = {}
        for s in final["sagas"]:
            states[s["state"]] = states.get(s["state"], 0) + 1
        kinds: dict[str, int] = {}
        for op in history:
            if op.get("f") == "create_order" and op["type"] != "invoke":
                kinds[op["type"]] = kinds.get(op["type"], 0) + 1
        total = len(final["sagas"])
        checks.append(at_least("enough-sagas", total, slo["min_sagas"], by_state=states))
        duration = (run.info.get("load") or {}).get("duration_s")
        metrics = {"sagas_total": total, "sagas_completed": states.get("COMPLETED", 0),
                   "sagas_compensated": states.get("COMPENSATED", 0),
                   "sagas_failed": states.get("FAILED", 0),
                   "sagas_by_state": states, "client_ok": kinds.get("ok", 0),
                   "client_fail": kinds.get("fail", 0), "client_info": kinds.get("info", 0),
                   "orders_confirmed": sum(1 for o in final["orders"] if o["status"] == "CONFIRMED"),
                   "orders_cancelled": sum(1 for o in final["orders"] if o["status"] == "CANCELLED"),
                   "quiescence_s": end.get("quiescence_s"),
                   "sagas_per_s": round(total / duration, 1) if total and duration else None}
        return checks, metrics
