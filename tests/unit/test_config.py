"""The seed §3.2 config loader: good values load, bad ones name their key."""

from __future__ import annotations

import textwrap

import pytest

from system_under_test.config import DEFAULT_CONFIG_PATH, ConfigError, load

ENV = {"DB_HOST": "127.0.0.1", "DB_PORT": "5432", "DB_NAME": "order_service_db",
       "DB_USER": "order_service", "DB_PASSWORD": "pw", "REDIS_URL": "redis://u:p@127.0.0.1:6379/0",
       "CATALOG_URL": "http://127.0.0.1:1"}


def write(tmp_path, text: str):
    p = tmp_path / "services.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_shipped_file_carries_the_seed_pool_settings():
    cfg = load(DEFAULT_CONFIG_PATH, env=ENV, requires=("database", "redis"))
    pool = cfg.database.pool
    assert (pool.max, pool.min, pool.acquire, pool.idle) == (20, 5, 30000, 10000)
    assert cfg.database.name == "order_service_db" and cfg.database.port == 5432
    assert cfg.database.dialect == "postgres" and cfg.database.ssl == "require"
    assert cfg.peers == {"catalog": "http://127.0.0.1:1"}
    assert "pw" not in repr(cfg.database)   # secrets stay out of logs


def test_env_default_syntax_and_override():
    cfg = load(DEFAULT_CONFIG_PATH, env={**ENV, "DB_POOL_MAX": "7"}, requires=("database",))
    assert cfg.database.pool.max == 7


@pytest.mark.parametrize("missing", ["DB_HOST", "DB_PASSWORD", "DB_PORT"])
def test_missing_env_names_key_and_variable(missing):
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(ConfigError) as e:
        load(DEFAULT_CONFIG_PATH, env=env, requires=("database",))
    assert missing in str(e.value) and str(e.value).startswith("database.")


def test_unrequired_section_may_stay_unset():
    cfg = load(DEFAULT_CONFIG_PATH, env={"REDIS_URL": ENV["REDIS_URL"]}, requires=("redis",))
    assert cfg.database is None and cfg.redis_url == ENV["REDIS_URL"]


BASE = """
database:
  host: h
  port: 5432
  name: n
  username: u
  password: p
  pool: {max: 20, min: 5, acquire: 30000, idle: 10000}
  dialect: postgres
  ssl: require
"""


@pytest.mark.parametrize("old,new,key", [
    ("max: 20", "max: lots", "database.pool.max"),
    ("max: 20", "max: 0", "database.pool.max"),
    ("min: 5", "min: 50", "database.pool.min"),
    ("acquire: 30000", "acquire: -1", "database.pool.acquire"),
    (", idle: 10000", "", "database.pool.idle"),            # missing key
    ("max: 20", "maxx: 20", "database.pool.maxx"),          # unknown key
    ("port: 5432", "port: 99999", "database.port"),
    ("port: 5432", "port: abc", "database.port"),
    ("ssl: require", "ssl: sometimes", "database.ssl"),
    ("dialect: postgres", "dialect: mysql", "database.dialect"),
    ("  username: u\n", "", "database.username"),
    ("  host: h\n", "  host: h\n  hots: x\n", "database.hots"),
])
def test_bad_values_name_the_key(tmp_path, old, new, key):
    text = BASE.replace(old, new)
    assert text != BASE
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text), env={}, requires=("database",))
    assert str(e.value).startswith(key), str(e.value)


def test_unknown_section_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"^\(top level\)\.databse: unknown key"):
        load(write(tmp_path, "databse: {}\n"), env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(write(tmp_path, "database: [\n"), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match=r"^database: missing section"):
        load(write(tmp_path, "redis: {url: 'redis://x'}\n"), env={}, requires=("database",))


def test_bad_urls_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^redis.url"):
        load(write(tmp_path, "redis: {url: 'http://x'}\n"), env={}, requires=("redis",))
    with pytest.raises(ConfigError, match=r"^peers.catalog"):
        load(write(tmp_path, "peers: {catalog: 'ftp://x'}\n"), env={}, requires=("peers",))


def test_catalog_cdc_namespace_is_read_and_a_bad_one_named():
    cfg = load(DEFAULT_CONFIG_PATH, env={"BUS_ENGINE": "kafka", "KAFKA_BOOTSTRAP": "127.0.0.1:9092",
                                         "CATALOG_CDC_NAMESPACE": "product_service_db"},
               requires=("engines",))
    assert cfg.engines.catalog_cdc_namespace == "product_service_db"
    assert load(DEFAULT_CONFIG_PATH, env={}, requires=("engines",)).engines.catalog_cdc_namespace is None
    with pytest.raises(ConfigError, match=r"engines.catalog_cdc_namespace: .*'a.b'"):
        load(DEFAULT_CONFIG_PATH, env={"CATALOG_CDC_NAMESPACE": "a.b"}, requires=("engines",))
