"""What ``stream_commits`` records about each batch's timing and lag, from a real streaming run;
and that a batch whose lake write fails is not recorded, so a restart replays it once.

Real traffic readings go to this test's own topic; the job runs with availableNow and a small
``maxOffsetsPerTrigger``, so the topic is read in several batches and each batch but the last
leaves messages behind. The recorded lag must be exactly what was left: every message of the
topic minus those the batches so far have read. Each row's duration is Spark's, which covers
the row's own foreachBatch span (batch_started_at -> committed_at).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from cityos import events
from cityos.db import connect
from cityos.streaming.jobs import aggregate
from cityos.streaming.jobs.aggregate import query_name, run_pipeline
from cityos.streaming.jobs.errors import StreamingJobError
from cityos.topics import checkpoint_batch_time
from tests.integration.pipeline_tools import minute_reading, own_settings
from tests.integration.test_pipeline import produce
from tests.jobs.conftest import spark  # noqa: F401 - the shared session
from tests.sql import scalar

pytestmark = pytest.mark.integration

T0 = datetime(2016, 12, 19, 7, 0, tzinfo=UTC)
SENSOR = "cologne-tr-06"
PER_BATCH = 25
SQUARE = '{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}'
CLOCKS = timedelta(milliseconds=100)  # PostgreSQL's now() and Python's clock, same host


def register(database_url: str, schema: str) -> None:
    with connect(database_url, schema) as conn:
        conn.execute(
            "INSERT INTO cities VALUES ('cologne','Cologne','Köln','Europe/Berlin','eu_eaqi')"
        )
        conn.execute(
            "INSERT INTO zones (zone_id, city_id, name, level, geometry, area_km2)"
            " VALUES ('cologne-stb-5', 'cologne', 'stb-5', 'district', %s, 1.0)",
            (SQUARE,),
        )
        conn.execute(
            "INSERT INTO sensors (sensor_id, city_id, kind, name, zone_id, latitude,"
            " longitude) VALUES (%s, 'cologne', 'traffic', %s, 'cologne-stb-5',"
            " 50.96, 6.95)",
            (SENSOR, SENSOR),
        )


def readings(n: int) -> list[dict]:
    """Minute readings of one detector over ``n`` minutes."""
    return [minute_reading(SENSOR, T0 + timedelta(minutes=i), (9 + 3 * i) % 11) for i in range(n)]


def commits(database_url: str, schema: str, name: str) -> list[tuple]:
    with connect(database_url, schema) as conn:
        return conn.execute(
            "SELECT batch_id, valid_rows + dead_letters, batch_started_at, committed_at,"
            "       batch_duration_ms, offsets_behind"
            " FROM stream_commits WHERE query_name = %s ORDER BY batch_id",
            (name,),
        ).fetchall()


@pytest.fixture
def job_settings(settings, pg_schema, tmp_path):
    return own_settings(
        settings,
        pg_schema,
        tmp_path,
        traffic_watermark="30 minutes",
        max_offsets_per_trigger=PER_BATCH,
        score_windows=False,
    )


def test_each_batch_records_its_duration_and_the_offsets_it_left(
    job_settings,
    topics,
    kafka_bootstrap,
    database_url,
    pg_schema,
    spark,  # noqa: F811
) -> None:
    register(database_url, pg_schema)
    records = [(events.key_of(e), events.encode(e)) for e in readings(70)]
    records += [(SENSOR.encode(), b"\x00 not json"), (SENSOR.encode(), b"{}")]
    produce(kafka_bootstrap, topics.traffic, records)

    began = datetime.now(UTC)
    run_pipeline(job_settings, until="available", spark=spark)
    ended = datetime.now(UTC)

    rows = commits(database_url, pg_schema, query_name(topics.traffic))
    assert len(rows) >= 3, rows  # 72 messages, at most 25 a batch
    assert sum(r[1] for r in rows) == len(records)
    read = 0
    for batch_id, n, started, committed, duration_ms, behind in rows:
        read += n
        assert behind == len(records) - read, (batch_id, behind)  # exactly what was left
        assert began <= started <= committed <= ended, (batch_id, started, committed)
        assert duration_ms is not None, batch_id
        span = committed - started  # inside the batch that Spark timed
        assert timedelta(milliseconds=duration_ms) >= span - CLOCKS, (batch_id, duration_ms)
        assert timedelta(milliseconds=duration_ms) <= ended - began, (batch_id, duration_ms)
    assert rows[-1][5] == 0 and rows[0][5] > 0

    # a replay (the last batch's commit forgotten) re-reads a merged batch: its row keeps the
    # report of the run that merged it
    checkpoint = job_settings.state_dir / "checkpoints" / query_name(topics.traffic) / "commits"
    last = rows[-1][0]
    (checkpoint / str(last)).unlink()
    (checkpoint / f".{last}.crc").unlink(missing_ok=True)
    run_pipeline(job_settings, until="available", spark=spark)
    assert commits(database_url, pg_schema, query_name(topics.traffic)) == rows


def test_a_failed_lake_write_fails_its_batch_and_the_restart_merges_it_once(
    job_settings,
    topics,
    kafka_bootstrap,
    database_url,
    pg_schema,
    spark,  # noqa: F811
    monkeypatch,
) -> None:
    """A lake write that fails must stop the batch before the PostgreSQL commit, or the replay
    would skip a batch the lake never got."""
    register(database_url, pg_schema)
    traffic = readings(20)
    records = [(events.key_of(e), events.encode(e)) for e in traffic]
    records.append((SENSOR.encode(), b"{}"))  # and a dead letter
    produce(kafka_bootstrap, topics.traffic, records)
    settings = job_settings.model_copy(update={"max_offsets_per_trigger": None})  # one batch

    def failing_write(*_args: object) -> None:
        raise OSError("lake volume full")

    monkeypatch.setattr(aggregate, "write_lake", failing_write)
    with pytest.raises(StreamingJobError, match="lake volume full"):
        run_pipeline(settings, until="available", spark=spark)
    name = query_name(topics.traffic)
    assert commits(database_url, pg_schema, name) == []
    with connect(database_url, pg_schema) as conn:
        assert scalar(conn, "SELECT count(*) FROM traffic_5m") == 0

    monkeypatch.undo()  # the real lake write
    run_pipeline(settings, until="available", spark=spark)
    rows = commits(database_url, pg_schema, name)
    assert [(r[0], r[1]) for r in rows] == [(0, len(records))]  # the same batch, merged once
    with connect(database_url, pg_schema) as conn:
        vehicles = scalar(conn, "SELECT sum(vehicle_count) FROM traffic_5m")
    assert vehicles == sum(e["intensity"] for e in traffic)
    lake = pd.read_parquet(settings.lake_dir / topics.traffic)
    assert len(lake) == len(traffic)
    # the empty environment topic's first batch is committed without staging anything
    empty = commits(database_url, pg_schema, query_name(topics.environment))
    assert [(r[0], r[1]) for r in empty] == [(0, 0)]
    assert not (settings.lake_dir / topics.environment).exists()


def test_an_event_stamped_ahead_of_the_clock_does_not_make_the_next_readings_late(
    job_settings,
    topics,
    kafka_bootstrap,
    database_url,
    pg_schema,
    spark,  # noqa: F811
) -> None:
    """A reading 50 minutes in the future (inside max_future_skew_s: a detector whose clock is
    off, local time sent as UTC) is merged, but the sensor's watermark stops at the clock: its
    next real readings, 10 minutes old, are merged, not dead-lettered as late."""
    register(database_url, pg_schema)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    ahead = minute_reading(SENSOR, now + timedelta(minutes=50), 7)
    first = [minute_reading(SENSOR, now - timedelta(minutes=40), 3), ahead]
    produce(kafka_bootstrap, topics.traffic, [(events.key_of(e), events.encode(e)) for e in first])
    run_pipeline(job_settings, until="available", spark=spark)
    with connect(database_url, pg_schema) as conn:
        progress = scalar(conn, "SELECT max_event_time FROM sensor_watermarks")
    assert progress <= datetime.now(UTC)  # not the future reading's time

    later = [minute_reading(SENSOR, now - timedelta(minutes=m), 5) for m in (10, 9, 8)]
    produce(kafka_bootstrap, topics.traffic, [(events.key_of(e), events.encode(e)) for e in later])
    run_pipeline(job_settings, until="available", spark=spark)
    with connect(database_url, pg_schema) as conn:
        dead = scalar(conn, "SELECT sum(dead_letters) FROM stream_commits")
        vehicles = scalar(conn, "SELECT sum(vehicle_count) FROM traffic_5m")
    assert dead == 0
    assert vehicles == sum(e["intensity"] for e in first + later)


def test_a_replayed_batch_judges_its_events_as_the_first_run_did(
    job_settings,
    topics,
    kafka_bootstrap,
    database_url,
    pg_schema,
    spark,  # noqa: F811
    monkeypatch,
) -> None:
    """A reading 30 s ahead is dead-lettered as `future` (2 s allowed); the batch then fails
    before its commit and is replayed after the reading's time has passed. Judged against the
    clock it would now be merged too (and so be both in the DLQ and in the tables); judged
    against the batch's own time from the offset log, it is dead-lettered again, only."""
    register(database_url, pg_schema)
    settings = job_settings.model_copy(update={"max_future_skew_s": 2})
    now = datetime.now(UTC)
    normal = minute_reading(SENSOR, now - timedelta(minutes=3), 4)
    ahead = minute_reading(SENSOR, now + timedelta(seconds=30), 9)  # event time: its start
    records = [(events.key_of(e), events.encode(e)) for e in (normal, ahead)]
    produce(kafka_bootstrap, topics.traffic, records)

    def lost_connection(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("server closed the connection unexpectedly")

    monkeypatch.setattr(aggregate, "merge_batch", lost_connection)
    with pytest.raises(StreamingJobError, match="server closed the connection"):
        run_pipeline(settings, until="available", spark=spark)
    monkeypatch.undo()
    offsets = settings.state_dir / "checkpoints" / query_name(topics.traffic) / "offsets" / "0"
    planned = checkpoint_batch_time(offsets)
    assert planned is not None and planned < now + timedelta(seconds=28), planned
    time.sleep(max(0.0, (now + timedelta(seconds=33) - datetime.now(UTC)).total_seconds()))

    run_pipeline(settings, until="available", spark=spark)
    rows = commits(database_url, pg_schema, query_name(topics.traffic))
    with connect(database_url, pg_schema) as conn:
        dead = scalar(
            conn,
            "SELECT dead_letters FROM stream_commits WHERE query_name = %s AND batch_id = 0",
            (query_name(topics.traffic),),
        )
        vehicles = scalar(conn, "SELECT sum(vehicle_count) FROM traffic_5m")
    assert [(r[0], r[1]) for r in rows] == [(0, 2)]
    assert (dead, vehicles) == (1, normal["intensity"])
