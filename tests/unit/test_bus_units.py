"""The bus seam without servers: Debezium topic names, record keys, values
from our relay and from Debezium's JSON converter, and which bus
`engines.bus` opens."""

from __future__ import annotations

import pytest

from system_under_test.common.bus import RedisStreamBus
from system_under_test.common.buses import open_bus
from system_under_test.config import EnginesConfig

bus_kafka = pytest.importorskip("system_under_test.common.bus_kafka",
                                reason="confluent-kafka is not installed")


def test_cdc_topics_are_named_as_debezium_names_them():
    t = bus_kafka.DebeziumTopics()
    assert t.subscribed("cdc.catalog") == ["msdb.catalog.public.products"]
    assert t.subscribed("cdc.orders") == ["msdb.orders.public.orders", "msdb.orders.public.order_items"]
    assert t.subscribed("cdc.users") == ["msdb.users.public.users"]
    ev = {"source": {"schema": "public", "table": "order_items"}}
    assert t.of_event("cdc.orders", ev) == "msdb.orders.public.order_items"
    assert t.of_event("plain", ev) == "plain" and t.subscribed("plain") == ["plain"]


def test_the_catalog_on_mongodb_is_named_as_debeziums_mongodb_connector_names_it():
    # <prefix>.<database>.<collection>: the database where PostgreSQL's has the schema.
    pytest.importorskip("pymongo", reason="the seed-engines extra is not installed")
    mongo = EnginesConfig(catalog="mongodb", mongodb_url="mongodb://u:p@127.0.0.1:1,h:2/shop?authSource=admin")
    t = bus_kafka.DebeziumTopics.for_engines(mongo)
    assert t.subscribed("cdc.catalog") == ["msdb.catalog.shop.products"]
    assert t.subscribed("cdc.orders") == ["msdb.orders.public.orders", "msdb.orders.public.order_items"]
    # A consumer that does not reach MongoDB (search) is told the database.
    told = EnginesConfig(bus="kafka", kafka_bootstrap="h:1", catalog_cdc_namespace="shop")
    assert bus_kafka.DebeziumTopics.for_engines(told).subscribed("cdc.catalog") == \
        ["msdb.catalog.shop.products"]
    assert bus_kafka.DebeziumTopics.for_engines(EnginesConfig()).subscribed("cdc.catalog") == \
        ["msdb.catalog.public.products"]
    # The publisher's side: a MongoDB change names its database (ours and Debezium's).
    ev = {"source": {"connector": "mongodb", "db": "shop", "collection": "products", "table": "products"}}
    assert bus_kafka.DebeziumTopics().of_event("cdc.catalog", ev) == "msdb.catalog.shop.products"
    pg = {"source": {"db": "catalog", "schema": "public", "table": "products"}}
    assert bus_kafka.DebeziumTopics().of_event("cdc.catalog", pg) == "msdb.catalog.public.products"


def test_keys_and_values():
    assert bus_kafka.record_key({"after": {"id": 7}}) == b"7"
    assert bus_kafka.record_key({"before": {"order_id": "o", "product_id": "p"}}) == b"o"
    assert bus_kafka.record_key({"after": None, "before": None}) is None
    env = {"op": "c", "after": {"id": 1}, "source": {"lsn": 5}}
    assert bus_kafka.decode_value(b'{"op":"c","after":{"id":1},"source":{"lsn":5}}') == env
    wrapped = b'{"schema":{"type":"struct"},"payload":{"op":"c","after":{"id":1},"source":{"lsn":5}}}'
    assert bus_kafka.decode_value(wrapped) == env
    assert bus_kafka.decode_value(None) is None          # a delete's tombstone
    assert bus_kafka.decode_value(b"not json") is None


def test_open_bus_follows_engines():
    assert isinstance(open_bus(EnginesConfig(), object()), RedisStreamBus)
    kafka = open_bus(EnginesConfig(bus="kafka", kafka_bootstrap="127.0.0.1:1"), None)
    assert isinstance(kafka, bus_kafka.KafkaBus) and kafka.bootstrap == "127.0.0.1:1"
    with pytest.raises(ValueError, match="engines.bus"):
        open_bus(EnginesConfig(), None)
