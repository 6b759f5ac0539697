"""Acknowledged writes through a service's API, for the drills: every write
has a unique id and the client's acknowledgement time (acks.jsonl, and the
history as invoke/ok/fail/info), so what a restore lost is counted from the
client's side, against what the restored database holds."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import requests

from ..run.rundir import RunDir
from ..stack.pg import PgInstance
from ..stack.topology import SERVICE_BY_NAME
from ..utc import utc

__all__ = ["Writer", "present_ids"]


class Writer:
    """Unique-id writes through the service API; every ack is recorded."""

    def __init__(self, db: str, url: str, rd: RunDir, *, seed: dict | None = None):
        self.db, self.url, self.seed = db, url, seed or {}
        self.history = rd.history()
        self._acks = open(rd.path / "acks.jsonl", "w")
        self._lock = threading.Lock()
        self.acks: list[dict] = []
        self.failed = 0
        self.unknown = 0

    def write_once(self, session: requests.Session, process: str, phase: str) -> dict | None:
        wid = f"drill-{uuid.uuid4().hex}"
        if self.db == "orders":
            body = {"user_id": random.choice(self.seed["users"])["id"],
                    "items": [{"product_id": random.choice(self.seed["products"]), "quantity": 1}]}
            req = dict(url=f"{self.url}/orders", json=body, headers={"Idempotency-Key": wid})
        else:
            body = {"email": f"{wid}@drill.msdb.test", "password": "drill-password",
                    "first_name": "Drill", "last_name": wid[-8:]}
            req = dict(url=f"{self.url}/users", json=body)
        invoked = time.time()
        self.history.invoke(process, "write", {"id": wid, "phase": phase})
        try:
            r = session.post(timeout=10, **req)
        except requests.RequestException as e:
            self.history.info(process, "write", {"id": wid, "phase": phase, "error": str(e)[:200]})
            with self._lock:
                self.unknown += 1
            return None
        ack = time.time()
        if r.status_code == 201:
            rec = {"id": wid, "phase": phase, "invoke_ts": invoked, "ack_ts": ack, "ack_utc": utc(ack)}
            self.history.ok(process, "write", {"id": wid, "phase": phase, "ack_utc": rec["ack_utc"]})
            with self._lock:
                self.acks.append(rec)
                self._acks.write(json.dumps(rec) + "\n")
            return rec
        outcome = self.history.fail if r.status_code in (400, 402, 409, 422) else self.history.info
        outcome(process, "write", {"id": wid, "phase": phase, "status": r.status_code})
        with self._lock:
            if r.status_code in (400, 402, 409, 422):
                self.failed += 1
            else:
                self.unknown += 1
        return None

    def run_until(self, stop: threading.Event, n: int, phase: str) -> list[threading.Thread]:
        def loop(i: int):
            s = requests.Session()
            s.trust_env = False
            while not stop.is_set():
                self.write_once(s, f"writer-{i}", phase)
        ts = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(n)]
        for t in ts:
            t.start()
        return ts

    def close(self) -> None:
        self.history.close()
        self._acks.close()


def present_ids(inst: PgInstance, db: str, ids: list[str]) -> set[str]:
    """Which acknowledged ids the (restored) database holds, queried directly."""
    with inst.connect(SERVICE_BY_NAME[db].database) as c:
        if db == "orders":
            rows = c.execute("SELECT s.idempotency_key FROM sagas s JOIN orders o ON o.id = s.order_id "
                             "WHERE s.idempotency_key = ANY(%s) AND s.state = 'COMPLETED' "
                             "AND o.status = 'CONFIRMED'", (ids,)).fetchall()
        else:
            rows = c.execute("SELECT split_part(email, '@', 1) FROM users WHERE email = ANY(%s)",
                             ([f"{i}@drill.msdb.test" for i in ids],)).fetchall()
    return {r[0] for r in rows}
