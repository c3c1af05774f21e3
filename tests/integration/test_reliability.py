"""Reliability of the streaming job against the real broker, Spark, PostgreSQL and SUMO.

Four failures a city pipeline meets in practice, each on this test's own topics, schema and
checkpoints: the job process killed mid-stream, the broker restarted under a live job, PostgreSQL
gone for 20 s, and every kind of malformed event the field produces. The inputs are real: a
10-minute SUMO run of the cologne8 twin, or the load generator over the twin's registered sensors.
The serving tables are compared with an uninterrupted run or with an independent pandas
computation over exactly the events that were produced.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from psycopg import sql

from cityos import events
from cityos.db import connect, migrate
from cityos.settings import SHARED_DIR, Settings
from cityos.stack.kafka import admin_client
from cityos.streaming.jobs.aggregate import query_name, run_pipeline
from cityos.streaming.producer import make_producer
from cityos.streaming.sources import loadgen, twin
from cityos.streaming.sources.registry import register_twin
from cityos.topics import Topics
from tests.integration.pipeline_tools import (
    LiveJob,
    Recorder,
    RecordingProducer,
    assert_close,
    assert_same_index,
    committed,
    consume_all,
    expected_air,
    expected_traffic,
    job_process,
    kill_group,
    own_settings,
    registered_speed_limits,
    table,
    wait_for,
)
from tests.jobs.conftest import spark  # noqa: F401 - the shared local SparkSession fixture
from tests.sql import scalar

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)
_BASE = Topics(prefix="")  # twin events are recorded by topic base name, published per test

TWIN_MINUTES = 5  # 135 traffic + 80 environment events of cologne8
LOAD_RATE = 20.0  # events/s, before, during and after a failure
LOAD_TAIL_S = 5.0  # load after the failed component is back
BIG = 8 << 20  # client-side cap for the 1 MiB event (the project producer stops at 1 MB)
TOPIC_MAX_MESSAGE_BYTES = 4 << 20  # per-test topics that must hold a 1 MiB event
ONE_MIB = 1 << 20

# malformed kind (loadgen.MALFORMED, plus a 1 MiB event) -> the reason the job must give
EXPECTED_REASON = {
    "wrong_type": "wrong_type",
    "nan": "non_finite",
    "negative_count": "negative",
    "occupancy_over_one": "out_of_range",
    "far_future": "future",
    "ancient": "too_old",
    "period_reversed": "bad_period",
    "no_timezone": "wrong_type",
    "missing_field": "missing_field",
    "unknown_type": "unknown_type",
    "not_an_object": "not_json",
    "truncated": "not_json",
    "binary_garbage": "not_json",
    "oversize": "oversize",
    "unknown_sensor": "unknown_sensor",
    "one_mebibyte": "oversize",
}
EACH_KIND = 3


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def prepared() -> twin.Prepared:
    return twin.prepare("cologne8", SHARED_DIR / "data")


@pytest.fixture(scope="module")
def twin_run(prepared: twin.Prepared) -> list[tuple[str, events.Event]]:
    """(topic base, event) of a short cologne8 run that ended a few minutes ago."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    recorder = Recorder()
    with twin.Twin(prepared.scenario, prepared.layout, prepared.stations) as sim:
        twin.run(sim, recorder, _BASE, start=start, speedup=math.inf, duration_s=TWIN_MINUTES * 60)
    return recorder.sent


@pytest.fixture
def other_schema(database_url: str) -> Iterator[str]:
    """A second fresh schema, for the uninterrupted reference run."""
    schema = f"t_{uuid.uuid4().hex[:8]}"
    migrate(database_url, schema)
    yield schema
    with connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def job_settings(settings: Settings, schema: str, state_dir, **changes: object) -> Settings:
    """The test's settings with its own schema, checkpoints and lake, on two shuffle partitions."""
    return own_settings(settings, schema, state_dir, spark_shuffle_partitions=2, **changes)


def register(database_url: str, schema: str, prepared: twin.Prepared) -> None:
    with connect(database_url, schema=schema, autocommit=True) as conn:
        register_twin(conn, prepared.city, prepared.layout, prepared.stations)


def publish(bootstrap: str, topics: Topics, records: list[tuple[str, events.Event]]) -> None:
    producer = make_producer(bootstrap)
    for base, event in records:
        producer.send(getattr(topics, base), event)
    producer.flush(60)
    producer.close()
    assert (producer.stats.sent, producer.stats.failed) == (len(records), 0)


