"""Sources against the real broker, PostgreSQL and SUMO: what is sent is what comes back."""

from __future__ import annotations

import math
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaConsumer

from cityos import events
from cityos.db import connect
from cityos.settings import SHARED_DIR
from cityos.streaming.producer import ProducerError, make_producer
from cityos.streaming.sources import loadgen, replay, twin
from cityos.streaming.sources.registry import open_city, register_twin, write_city, write_sensors
from tests.sql import scalar

pytestmark = pytest.mark.integration
DATA = SHARED_DIR / "data"


def consume(bootstrap: str, topic: str | list[str], expected: int, timeout_s: float = 60) -> list:
    """Records of the topic(s) from the start, until ``expected`` arrived or time is up."""
    names = [topic] if isinstance(topic, str) else topic
    consumer = KafkaConsumer(
        *names,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        consumer_timeout_ms=5000,
        enable_auto_commit=False,
    )
    records: list[Any] = []
    deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
    try:
        while len(records) < expected and datetime.now(UTC) < deadline:
            batch = consumer.poll(timeout_ms=1000)
            for part in batch.values():
                records.extend(part)
    finally:
        consumer.close()
    return records


@pytest.fixture(scope="module")
def prepared():
    return twin.prepare("cologne8", DATA)


def test_twin_ten_minutes_round_trip(prepared, kafka_bootstrap, topics, database_url, pg_schema):
    with connect(database_url, schema=pg_schema, autocommit=True) as conn:
        register_twin(conn, prepared.city, prepared.layout, prepared.stations)
        register_twin(conn, prepared.city, prepared.layout, prepared.stations)  # idempotent
        counts = dict(
            conn.execute(
                "SELECT kind, count(*) FROM sensors WHERE city_id = 'cologne' GROUP BY kind"
            )
        )
        assert counts == {"traffic": 27, "air_quality": 8}
        assert scalar(conn, "SELECT count(*) FROM intersections") == 8
        assert scalar(conn, "SELECT count(*) FROM signal_phases") == sum(
            len(s.phases) for s in prepared.layout.signals
        )
        assert scalar(conn, "SELECT count(*) FROM sensor_speed_limits") == 27
        zoned = scalar(conn, "SELECT count(*) FROM sensors WHERE zone_id LIKE 'cologne-stt-%'")
        assert zoned == 35

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    producer = make_producer(kafka_bootstrap)
    with twin.Twin(prepared.scenario, prepared.layout, prepared.stations) as sim:
        stats = twin.run(sim, producer, topics, start=start, speedup=math.inf, duration_s=600)
        state = sim.signal_state()["32319828"]
        assert [p.green_s for p in state.phases] == [78.0, 6.0]
        sim.set_green("32319828", 0, 60.0)
        assert sim.signal_state()["32319828"].phases[0].green_s == 60.0
        with pytest.raises(ValueError, match="outside"):
            sim.set_green("32319828", 1, 45.0)  # protected left: max 20 s
    producer.flush(60)
    producer.close()
    assert stats.periods == 10 and stats.traffic_events == 270
    assert stats.environment_events == 160
    assert (producer.stats.sent, producer.stats.failed) == (430, 0)

    traffic = consume(kafka_bootstrap, topics.traffic, 270)
    env = consume(kafka_bootstrap, topics.environment, 160)
    assert len(traffic) == 270 and len(env) == 160
    for record in traffic + env:
        event = events.parse(record.value)[0]
        assert record.key == event["refDevice"].encode()
        assert events.validate(event) == [], event
    per_sensor = Counter(events.parse(r.value)[0]["refDevice"] for r in traffic)
    assert per_sensor == {a.sensor_id: 10 for a in prepared.layout.approaches}
    first = min(events.parse(r.value)[0]["dateObservedFrom"] for r in traffic)
    assert first == events.iso(start)
    assert sum(events.parse(r.value)[0]["intensity"] for r in traffic) > 100
    kinds = Counter(events.parse(r.value)[0]["type"] for r in env)
    assert kinds == {"AirQualityObserved": 80, "NoiseLevelObserved": 80}


