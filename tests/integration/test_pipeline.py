"""The streaming job end to end: Kafka topics -> Spark -> DLQ, lake and serving tables.

Valid and malformed events go to this test's own topics; the job runs with availableNow into this
test's own schema; the serving rows are compared with an independent pandas computation; then a
restart replays the last batch from the checkpoint and nothing is counted twice.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer

from cityos import events
from cityos.db import connect
from cityos.streaming.jobs.aggregate import query_name, run_pipeline
from tests.integration.pipeline_tools import expected_traffic, minute_reading, own_settings
from tests.jobs.conftest import nlq_fixture, prsa_december, prsa_event, spark  # noqa: F401 - shared fixtures

pytestmark = pytest.mark.integration

T0 = datetime(2016, 12, 19, 7, 0, tzinfo=UTC)
SPEED_LIMITS = {"cologne-tr-06": 50.0, "cologne-tr-07": None}  # None -> the default 50 km/h
STATIONS = {"Dongsi": "beijing-110101", "Guanyuan": "beijing-110102"}
SQUARE = '{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}'


def register(database_url: str, schema: str) -> None:
    with connect(database_url, schema) as conn:
        conn.execute(
            "INSERT INTO cities VALUES ('cologne','Cologne','Köln','Europe/Berlin',"
            "'eu_eaqi'), ('beijing','Beijing','北京','Asia/Shanghai','china_hj633')"
        )
        zones = [("cologne-stb-5", "cologne"), *((z, "beijing") for z in STATIONS.values())]
        for zone, city in zones:
            conn.execute(
                "INSERT INTO zones (zone_id, city_id, name, level, geometry, area_km2)"
                " VALUES (%s, %s, %s, 'district', %s, 1.0)",
                (zone, city, zone, SQUARE),
            )
        for sensor, limit in SPEED_LIMITS.items():
            conn.execute(
                "INSERT INTO sensors (sensor_id, city_id, kind, name, zone_id, latitude,"
                " longitude) VALUES (%s, 'cologne', 'traffic', %s,"
                " 'cologne-stb-5', 50.96, 6.95)",
                (sensor, sensor),
            )
            if limit is not None:
                conn.execute("INSERT INTO sensor_speed_limits VALUES (%s, %s)", (sensor, limit))
        for station, zone in STATIONS.items():
            conn.execute(
                "INSERT INTO sensors (sensor_id, city_id, kind, name, zone_id, latitude,"
                " longitude) VALUES (%s, 'beijing', 'air_quality', %s, %s, 39.9, 116.4)",
                (f"beijing-aq-{station.lower()}", station, zone),
            )


def traffic_events() -> list[dict]:
    """Minute readings over 20 minutes, two approaches; includes windows with no vehicle."""
    out = []
    for sensor, base in (("cologne-tr-06", 9), ("cologne-tr-07", 0)):
        for i in range(20):
            n = (base + 3 * i) % 11 if sensor == "cologne-tr-06" else (0 if i < 5 else i % 4)
            out.append(minute_reading(sensor, T0 + timedelta(minutes=i), n))
    return out


def air_events() -> list[dict]:
    """Real PRSA hours of 2016-12-19 (Beijing time) at two stations."""
    return [
        prsa_event(f"beijing-aq-{station.lower()}", r)
        for station in STATIONS
        for _, r in prsa_december(station, 19, 19).iterrows()
    ]


MALFORMED = [  # (key, value) of events that must end in the DLQ
    (b"cologne-tr-06", b"\x00\x01 not json"),
    (b"cologne-tr-06", b'{"type": "TrafficFlowObserved", "schemaVersion": 1}'),
    (
        b"cologne-tr-99",
        events.encode(
            events.traffic_flow(
                "cologne-tr-99",
                T0,
                T0 + timedelta(minutes=1),
                intensity=1,
                occupancy=0.1,
                average_speed_kmh=30.0,
            )
        ),
    ),
    (
        b"cologne-tr-07",
        b'{"id":"x","type":"TrafficFlowObserved","schemaVersion":1,'
        b'"refDevice":"cologne-tr-07","dateObservedFrom":"2016-12-19T07:00:00Z",'
        b'"dateObservedTo":"2016-12-19T07:01:00Z","intensity":-3,"occupancy":0.1}',
    ),
]
AIR_MALFORMED = [
    (
        b"beijing-aq-dongsi",
        b'{"id":"y","type":"AirQualityObserved","schemaVersion":1,'
        b'"refDevice":"beijing-aq-dongsi","dateObserved":"2016-12-19T03:00:00Z","pm25":NaN}',
    ),
]


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def consume_all(bootstrap: str, topic: str, expect: int, settle_s: float = 3.0) -> list:
    """Every record of ``topic``: polls until ``expect`` arrived (or 60 s passed), then for
    ``settle_s`` more, so a duplicate would still show; slow metadata on a busy machine is waited
    out rather than read as an empty topic."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    messages: list = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                messages.extend(batch)
            if len(messages) >= expect:
                deadline = min(deadline, time.monotonic() + settle_s)
    finally:
        consumer.close()
    return messages


def serving(database_url: str, schema: str, table: str) -> pd.DataFrame:
    with connect(database_url, schema) as conn:
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY sensor_id, window_start")  # noqa: S608
        assert cur.description is not None
        cols = [d.name for d in cur.description]
        df = pd.DataFrame(cur.fetchall(), columns=cols)
    df["window_start"] = pd.to_datetime(df.window_start, utc=True)
    return df.set_index(["sensor_id", "window_start"])