def log_tail(path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def assert_tables_equal(database_url: str, got_schema: str, want_schema: str) -> None:
    """Same windows, same integers, same means (up to float summation order)."""
    for name, exact in (
        ("traffic_5m", ["zone_id", "window_end", "vehicle_count"]),
        ("air_quality_1h", ["zone_id", "window_end", "aqi", "aqi_category"]),
    ):
        got, want = table(database_url, got_schema, name), table(database_url, want_schema, name)
        assert len(want) > 0, f"the reference run wrote no {name} rows"
        assert_same_index(got, want, name)
        got = got.loc[want.index]
        for col in exact:
            same = (got[col] == want[col]) | (got[col].isna() & want[col].isna())
            diff = f"{got[col][~same].head()} != {want[col][~same].head()}"
            assert same.all(), f"{name}.{col}: {diff}"
        for col in set(want.columns) - set(exact):
            assert_close(got[col], want[col], f"{name}.{col}", rel=1e-12)


# ----------------------------------------------------------------------------- 1. SIGKILL
def test_sigkill_mid_stream_then_restart_matches_uninterrupted_run(
    prepared,
    twin_run,
    topics,
    settings,
    kafka_bootstrap,
    database_url,
    pg_schema,
    other_schema,
    tmp_path,
    spark,  # noqa: F811
):
    for schema in (pg_schema, other_schema):
        register(database_url, schema, prepared)
    publish(kafka_bootstrap, topics, twin_run)
    produced = Counter(base for base, _ in twin_run)
    traffic_q, env_q = query_name(topics.traffic), query_name(topics.environment)
    crashed = job_settings(settings, pg_schema, tmp_path / "crashed", max_offsets_per_trigger=45)
    job_log = tmp_path / "job.log"

    # first run: killed with SIGKILL (driver and JVM) right after its first traffic batch merged
    with job_process(crashed, "available", job_log) as proc:

        def first_merge() -> bool:
            assert proc.poll() is None, f"job exited ({proc.returncode}):\n{log_tail(job_log)}"
            return traffic_q in committed(database_url, pg_schema)

        wait_for(first_merge, timeout_s=240, what="the first merged traffic batch", every_s=0.1)
        kill_group(proc)
    at_kill = committed(database_url, pg_schema)
    merged = sum(valid for _, valid, _ in at_kill.values())
    assert merged < len(twin_run), "the job had processed everything before the kill"
    assert (crashed.state_dir / "checkpoints" / traffic_q / "offsets").is_dir()

    # second run: same checkpoint, same schema, runs to the end
    with job_process(crashed, "available", job_log) as proc:
        rc = proc.wait(timeout=400)
    assert rc == 0, f"restarted job failed ({rc}):\n{log_tail(job_log)}"
    replays = job_log.read_text().count("was merged before a restart: skipped")
    log.info("killed after %s; the restart skipped %d replayed batch(es)", at_kill, replays)

    # reference: the same input, uninterrupted and in one batch per topic, into the other schema
    reference = job_settings(settings, other_schema, tmp_path / "reference")
    run_pipeline(reference, until="available", spark=spark)

    for schema in (pg_schema, other_schema):
        done = committed(database_url, schema)
        assert done[traffic_q][1:] == (produced["traffic"], 0), f"traffic rows in {schema}"
        assert done[env_q][1:] == (produced["environment"], 0), f"environment rows in {schema}"
    with connect(database_url, pg_schema) as conn:
        readings = scalar(conn, "SELECT sum(readings) FROM traffic_5m_acc")
    assert readings == produced["traffic"]  # no batch added twice
    assert_tables_equal(database_url, pg_schema, other_schema)


# ----------------------------------------------------------------------------- 2. and 3. outages
def run_load_through(
    outage, prepared, topics, settings, kafka_bootstrap, database_url, pg_schema, tmp_path, session
) -> tuple[LiveJob, RecordingProducer]:
    """Load flows and the live job runs while ``outage()`` happens; all of it is merged once."""
    register(database_url, pg_schema, prepared)
    with connect(database_url, pg_schema) as conn:
        targets = loadgen.registered_targets(conn, "cologne")
    generator = loadgen.LoadGenerator(targets, seed=2026)
    producer = RecordingProducer(make_producer(kafka_bootstrap))
    live = job_settings(settings, pg_schema, tmp_path / "live", trigger_seconds=2.0)
    traffic_q, env_q = query_name(topics.traffic), query_name(topics.environment)
    stop_load = threading.Event()
    load = threading.Thread(
        target=generator.run,
        name="load",
        args=(producer, topics),
        kwargs={"rate": LOAD_RATE, "duration_s": 3600.0, "stop": stop_load},
    )
    with LiveJob(live, session) as job:
        load.start()
        try:
            wait_for(
                lambda: traffic_q in committed(database_url, pg_schema) or job.error,
                timeout_s=180,
                what="the live job's first merged batch",
            )
            assert job.error is None, f"the live job failed before the outage: {job.cause()}"
            before = len(producer.sent)
            outage()
            assert len(producer.sent) > before + LOAD_RATE, "no load flowed during the outage"
            time.sleep(LOAD_TAIL_S)
        finally:
            stop_load.set()
            load.join(timeout=180)
        producer.flush(120)
        producer.close()
        assert producer.stats.failed == 0, f"lost deliveries: {producer.stats.last_error}"
        want = {
            traffic_q: len(producer.events_of(topics.traffic)),
            env_q: len(producer.events_of(topics.environment)),
        }
        assert sum(want.values()) == producer.stats.sent == len(producer.sent)
        # the broker holds each produced event once (an idempotent producer over a restart)
        for topic in topics.sources():
            assert len(consume_all(kafka_bootstrap, topic)) == len(producer.events_of(topic))

        def caught_up() -> bool:
            assert job.error is None, f"the live job died: {job.cause()}"
            assert job.alive, "the live job stopped by itself"
            done = committed(database_url, pg_schema)
            return all(done.get(q, (0, 0, 0))[1] >= n for q, n in want.items())

        wait_for(caught_up, timeout_s=240, what="the job to merge every produced event")
        time.sleep(3 * live.trigger_seconds)  # a duplicate would show up by now
        done = committed(database_url, pg_schema)
        assert {q: done[q][1:] for q in want} == {q: (n, 0) for q, n in want.items()}
        assert job.error is None and job.alive
    assert job.error is None, f"the live job failed while stopping: {job.cause()}"
    return job, producer


def assert_serving_matches(producer: RecordingProducer, topics, database_url: str, schema: str):
    """traffic_5m and air_quality_1h equal a pandas computation over the produced events."""
    traffic = table(database_url, schema, "traffic_5m")
    want = expected_traffic(
        producer.events_of(topics.traffic), registered_speed_limits(database_url, schema)
    )
    assert_same_index(traffic, want, "traffic_5m")
    traffic = traffic.loc[want.index]
    assert (traffic.vehicle_count == want.vehicle_count).all()
    assert traffic.zone_id.notna().all()
    assert_close(traffic.avg_speed_kmh, want.avg_speed_kmh, "traffic_5m.avg_speed_kmh")
    assert_close(traffic.occupancy, want.occupancy, "traffic_5m.occupancy")

    air = table(database_url, schema, "air_quality_1h")
    want_air = expected_air(producer.events_of(topics.environment))
    assert_same_index(air, want_air, "air_quality_1h")
    air = air.loc[want_air.index]
    for col in want_air.columns:
        assert_close(air[col], want_air[col], f"air_quality_1h.{col}")
    # last: the index depends on each approach's registered speed limit
    assert_close(traffic.congestion_index, want.congestion_index, "traffic_5m.congestion_index")


def test_broker_restart_under_live_job_loses_and_duplicates_nothing(
    stack,
    prepared,
    topics,
    settings,
    kafka_bootstrap,
    database_url,
    pg_schema,
    tmp_path,
    spark,  # noqa: F811
):
    def restart_broker() -> None:
        time.sleep(3)  # some events before, some during, some after
        stack.kafka.restart()  # returns once the broker serves metadata again
        assert stack.kafka.healthy()

    _, producer = run_load_through(
        restart_broker,
        prepared,
        topics,
        settings,
        kafka_bootstrap,
        database_url,
        pg_schema,
        tmp_path,
        spark,
    )
    assert_serving_matches(producer, topics, database_url, pg_schema)


def test_postgres_down_20s_job_recovers_on_its_own(
    stack,
    prepared,
    topics,
    settings,
    kafka_bootstrap,
    database_url,
    pg_schema,
    tmp_path,
    spark,  # noqa: F811
):
    def postgres_gone() -> None:
        stack.postgres.stop()
        try:
            assert not stack.postgres.healthy()
            time.sleep(20)
        finally:
            stack.postgres.start()

    _, producer = run_load_through(
        postgres_gone,
        prepared,
        topics,
        settings,
        kafka_bootstrap,
        database_url,
        pg_schema,
        tmp_path,
        spark,
    )
    assert_serving_matches(producer, topics, database_url, pg_schema)


# ----------------------------------------------------------------------------- 4. malformed events
def raise_max_message_bytes(bootstrap: str, names: list[str], size: int) -> None:
    with admin_client(bootstrap) as admin:
        admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, name, configs={"max.message.bytes": str(size)}
                )
                for name in names
            ]
        )


