"""`open_bus`: the event bus `engines.bus` names, Redis Streams (bus.py) or
Kafka (bus_kafka.py).  Its own module, so that neither bus imports the other."""

from __future__ import annotations

import redis.asyncio as aioredis

from .bus import EventBus, RedisStreamBus

__all__ = ["open_bus"]


def open_bus(engines, redis_client: aioredis.Redis | None) -> "EventBus":
    """The bus `engines.bus` names (system_under_test.config.EnginesConfig)."""
    if engines.bus == "kafka":
        from .bus_kafka import DebeziumTopics, KafkaBus   # confluent-kafka only where chosen
        return KafkaBus(engines.kafka_bootstrap, topics=DebeziumTopics.for_engines(engines))
    if redis_client is None:
        raise ValueError("engines.bus: redis needs the redis section (REDIS_URL)")
    return RedisStreamBus(redis_client)