@pytest.fixture
def job_settings(settings, pg_schema, tmp_path):
    return own_settings(
        settings,
        pg_schema,
        tmp_path,
        traffic_watermark="30 minutes",
        air_watermark="3 days",
        max_offsets_per_trigger=40,  # several batches, so windows span batches
    )


def test_pipeline_end_to_end(
    job_settings,
    topics,
    kafka_bootstrap,
    database_url,
    pg_schema,
    nlq_fixture,  # noqa: F811
    spark,  # noqa: F811
):
    register(database_url, pg_schema)
    traffic, air = traffic_events(), air_events()
    produce(
        kafka_bootstrap,
        topics.traffic,
        [(events.key_of(e), events.encode(e)) for e in traffic] + MALFORMED,
    )
    produce(
        kafka_bootstrap,
        topics.environment,
        [(events.key_of(e), events.encode(e)) for e in air] + AIR_MALFORMED,
    )

    jobs = run_pipeline(job_settings, until="available", spark=spark)
    assert all(job.merged_batches > 1 for job in jobs)

    # every event is either valid (merged) or a dead letter, none lost
    valid = {job.topic: job.merged_rows for job in jobs}
    dlq_traffic = consume_all(kafka_bootstrap, topics.dlq(topics.traffic), len(MALFORMED))
    dlq_env = consume_all(kafka_bootstrap, topics.dlq(topics.environment), len(AIR_MALFORMED))
    assert valid[topics.traffic] == len(traffic) and len(dlq_traffic) == len(MALFORMED)
    assert valid[topics.environment] == len(air) and len(dlq_env) == len(AIR_MALFORMED)
    assert len(traffic) + len(MALFORMED) == valid[topics.traffic] + len(dlq_traffic)
    reasons = sorted(dict(m.headers)["reason"].decode() for m in dlq_traffic)
    assert reasons == ["missing_field", "negative", "not_json", "unknown_sensor"]
    assert {m.value for m in dlq_traffic} == {v for _, v in MALFORMED}  # original bytes
    assert {dict(m.headers)["source.topic"].decode() for m in dlq_env} == {topics.environment}
    assert dict(dlq_env[0].headers)["reason"] == b"non_finite"

    # traffic_5m against pandas
    want = expected_traffic(traffic, {s: v for s, v in SPEED_LIMITS.items() if v is not None})
    got = serving(database_url, pg_schema, "traffic_5m")
    assert sorted(got.index) == sorted(want.index)
    got = got.loc[want.index]
    assert (got.vehicle_count == want.vehicle_count).all()
    assert (got.zone_id == "cologne-stb-5").all()
    for col in ("avg_speed_kmh", "occupancy", "congestion_index"):
        pd.testing.assert_series_equal(
            got[col].astype(float), want[col].astype(float), check_names=False, rtol=1e-9
        )
    assert got.avg_speed_kmh.isna().any()  # a window where no vehicle passed

    # air_quality_1h: one reading per hour, so the means are the readings; AQI as the fixture
    aq = serving(database_url, pg_schema, "air_quality_1h")
    assert len(aq) == len(air)
    for e in air:
        row = aq.loc[(e["refDevice"], pd.Timestamp(e["dateObserved"]))]
        pol = {p: e[p] for p in ("pm25", "pm10", "no2", "o3", "so2", "co")}
        assert (row.aqi if not pd.isna(row.aqi) else None, row.aqi_category) == nlq_fixture.aqi_of(
            pol
        )
        for p, v in pol.items():
            assert (v is None and pd.isna(row[p])) or math.isclose(row[p], v)
    assert set(aq.zone_id) == set(STATIONS.values())

    # the lake holds exactly the valid events, by event date and batch
    lake = pd.read_parquet(job_settings.lake_dir / topics.traffic)
    assert len(lake) == len(traffic) and set(lake.date.astype(str)) == {"2016-12-19"}
    staging = job_settings.lake_dir / topics.traffic / "_staging"
    assert staging.is_dir() and not any(staging.iterdir())  # each batch's staging is cleared

    # restart: forget that the last traffic batch finished; Spark replays it from the checkpoint
    traffic_job = next(j for j in jobs if j.topic == topics.traffic)
    last = traffic_job.last_batch_id
    assert last is not None
    commits = job_settings.state_dir / "checkpoints" / query_name(topics.traffic) / "commits"
    (commits / str(last)).unlink()
    (commits / f".{last}.crc").unlink(missing_ok=True)  # Hadoop's checksum file
    before = serving(database_url, pg_schema, "traffic_5m")
    again = run_pipeline(job_settings, until="available", spark=spark)
    assert all(job.merged_batches == 0 for job in again)  # the replayed batch: recognised, skipped
    pd.testing.assert_frame_equal(serving(database_url, pg_schema, "traffic_5m"), before)
    dlq_again = consume_all(kafka_bootstrap, topics.dlq(topics.traffic), len(MALFORMED))
    assert len(dlq_again) == len(MALFORMED)

    # late data: two hours behind the watermark goes to the DLQ with reason 'late'
    old = events.traffic_flow(
        "cologne-tr-06",
        T0 - timedelta(hours=2),
        T0 - timedelta(hours=2) + timedelta(minutes=1),
        intensity=5,
        occupancy=0.1,
        average_speed_kmh=30.0,
    )
    produce(kafka_bootstrap, topics.traffic, [(events.key_of(old), events.encode(old))])
    run_pipeline(job_settings, until="available", spark=spark)
    dlq = consume_all(kafka_bootstrap, topics.dlq(topics.traffic), len(MALFORMED) + 1)
    assert sorted(dict(m.headers)["reason"].decode() for m in dlq).count("late") == 1
    pd.testing.assert_frame_equal(serving(database_url, pg_schema, "traffic_5m"), before)