def test_beijing_replay_slice(kafka_bootstrap, topics, database_url, pg_schema):
    city = open_city("beijing", DATA)
    sensors = replay.beijing_sensors(DATA)
    with connect(database_url, schema=pg_schema, autocommit=True) as conn:
        write_city(conn, city)
        write_sensors(conn, city, sensors)
        zones = dict(conn.execute("SELECT sensor_id, zone_id FROM sensors"))
    assert zones["beijing-aq-dongsi"] == "beijing-110101"
    assert zones["beijing-aq-changping"] == "beijing-110114"

    since = datetime(2016, 12, 19, tzinfo=UTC)
    records, missing = replay.beijing_records(DATA, since, since + timedelta(hours=2))
    producer = make_producer(kafka_bootstrap, "confluent")
    stats = replay.publish(records, producer, topics, speed=math.inf, rebase=False)
    producer.close()
    assert stats.sent == 24 and producer.stats.failed == 0
    back = consume(kafka_bootstrap, topics.environment, 24)
    built = sorted((events.parse(r.value)[0] for r in back), key=lambda e: e["id"])
    expected = sorted((r.build(timedelta(0)) for r in records), key=lambda e: e["id"])
    assert [{k: v for k, v in e.items() if k != "producedAt"} for e in built] == expected


def test_load_generator_with_malformed_share(kafka_bootstrap, topics):
    gen = loadgen.LoadGenerator(loadgen.synthetic_targets(50), malformed_share=0.2, seed=11)
    producer = make_producer(kafka_bootstrap, "confluent")
    stats = gen.run(producer, topics, rate=500, duration_s=2.0)
    producer.close()
    assert stats.failed == 0 and stats.delivered == stats.sent > 500
    records = consume(kafka_bootstrap, [topics.traffic, topics.environment], stats.sent)
    assert len(records) == stats.sent
    bad = [r for r in records if events.check(r.value, max_bytes=64 * 1024)]
    # every malformed event except unknown sensors is caught by the shared validation
    assert 0 < len(bad) <= stats.malformed


def test_load_generator_in_a_process_of_its_own(kafka_bootstrap, topics):
    """The latency benchmark's generator runs beside the Spark driver, not in its interpreter."""
    targets = loadgen.synthetic_targets(20, air_share=0.0)
    stats = loadgen.run_in_process(
        kafka_bootstrap, "confluent", targets, topics, rate=300, duration_s=1.5, seed=3
    )
    assert stats.failed == 0 and stats.delivered == stats.sent >= 300
    records = consume(kafka_bootstrap, topics.traffic, stats.sent)
    assert len(records) == stats.sent
    assert {r.key.decode() for r in records} <= {t.sensor_id for t in targets}
    with pytest.raises(ProducerError, match="the load generator failed: .*no-such-client"):
        loadgen.run_in_process(
            kafka_bootstrap, "no-such-client", targets, topics, rate=10, duration_s=0.1
        )


def test_delivery_failures_are_counted_not_silent(kafka_bootstrap, topics):
    producer = make_producer(kafka_bootstrap, "kafka-python")
    producer.send_raw(topics.traffic, b"k", b"x" * (3 * 1024 * 1024))  # over the size limit
    producer.send(topics.traffic, events.air_quality("x", datetime.now(UTC), pm25=1.0))
    producer.flush(30)
    producer.close()
    assert producer.stats.failed == 1 and producer.stats.sent == 1
    assert producer.stats.last_error


def test_cli_twin_and_load(settings, topics, kafka_bootstrap, monkeypatch):
    """`cityos stream twin` and `cityos stream load` end to end (no registration: shared DB)."""
    from typer.testing import CliRunner

    from cityos.cli import app
    from cityos.settings import get_settings

    monkeypatch.setenv("CITYOS_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("CITYOS_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("CITYOS_TOPIC_PREFIX", topics.prefix)
    monkeypatch.setenv("CITYOS_STATE_DIR", str(settings.state_dir))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(
            app, ["stream", "twin", "--no-register", "--duration", "120", "--speedup", "inf"]
        )
        assert result.exit_code == 0, result.output
        assert "54 traffic and 32 environment events" in result.output
        result = runner.invoke(
            app,
            [
                "stream",
                "load",
                "--synthetic",
                "20",
                "--rate",
                "200",
                "--duration",
                "1",
                "--client",
                "kafka-python",
            ],
        )
        assert result.exit_code == 0, result.output
        assert "failed 0" in result.output
    finally:
        get_settings.cache_clear()
    assert len(consume(kafka_bootstrap, topics.traffic, 54 + 100)) >= 54 + 100
