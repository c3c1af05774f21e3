"""The embedded stack against the real services: Kafka 4.1 KRaft and PostgreSQL 18.

Two kinds of tests: those on the shared test stack (the conftest fixtures other parts use), and
those on a private stack of their own, in a fresh ``mkdtemp`` folder (mode 700, as CI's clone)
on free ports, for what would disturb others: restarts, stop/start, down.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from psycopg import sql

from cityos.db import connect, psycopg_url
from cityos.errors import ConfigError, StackError
from cityos.settings import SHARED_DIR, cache_dir_from_env, load_settings, read_env_file
from cityos.stack import Stack, StackConfig, delete_topics, ensure_topics
from cityos.stack.jars import ENSURE_JARS, jar_set_dir, kafka_classpath, spark_jars
from cityos.stack.kafka import admin_client, new_cluster_id
from cityos.stack.postgres import SYSTEM_USER, make_reachable
from cityos.stack.process import find_java
from cityos.topics import Topics
from tests.sql import scalar

CONTRACT = SHARED_DIR / "contracts" / "serving-schema.md"


# ---- unit: no services ----------------------------------------------------------------------


def test_cluster_id_is_16_bytes_of_urlsafe_base64():
    ids = {new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cid)
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_stack_config_needs_no_connection_settings(monkeypatch, tmp_path):
    monkeypatch.delenv("CITYOS_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("CITYOS_DATABASE_URL", raising=False)
    monkeypatch.setenv("CITYOS_POSTGRES_PORT", "15999")
    config = StackConfig.from_env(state_dir=tmp_path)
    assert config.state_dir == tmp_path
    assert config.postgres_port == 15999
    assert config.retention_ms == config.kafka_retention_hours * 3_600_000


def test_bad_port_setting_is_named(monkeypatch):
    monkeypatch.setenv("CITYOS_KAFKA_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="CITYOS_KAFKA_PORT"):
        StackConfig.from_env()


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(StackError, match="JAVA_HOME"):
        find_java()
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="Java .* not found"):
        find_java()


def test_make_reachable_opens_a_700_ancestor(tmp_path):
    private = tmp_path / "clone"
    private.mkdir(mode=0o700)
    target = private / "state" / "postgres"
    target.mkdir(parents=True)
    make_reachable(target)
    assert private.stat().st_mode & stat.S_IXOTH
    assert not private.stat().st_mode & stat.S_IROTH  # searchable, still not listable


# ---- jars ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_spark_jars_add_only_what_pyspark_lacks():
    import pyspark

    jars = spark_jars()
    names = {re.sub(r"-\d[\w.]*\.jar$", "", jar.name) for jar in jars}
    assert names == {
        "spark-sql-kafka-0-10_2.13",
        "spark-token-provider-kafka-0-10_2.13",
        "kafka-clients",
        "commons-pool2",
        "postgresql",
    }
    shipped = {p.name for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    assert not shipped & {jar.name for jar in jars}
    assert any(jar.name == f"spark-sql-kafka-0-10_2.13-{pyspark.__version__}.jar" for jar in jars)


@pytest.mark.integration
def test_ensure_jars_and_python_agree_on_the_cache():
    env = {**os.environ, "CITYOS_CACHE_DIR": str(cache_dir_from_env())}
    printed = subprocess.run(
        ["bash", str(ENSURE_JARS), "kafka", "spark"], env=env, capture_output=True, text=True
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.split() == [str(jar_set_dir("kafka")), str(jar_set_dir("spark"))]
    classpath = kafka_classpath().split(os.pathsep)
    assert any(Path(p).name == "kafka_2.13-4.1.1.jar" for p in classpath)
    assert any(Path(p).name.startswith("log4j-slf4j-impl-") for p in classpath)


# ---- the shared test stack (conftest fixtures) -----------------------------------------------


def _partitions_and_retention(bootstrap: str, topic: str) -> tuple[int, str]:
    with admin_client(bootstrap) as admin:
        [described] = admin.describe_topics([topic])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    retention = configs["topic"][topic]["retention.ms"]["value"]
    return len(described["partitions"]), retention


@pytest.mark.integration
def test_topics_fixture_creates_every_topic_with_partitions_and_retention(
    topics, kafka_bootstrap, stack
):
    assert re.fullmatch(r"t[0-9a-f]{8}\.", topics.prefix)
    with admin_client(kafka_bootstrap) as admin:
        existing = set(admin.list_topics())
    assert set(topics.all()) <= existing
    partitions, retention = _partitions_and_retention(kafka_bootstrap, topics.traffic)
    assert partitions == stack.config.kafka_partitions
    assert retention == str(stack.config.retention_ms)


@pytest.mark.integration
def test_ensure_topics_is_idempotent_and_explicit(kafka_bootstrap):
    name = f"t{uuid.uuid4().hex[:8]}.explicit"
    try:
        assert ensure_topics(kafka_bootstrap, [name], partitions=3, retention_ms=60_000) == [name]
        assert ensure_topics(kafka_bootstrap, [name], partitions=3, retention_ms=60_000) == []
        assert _partitions_and_retention(kafka_bootstrap, name) == (3, "60000")
        with pytest.raises(StackError, match="partition"):
            ensure_topics(kafka_bootstrap, ["never"], partitions=0, retention_ms=60_000)
    finally:
        assert delete_topics(kafka_bootstrap, [name]) == [name]


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close()


def _consume_all(bootstrap: str, topic: str, want: int, timeout_s: float = 60) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + timeout_s
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.5)
            partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"no partitions for {topic}"
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records: list = []
        while len(records) < want and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.mark.integration
def test_produce_and_consume_on_the_test_broker(topics, kafka_bootstrap):
    value = f'{{"id": "{uuid.uuid4()}"}}'.encode()
    _produce(kafka_bootstrap, topics.traffic, b"cologne-tr-01", value)
    [record] = _consume_all(kafka_bootstrap, topics.traffic, want=1)
    assert (record.key, record.value) == (b"cologne-tr-01", value)


def _columns(url: str, schema: str) -> set[tuple[str, str, str, str]]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable"
            " FROM information_schema.columns WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    return {tuple(row) for row in rows}


@pytest.mark.integration
def test_migrations_give_the_contract_tables(database_url, pg_schema):
    """Both public (migrated by `up`) and a test schema hold every contract column, as typed."""
    ddl = re.search(r"```sql\n(.*?)```", CONTRACT.read_text(), re.S)
    assert ddl, f"no SQL block in {CONTRACT}"
    scratch = f"contract_{uuid.uuid4().hex[:8]}"
    with connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
    try:
        with connect(database_url, schema=scratch, autocommit=True) as conn:
            conn.execute(ddl.group(1))
        contract = _columns(database_url, scratch)
        assert {t for t, *_ in contract} >= {"cities", "zones", "sensors", "traffic_5m", "alerts"}
        for schema in ("public", pg_schema):
            missing = contract - _columns(database_url, schema)
            assert not missing, f"schema {schema} lacks contract columns {sorted(missing)}"
    finally:
        with connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(scratch)))


@pytest.mark.integration
@pytest.mark.parametrize("schema", [None, "public"])
@pytest.mark.parametrize("pgtz", [None, "America/New_York"], ids=["server-zone", "and-PGTZ"])
def test_connections_read_timestamps_in_utc_whatever_the_server_zone(
    database_url, schema, pgtz, monkeypatch
):
    """Alert ids and watermarks are formatted and computed from the timestamps PostgreSQL
    returns, in the session's zone: a server (here, a role) set to Berlin must still give UTC,
    and so must a client whose environment sets another zone (libpq sends ``PGTZ`` last)."""
    role, password = f"tz_{uuid.uuid4().hex[:8]}", secrets.token_hex(12)
    with connect(database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        admin.execute(
            sql.SQL("ALTER ROLE {} SET TimeZone = 'Europe/Berlin'").format(sql.Identifier(role))
        )
    try:
        parts = urlsplit(database_url)
        url = urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))
        if pgtz is not None:
            monkeypatch.setenv("PGTZ", pgtz)
        with psycopg.connect(psycopg_url(url)) as plain:
            assert plain.execute("SHOW TimeZone").fetchone() == (pgtz or "Europe/Berlin",)
        with connect(url, schema=schema) as conn:
            assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
            conn.rollback()  # the caller's first transaction rolled back keeps the zone
            stamp = scalar(conn, "SELECT '2016-12-19 07:55:00+01'::timestamptz")
        assert stamp.utcoffset() == timedelta(0) and stamp.hour == 6
        with connect(url, schema=schema, autocommit=True) as conn:
            assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
    finally:
        with connect(database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.integration
def test_settings_fixture_points_at_the_test_stack(settings, topics, kafka_bootstrap, database_url):
    assert settings.topic_prefix == topics.prefix
    assert Topics(settings.topic_prefix).traffic == topics.traffic
    assert settings.kafka_bootstrap == kafka_bootstrap
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("cityos",)


# ---- a private stack: restarts, stop/start, down ---------------------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def private_stack() -> Iterator[Stack]:
    """A stack of its own under a mode-700 mkdtemp folder (as CI's clone), on free ports."""
    root = Path(tempfile.mkdtemp(prefix="cityos-stack-"))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    kafka_port, controller_port, pg_port = _free_ports(3)
    config = StackConfig(
        state_dir=root / "clone" / ".state",
        cache_dir=cache_dir_from_env(),
        kafka_port=kafka_port,
        kafka_controller_port=controller_port,
        postgres_port=pg_port,
        kafka_partitions=2,
        kafka_retention_hours=1,
        topic_prefix="p.",
    )
    own = Stack(config)
    own.up()
    try:
        yield own
    finally:
        own.down()
        shutil.rmtree(root)


@pytest.mark.integration
def test_up_writes_a_private_env_file_that_settings_read(private_stack, monkeypatch):
    env_file = private_stack.env_file
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = read_env_file(env_file)
    assert values["CITYOS_KAFKA_BOOTSTRAP"] == private_stack.kafka.bootstrap
    assert values["CITYOS_DATABASE_URL"] == private_stack.postgres.url()
    monkeypatch.setenv("CITYOS_STATE_DIR", str(private_stack.config.state_dir))
    monkeypatch.delenv("CITYOS_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("CITYOS_DATABASE_URL", raising=False)
    loaded = load_settings()
    assert loaded.kafka_bootstrap == private_stack.kafka.bootstrap
    assert loaded.database_url.get_secret_value() == private_stack.postgres.url()


@pytest.mark.integration
def test_up_creates_the_configured_topics(private_stack):
    bootstrap = private_stack.kafka.bootstrap
    with admin_client(bootstrap) as admin:
        assert set(Topics("p.").all()) <= set(admin.list_topics())
    assert _partitions_and_retention(bootstrap, "p.environment") == (2, "3600000")


@pytest.mark.integration
def test_up_again_changes_nothing(private_stack):
    before = {item.name: item.pid for item in private_stack.status()}
    assert all(before.values())
    private_stack.up()
    after = private_stack.status()
    assert {item.name: item.pid for item in after} == before
    assert all(item.running and item.healthy for item in after)


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="the system user is only used when running as root")
def test_postgres_runs_as_its_own_user_inside_a_700_folder(private_stack):
    import pwd

    import psutil

    owner = pwd.getpwnam(SYSTEM_USER).pw_uid
    assert private_stack.postgres.data_dir.stat().st_uid == owner
    assert psutil.Process(private_stack.postgres.pid()).uids().real == owner


@pytest.mark.integration
def test_kafka_restart_keeps_the_data(private_stack):
    bootstrap = private_stack.kafka.bootstrap
    _produce(bootstrap, "p.traffic", b"before", b"restart")
    old_pid = private_stack.kafka.pid()
    new_pid = private_stack.kafka.restart()
    assert new_pid != old_pid
    assert private_stack.kafka.pid() == new_pid
    _produce(bootstrap, "p.traffic", b"after", b"restart")
    records = _consume_all(bootstrap, "p.traffic", want=2)
    assert sorted(r.key for r in records) == [b"after", b"before"]


@pytest.mark.integration
def test_postgres_stop_and_start_keeps_the_data(private_stack):
    url = private_stack.postgres.url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cities (city_id, name, timezone, aqi_standard)"
            " VALUES ('cologne', 'Cologne', 'Europe/Berlin', 'us_epa')"
        )
    private_stack.postgres.stop()
    assert private_stack.postgres.pid() is None
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3)
    private_stack.postgres.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT name FROM cities").fetchall() == [("Cologne",)]


@pytest.mark.integration
def test_down_stops_everything_and_up_comes_back(private_stack):
    private_stack.down()
    status = private_stack.status()
    assert not any(item.running or item.healthy for item in status)
    assert private_stack.kafka.pid() is None and private_stack.postgres.pid() is None
    private_stack.up()
    assert all(item.running and item.healthy for item in private_stack.status())
