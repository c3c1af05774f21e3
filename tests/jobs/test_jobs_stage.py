"""A judged batch is written once: its valid rows become the lake, its dead letters keep their
bytes for the DLQ, and its summary read back from the files equals the one of the rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pyspark.sql import functions as F

from cityos import events
from cityos.streaming.jobs.sinks import stage_batch, staging_folder, write_lake
from tests.jobs.kafka_rows import record
from tests.jobs.test_jobs_windows import judged_rows, summary_of

MIDNIGHT = datetime(2016, 12, 19, tzinfo=UTC)
SENSORS = ["cologne-tr-06", "cologne-tr-07"]


def batch_events() -> tuple[list, list[bytes | None]]:
    minute = timedelta(minutes=1)
    readings = [  # across a UTC midnight: two lake dates
        events.traffic_flow(
            sensor,
            MIDNIGHT + i * minute,
            MIDNIGHT + (i + 1) * minute,
            intensity=n,
            occupancy=0.1,
            average_speed_kmh=30.0,
        )
        for sensor, i, n in [
            ("cologne-tr-06", -2, 4),
            ("cologne-tr-06", 0, 6),
            ("cologne-tr-07", 3, 9),
        ]
    ]
    stranger = events.traffic_flow(
        "cologne-tr-99",
        MIDNIGHT,
        MIDNIGHT + minute,
        intensity=1,
        occupancy=0.1,
        average_speed_kmh=30.0,
    )
    return [*readings, stranger, b"\x00garbage", b"{}"], [
        record(stranger)[1],
        b"\x00garbage",
        b"{}",
    ]


def fields(summary):  # noqa: ANN001, ANN201
    partials = {t: sorted(rows) for t, rows in summary.partials.items()}
    return summary.by_reason, summary.sensors, summary.dates, partials


def test_a_staged_batch_becomes_lake_and_dead_letters(spark, tmp_path):
    evts, dead_bytes = batch_events()
    judged = judged_rows(spark, evts, "traffic", SENSORS)
    lake = tmp_path / "lake" / "traffic"
    folder = staging_folder(lake, 3)

    staged = stage_batch(judged, folder)
    summary, expected = summary_of(staged, "traffic"), summary_of(judged, "traffic")
    assert fields(summary) == fields(expected)  # the files hold what the rows held
    assert summary.dates == {"2016-12-18", "2016-12-19"}

    write_lake(folder, lake, 3, summary.dates)
    assert sorted(p.relative_to(lake).as_posix() for p in lake.glob("date=*/batch=*")) == [
        "date=2016-12-18/batch=3",
        "date=2016-12-19/batch=3",
    ]
    rows = spark.read.parquet(str(lake)).collect()
    assert sorted(r.offset for r in rows) == [0, 1, 2]  # the valid events, once each
    assert {(r.key, r.value) for r in rows} == {(None, None)}  # bytes are kept for DLQ only
    assert {str(r.date) for r in rows} == summary.dates
    assert all(r.kafka_timestamp is not None and r.sensor_id in SENSORS for r in rows)

    # the DLQ reads the same staged frame after the valid folders moved into the lake
    dead = staged.where(F.col("reason").isNotNull()).select("offset", "reason", "value").collect()
    assert sorted((r.offset, r.reason, bytes(r.value)) for r in dead) == [
        (3, "unknown_sensor", dead_bytes[0]),
        (4, "not_json", dead_bytes[1]),
        (5, "unknown_type", dead_bytes[2]),
    ]


def test_a_replayed_batch_replaces_its_lake_folders(spark, tmp_path):
    evts, _ = batch_events()
    lake = tmp_path / "lake" / "traffic"
    folder = staging_folder(lake, 0)
    for _ in range(2):  # the batch, then its replay after a crash before the commit
        judged = judged_rows(spark, evts, "traffic", SENSORS)
        summary = summary_of(stage_batch(judged, folder), "traffic")
        write_lake(folder, lake, 0, summary.dates)
    assert spark.read.parquet(str(lake)).count() == 3


def test_an_empty_batch_stages_nothing(spark, tmp_path):
    judged = judged_rows(spark, [], "traffic", SENSORS)
    folder = staging_folder(tmp_path / "lake" / "traffic", 7)
    summary = summary_of(stage_batch(judged, folder), "traffic")
    assert (summary.valid, summary.dead, summary.dates) == (0, 0, set())
