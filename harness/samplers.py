"""Samplers that run beside the load: each service's /metrics at 1 Hz.

Rows are tidy (one value per row) so pandas can pivot them:
    time, service, metric, labels, value
`labels` is `k=v;k=v` sorted by key.  A scrape that fails writes the
Prometheus-style row `up = 0` for that service (and `up = 1` otherwise), so
a gap in the data is visible rather than silent.
"""

from __future__ import annotations

import threading
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from .rundir import CsvTable

__all__ = ["MetricsSampler", "HealthSampler", "METRICS_COLUMNS", "HEALTH_COLUMNS"]

METRICS_COLUMNS = ["time", "service", "metric", "labels", "value"]
HEALTH_COLUMNS = ["time", "part", "kind", "healthy", "detail"]


class _Periodic:
    """Calls sample_once() every `interval` seconds in a thread until stop()."""
    INTERVAL_S = 1.0

    def __init__(self, table: CsvTable, interval: float | None):
        self.table = table
        self.interval = interval or self.INTERVAL_S
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self):
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))


class MetricsSampler(_Periodic):
    TIMEOUT_S = 2.0

    def __init__(self, services: dict[str, str], table: CsvTable, *, interval: float | None = None):
        super().__init__(table, interval)
        self.services = services    # name -> base URL
        self.scrapes = {s: 0 for s in services}
        self.failures = {s: 0 for s in services}
        # latest psycopg_pool gauges: (service, pool, stat) -> value
        self.pools: dict[tuple[str, str, str], float] = {}
        self._session = requests.Session()

    def sample_once(self) -> None:
        for name, url in self.services.items():
            ts = round(time.time(), 3)
            try:
                r = self._session.get(url + "/metrics", timeout=self.TIMEOUT_S)
                r.raise_for_status()
                text = r.text
            except requests.RequestException:
                self.failures[name] += 1
                self.table.row(ts, name, "up", "", 0)
                continue
            self.scrapes[name] += 1
            self.table.row(ts, name, "up", "", 1)
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name.endswith("_created"):
                        continue
                    labels = ";".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                    self.table.row(ts, name, s.name, labels, s.value)
                    if s.name.startswith("psycopg_pool_"):
                        self.pools[(name, s.labels.get("pool", ""), s.name[13:])] = s.value


class HealthSampler(_Periodic):
    """Every part's health at 1 Hz (the same probe as `msdb status`), so that
    recovery after a heal is measured to the second, not guessed."""

    def __init__(self, probe, table: CsvTable, *, interval: float | None = None):
        super().__init__(table, interval)
        self.probe = probe          # () -> list of PartStatus-like objects
        self.history: list[tuple[float, bool]] = []   # (time, all parts healthy)

    def sample_once(self) -> bool:
        ts = round(time.time(), 3)
        try:
            parts = self.probe()
        except Exception as e:  # the probe itself failing is an unhealthy sample
            self.table.row(ts, "stack", "stack", 0, f"{type(e).__name__}: {e}"[:200])
            self.history.append((ts, False))
            return False
        for p in parts:
            self.table.row(ts, p.name, p.kind, int(p.healthy), p.detail)
        ok = all(p.healthy for p in parts)
        self.history.append((ts, ok))
        return ok

    def healthy_since(self, t: float) -> float | None:
        """Seconds from t until the first all-healthy sample at or after t."""
        for ts, ok in self.history:
            if ts >= t and ok:
                return round(ts - t, 2)
        return None
