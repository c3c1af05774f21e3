"""Event-time windows reduce a batch to additive partial sums per sensor and window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cityos import events
from cityos.streaming.jobs.sinks import partial_rows
from cityos.streaming.jobs.spec import TOPIC_SPECS
from cityos.streaming.jobs.validate import Limits, classify, parse
from cityos.streaming.jobs.windows import (
    AIR_PARTIALS,
    TRAFFIC_PARTIALS,
    BatchSummary,
    air_partials,
    batch_summary,
    traffic_partials,
)
from tests.jobs.conftest import prsa_december, val
from tests.jobs.kafka_rows import NOW, kafka_frame, record

T0 = datetime(2016, 12, 19, 7, 0, tzinfo=UTC)
LIMITS = Limits(1 << 16, datetime(2000, 1, 1, tzinfo=UTC), NOW, timedelta(hours=1))


def judged_rows(spark, evts, topic, sensors):
    spec = TOPIC_SPECS[topic]
    registry = spark.createDataFrame([(s,) for s in sensors], "sensor_id string")
    frame = kafka_frame(spark, [record(e) for e in evts], topic)
    return classify(parse(frame, spec, LIMITS.max_event_bytes), spec, registry, LIMITS)


def valid_rows(spark, evts, topic, sensors):
    judged = judged_rows(spark, evts, topic, sensors)
    assert judged.where("reason IS NOT NULL").count() == 0
    return judged


def test_traffic_partials_per_five_minute_window(spark):
    minute = timedelta(minutes=1)
    readings = [  # two lanes of one approach, one-minute readings across two windows
        events.traffic_flow(
            "cologne-tr-06",
            T0 + i * minute,
            T0 + (i + 1) * minute,
            intensity=n,
            occupancy=occ,
            average_speed_kmh=v,
            lane_id=lane,
        )
        for i, n, occ, v, lane in [
            (0, 6, 0.10, 30.0, 0),
            (0, 2, 0.04, 42.0, 1),
            (4, 0, 0.00, None, 0),
            (5, 3, 0.08, 20.0, 0),
        ]
    ]
    rows = {
        r.window_start.hour * 60 + r.window_start.minute: r
        for r in traffic_partials(
            valid_rows(spark, readings, "traffic", ["cologne-tr-06"])
        ).collect()
    }
    first, second = rows[7 * 60], rows[7 * 60 + 5]
    assert (first.vehicles, first.speed_vehicles, first.readings) == (8, 8, 3)
    assert first.speed_x_vehicles == pytest.approx(6 * 30.0 + 2 * 42.0)
    assert (first.occupancy_sum, first.occupancy_n) == (pytest.approx(0.14), 3)
    assert (second.vehicles, second.speed_x_vehicles, second.readings) == (3, 60.0, 1)
    assert second.window_end - second.window_start == timedelta(minutes=5)


def test_air_partials_per_hour_leave_noise_out(spark):
    rows = prsa_december("Dongsi", 19, 19).head(2)  # 00:00 and 01:00 Beijing = two UTC hours
    evts = [
        events.air_quality(
            "beijing-aq-dongsi",
            r.observed,
            pm25=val(r["PM2.5"]),
            co=val(r["CO"]),
            temperature=val(r["TEMP"]),
        )
        for _, r in rows.iterrows()
    ]
    half = rows.iloc[0].observed + timedelta(minutes=30)
    evts.append(events.air_quality("beijing-aq-dongsi", half, pm25=100.0))
    evts.append(
        events.noise_level("beijing-aq-dongsi", half, half + timedelta(minutes=5), laeq=55.0)
    )
    got = air_partials(valid_rows(spark, evts, "environment", ["beijing-aq-dongsi"]))
    by_start = {r.window_start: r for r in got.collect()}
    assert len(by_start) == 2
    first = by_start[min(by_start)]
    assert first.pm25_sum == pytest.approx(rows.iloc[0]["PM2.5"] + 100.0)
    assert (first.pm25_n, first.co_n, first.no2_n, first.readings) == (2, 1, 0, 2)


def summary_of(judged, topic):
    return BatchSummary.of(batch_summary(judged, TOPIC_SPECS[topic].event_types).collect())


def test_batch_summary_gives_the_partials_counts_and_dates_in_one_job(spark):
    minute = timedelta(minutes=1)
    midnight = datetime(2016, 12, 19, tzinfo=UTC)
    readings = [  # two sensors, across a UTC midnight (two lake dates), speed-only and counted
        events.traffic_flow(
            sensor,
            midnight + i * minute,
            midnight + (i + 1) * minute,
            intensity=n,
            occupancy=0.1,
            average_speed_kmh=v,
        )
        for sensor, i, n, v in [
            ("cologne-tr-06", -2, 4, 31.0),
            ("cologne-tr-06", -1, None, 25.0),
            ("cologne-tr-06", 0, 6, 40.0),
            ("cologne-tr-06", 7, 2, None),
            ("cologne-tr-07", 3, 9, 50.0),
        ]
    ]
    stranger = events.traffic_flow(
        "cologne-tr-99",
        midnight,
        midnight + minute,
        intensity=1,
        occupancy=0.1,
        average_speed_kmh=30.0,
    )
    judged = judged_rows(
        spark,
        [*readings, stranger, b"\x00garbage", b"{}"],
        "traffic",
        ["cologne-tr-06", "cologne-tr-07"],
    )
    summary = summary_of(judged, "traffic")

    valid = judged.where("reason IS NULL")
    assert sorted(summary.partials[events.TRAFFIC]) == sorted(
        partial_rows(traffic_partials(valid), TRAFFIC_PARTIALS)
    )
    assert len(summary.partials[events.TRAFFIC]) == 4  # 23:55, 00:00, 00:05 and tr-07's 00:00
    assert events.AIR not in summary.partials
    assert summary.by_reason == {"unknown_sensor": 1, "not_json": 1, "unknown_type": 1}
    assert (summary.valid, summary.dead) == (5, 3)
    assert summary.sensors == {
        "cologne-tr-06": (4, midnight + 7 * minute),  # the event time is the period's start
        "cologne-tr-07": (1, midnight + 3 * minute),
    }
    assert summary.latest == midnight + 7 * minute
    assert summary.dates == {"2016-12-18", "2016-12-19"}


def test_batch_summary_of_air_and_noise(spark):
    rows = prsa_december("Dongsi", 19, 19).head(3)
    evts = [
        events.air_quality("beijing-aq-dongsi", r.observed, pm25=val(r["PM2.5"]), no2=val(r["NO2"]))
        for _, r in rows.iterrows()
    ]
    noise_at = rows.iloc[2].observed + timedelta(minutes=10)
    evts.append(
        events.noise_level(
            "beijing-aq-dongsi", noise_at, noise_at + timedelta(minutes=5), laeq=55.0
        )
    )
    judged = judged_rows(spark, evts, "environment", ["beijing-aq-dongsi"])
    summary = summary_of(judged, "environment")

    valid = judged.where("reason IS NULL")
    assert sorted(summary.partials[events.AIR]) == sorted(
        partial_rows(air_partials(valid), AIR_PARTIALS)
    )
    assert len(summary.partials[events.AIR]) == 3
    n, latest = summary.sensors["beijing-aq-dongsi"]
    assert n == 4  # the noise reading counts for the sensor's progress, not in the air sums
    assert latest == noise_at
    assert summary.by_reason == {}