def test_every_malformed_kind_reaches_the_dlq_with_its_reason_and_bytes(
    prepared,
    topics,
    settings,
    kafka_bootstrap,
    database_url,
    pg_schema,
    tmp_path,
    spark,  # noqa: F811
):
    assert set(EXPECTED_REASON) == {*loadgen.MALFORMED, "one_mebibyte"}, "a kind without a reason"
    register(database_url, pg_schema, prepared)
    with connect(database_url, pg_schema) as conn:
        targets = loadgen.registered_targets(conn, "cologne")
    # the 1 MiB event must reach the broker, and its dead letter the DLQ
    raise_max_message_bytes(
        kafka_bootstrap, [topics.traffic, topics.dlq(topics.traffic)], TOPIC_MAX_MESSAGE_BYTES
    )

    rng = random.Random(99)  # noqa: S311 - reproducible input
    now = datetime.now(UTC)
    generator = loadgen.LoadGenerator(targets, seed=99)
    records: list[tuple[str, str, bytes | None, bytes]] = []  # (kind, topic, key, value)
    for _ in range(120):
        topic, event, _bad = generator.next(topics, now)
        records.append(("valid", topic, events.key_of(event), events.encode(event)))
    for kind in loadgen.MALFORMED:
        for _ in range(EACH_KIND):
            key, value = loadgen.malformed(kind, rng, now)
            records.append((kind, topics.traffic, key, value))
    huge = loadgen.traffic_event(rng, targets[0].sensor_id, now)
    huge_value = events.encode({**huge, "note": "x" * ONE_MIB})
    assert len(huge_value) > ONE_MIB
    records += [("one_mebibyte", topics.traffic, events.key_of(huge), huge_value)] * 2
    rng.shuffle(records)

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=BIG)
    futures = [producer.send(topic, key=key, value=value) for _, topic, key, value in records]
    producer.flush(60)
    where = {}  # (topic, partition, offset) -> record: each one acknowledged by the broker
    for record, future in zip(records, futures, strict=True):
        meta = future.get(timeout=30)
        where[(meta.topic, meta.partition, meta.offset)] = record
    producer.close()

    job = job_settings(settings, pg_schema, tmp_path / "fuzz")
    run_pipeline(job, until="available", spark=spark)

    produced = Counter(kind for kind, *_ in records)
    valid_by_topic = Counter(topic for kind, topic, *_ in records if kind == "valid")
    dead: Counter[str] = Counter()
    for topic in topics.sources():
        for message in consume_all(kafka_bootstrap, topics.dlq(topic)):
            headers = {k: v.decode() for k, v in message.headers}
            source = (
                headers["source.topic"],
                int(headers["source.partition"]),
                int(headers["source.offset"]),
            )
            kind, original_topic, key, value = where[source]
            assert original_topic == topic
            assert kind != "valid", f"a valid event was dead-lettered: {headers['reason']}"
            assert headers["reason"] == EXPECTED_REASON[kind], f"{kind} at {source}"
            assert (message.key, message.value) == (key, value), f"{kind}: bytes changed"
            dead[kind] += 1
    assert dead == Counter({k: n for k, n in produced.items() if k != "valid"})

    done = committed(database_url, pg_schema)
    assert {q: done[q][1:] for q in done} == {
        query_name(topics.traffic): (valid_by_topic[topics.traffic], sum(dead.values())),
        query_name(topics.environment): (valid_by_topic[topics.environment], 0),
    }
    assert sum(v for _, v, _ in done.values()) + sum(dead.values()) == len(records)
