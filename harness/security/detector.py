"""An anomaly detector over the audit trail (seed §8.2: "detect suspicious
access patterns"), fed record by record as the log grows.

Four kinds, each a plain rule with its thresholds in `DetectorConfig`:

    cross-database  a service role's login to a database that is not its own
                    (refused for CONNECT, by pg_hba.conf, or for its password
                    there): one attempt is enough
    failed-logins   `failed_logins` refused logins of one role within
                    `failed_window_s`
    bulk-read       one read of a table holding personal data (`pii_tables`)
                    that returned at least `bulk_rows` rows
    odd-rate        a role's accesses in one `rate_bin_s` bin above
                    max(`rate_factor` x its busiest bin while learning,
                    `rate_floor`); learning is the run's first, intrusion-free
                    stretch (`learn_until`)

Rules, not a model: an SRE can read why an alert was raised, and the
false-positive count over a normal workload is measured on every run
(harness/checks/security.py), not assumed.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field

from .auditlog import AuditRecord

__all__ = ["DetectorConfig", "Alert", "Detector", "KINDS"]

KINDS = ("cross-database", "failed-logins", "bulk-read", "odd-rate")


@dataclass(frozen=True)
class DetectorConfig:
    failed_logins: int = 5
    failed_window_s: float = 60.0
    bulk_rows: int = 20
    pii_tables: tuple[str, ...] = ("public.users",)
    rate_bin_s: float = 5.0
    rate_factor: float = 3.0
    rate_floor: int = 200
    cooldown_s: float = 30.0

    def to_json(self) -> dict:
        return {**asdict(self), "pii_tables": list(self.pii_tables)}


@dataclass(frozen=True)
class Alert:
    kind: str
    role: str | None
    db: str | None
    at: float              # the time of the record that raised it
    detected_at: float     # when the detector raised it (wall clock)
    evidence: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Detector:
    own_db: dict[str, str]             # service role -> its database
    learn_until: float = 0.0
    cfg: DetectorConfig = field(default_factory=DetectorConfig)

    def __post_init__(self):
        self._fails: dict[str, deque] = defaultdict(deque)
        self._bins: dict[str, dict[int, int]] = defaultdict(dict)
        self.baseline: dict[str, int] = defaultdict(int)
        self._last: dict[tuple, float] = {}

    def _raise(self, kind: str, rec: AuditRecord, now: float, evidence: str) -> list[Alert]:
        key = (kind, rec.role)
        last = self._last.get(key)
        if last is not None and rec.time - last < self.cfg.cooldown_s:
            return []
        self._last[key] = rec.time
        return [Alert(kind, rec.role, rec.db, rec.time, now, evidence)]

    def feed(self, rec: AuditRecord, now: float) -> list[Alert]:
        cfg = self.cfg
        out: list[Alert] = []
        if rec.kind in ("db_denied", "hba_reject", "auth_fail"):
            home = self.own_db.get(rec.role or "")
            if home is not None and rec.db and rec.db != home:
                out += self._raise("cross-database", rec, now,
                                   f"{rec.role} (database {home}) tried {rec.db} on "
                                   f"{rec.instance}: {rec.kind}")
            if rec.kind == "auth_fail":
                q = self._fails[rec.role or ""]
                q.append(rec.time)
                while q and rec.time - q[0] > cfg.failed_window_s:
                    q.popleft()
                if len(q) >= cfg.failed_logins:
                    out += self._raise("failed-logins", rec, now,
                                       f"{len(q)} refused logins of {rec.role} within "
                                       f"{cfg.failed_window_s:g} s")
            return out
        if rec.kind != "access":
            return out
        if (rec.cls == "READ" and rec.object in cfg.pii_tables and rec.rows is not None
                and rec.rows >= cfg.bulk_rows):
            out += self._raise("bulk-read", rec, now,
                               f"{rec.role} read {rec.rows} rows of {rec.object} at once")
        role = rec.role or ""
        b = int(rec.time // cfg.rate_bin_s)
        bins = self._bins[role]
        bins[b] = bins.get(b, 0) + 1
        for old in [k for k in bins if k < b - 2]:
            del bins[old]
        if rec.time < self.learn_until:
            self.baseline[role] = max(self.baseline[role], bins[b])
        else:
            limit = max(cfg.rate_factor * self.baseline[role], cfg.rate_floor)
            if bins[b] > limit:
                out += self._raise("odd-rate", rec, now,
                                   f"{rec.role}: {bins[b]} accesses within {cfg.rate_bin_s:g} s "
                                   f"(learnt busiest {self.baseline[role]}, limit {limit:g})")
        return out
