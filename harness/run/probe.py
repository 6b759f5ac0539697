"""The latency probe of noisy-neighbour, in a process of its own.

    python -m harness.run.probe --state-dir D --out RUN_DIR [--users 5] [--parent PID]

Five clients, each logged in as one of the seeded users, read their own user
(`GET /users/{id}`, a database read) with 50-150 ms between reads, as
Locust's `ProbeUser` does, and write one row per request to `probe.csv`
(the columns of requests.csv; `time` is when the request started).

Why a process of its own: beside 30 zero-wait neighbours, Locust's one event
loop serves the probe's responses after the neighbours' (measured
2026-12-02: the users service's own handler time went 1.4-2.0 -> 4.9-10.2 ms
while the in-Locust probe saw 2.7-3.5 -> 14-27 ms), so the probe measured
the load generator as much as the service.  `Neighbour` judges this
process's samples and reports the in-Locust probe's ratio beside them.

It stops on SIGTERM/SIGINT and when its parent run disappears.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import threading
import time
from pathlib import Path

import requests

from reports.rundata import PROBE_FILE, REQUEST_COLUMNS
from scenarios.data import LOAD_PASSWORD, user_credentials

from ..checks.capacity import PROBE
from ..stack.info import StackInfo
from .children import serve
from .rundir import CsvTable

__all__ = ["Probe"]

log = logging.getLogger("msdb.probe")
WAIT_S = (0.05, 0.15)
TIMEOUT_S = 10.0


class Probe:
    def __init__(self, users_url: str, out: Path, *, users: int = 5):
        self.url = users_url.rstrip("/")
        self.table = CsvTable(out / PROBE_FILE, REQUEST_COLUMNS)
        self.users = users
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> "Probe":
        for i in range(self.users):
            t = threading.Thread(target=self._client, args=(i,), name=f"probe-{i}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _login(self, s: requests.Session, i: int) -> str | None:
        cred = user_credentials(i)
        try:
            r = s.post(self.url + "/sessions", json={"email": cred["email"], "password": LOAD_PASSWORD},
                       timeout=TIMEOUT_S)
        except requests.RequestException as e:
            log.warning("probe %d: login failed: %s", i, e)
            return None
        if r.status_code != 201:
            log.warning("probe %d: login answered %d", i, r.status_code)
            return None
        return r.json().get("user_id")

    def _client(self, i: int) -> None:
        rng = random.Random(i)
        with requests.Session() as s:
            user_id = None
            while user_id is None and not self.stop_event.is_set():
                user_id = self._login(s, i)
                if user_id is None:
                    self.stop_event.wait(1.0)
            while not self.stop_event.is_set():
                start, t = time.time(), time.perf_counter()
                status, size, error = 0, 0, ""
                try:
                    r = s.get(f"{self.url}/users/{user_id}", timeout=TIMEOUT_S)
                    status, size = r.status_code, len(r.content)
                    if status >= 400:
                        error = f"HTTP {status}"
                except requests.RequestException as e:
                    error = f"{type(e).__name__}: {e}"[:300]
                ms = (time.perf_counter() - t) * 1000
                self.table.row(round(start, 6), PROBE, "GET", status, round(ms, 3), size,
                               int(not error), error)
                self.stop_event.wait(rng.uniform(*WAIT_S))

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=TIMEOUT_S + 1)
        self.table.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.run.probe")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--users", type=int, default=5)
    p.add_argument("--parent", type=int, default=None, help="exit when this PID is gone")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    probe = Probe(StackInfo.load(args.state_dir).urls["users"], Path(args.out), users=args.users)
    probe.start()
    serve(args.parent, log)
    probe.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
