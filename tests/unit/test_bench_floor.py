"""Calibration of benchmarks/bench_floor.py: a known CPU cost per call, on
either side of a real uvicorn/aiohttp exchange on 127.0.0.1, is found."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_floor import http_floor  # noqa: E402

pytestmark = pytest.mark.slow

CALLS = 400


def test_a_known_cpu_cost_per_call_is_found_on_the_side_that_spent_it():
    client0, server0 = uvloop.run(http_floor(CALLS, 4))
    client1, server1 = uvloop.run(http_floor(CALLS, 4, server_burn_us=2000, client_burn_us=1000))
    # 2,000 µs more per request in the handler, 1,000 µs more per call in the client;
    # the server is read in clock ticks (10 ms over 400 calls: 25 µs a tick)
    assert server1 - server0 == pytest.approx(2000, abs=300), (server0, server1)
    assert client1 - client0 == pytest.approx(1000, abs=250), (client0, client1)
    assert 0 < server0 < 2000 and 0 < client0 < 2000, (client0, server0)
