"""Event-time windows reduce a batch to additive partial sums per sensor and window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cityos import events
from cityos.streaming.jobs.spec import TOPIC_SPECS
from cityos.streaming.jobs.validate import Limits, classify, parse
from cityos.streaming.jobs.windows import air_partials, traffic_partials
from tests.jobs.conftest import prsa_december, val
from tests.jobs.kafka_rows import NOW, kafka_frame, record

T0 = datetime(2016, 12, 19, 7, 0, tzinfo=UTC)
LIMITS = Limits(1 << 16, datetime(2000, 1, 1, tzinfo=UTC), NOW, timedelta(hours=1))


def valid_rows(spark, evts, topic, sensors):
    spec = TOPIC_SPECS[topic]
    registry = spark.createDataFrame([(s,) for s in sensors], "sensor_id string")
    frame = kafka_frame(spark, [record(e) for e in evts], topic)
    judged = classify(parse(frame, spec, LIMITS.max_event_bytes), spec, registry, LIMITS)
    assert judged.where("reason IS NOT NULL").count() == 0
    return judged


def test_traffic_partials_per_five_minute_window(spark):
    minute = timedelta(minutes=1)
    readings = [  # two lanes of one approach, one-minute readings across two windows
        events.traffic_flow("cologne-tr-06", T0 + i * minute, T0 + (i + 1) * minute,
                            intensity=n, occupancy=occ, average_speed_kmh=v, lane_id=lane)
        for i, n, occ, v, lane in [
            (0, 6, 0.10, 30.0, 0), (0, 2, 0.04, 42.0, 1), (4, 0, 0.00, None, 0),
            (5, 3, 0.08, 20.0, 0),
        ]
    ]
    rows = {r.window_start.hour * 60 + r.window_start.minute: r for r in
            traffic_partials(valid_rows(spark, readings, "traffic", ["cologne-tr-06"])).collect()}
    first, second = rows[7 * 60], rows[7 * 60 + 5]
    assert (first.vehicles, first.speed_vehicles, first.readings) == (8, 8, 3)
    assert first.speed_x_vehicles == pytest.approx(6 * 30.0 + 2 * 42.0)
    assert (first.occupancy_sum, first.occupancy_n) == (pytest.approx(0.14), 3)
    assert (second.vehicles, second.speed_x_vehicles, second.readings) == (3, 60.0, 1)
    assert second.window_end - second.window_start == timedelta(minutes=5)


def test_air_partials_per_hour_leave_noise_out(spark):
    rows = prsa_december("Dongsi", 19, 19).head(2)  # 00:00 and 01:00 Beijing = two UTC hours
    evts = [events.air_quality("beijing-aq-dongsi", r.observed, pm25=val(r["PM2.5"]),
                               co=val(r["CO"]), temperature=val(r["TEMP"]))
            for _, r in rows.iterrows()]
    half = rows.iloc[0].observed + timedelta(minutes=30)
    evts.append(events.air_quality("beijing-aq-dongsi", half, pm25=100.0))
    evts.append(events.noise_level("beijing-aq-dongsi", half, half + timedelta(minutes=5),
                                   laeq=55.0))
    got = air_partials(valid_rows(spark, evts, "environment", ["beijing-aq-dongsi"]))
    by_start = {r.window_start: r for r in got.collect()}
    assert len(by_start) == 2
    first = by_start[min(by_start)]
    assert first.pm25_sum == pytest.approx(rows.iloc[0]["PM2.5"] + 100.0)
    assert (first.pm25_n, first.co_n, first.no2_n, first.readings) == (2, 1, 0, 2)
