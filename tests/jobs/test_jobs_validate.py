"""Validation rules: every kind of bad event gets its own reason; good events pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cityos import events
from cityos.streaming.jobs.spec import TOPIC_SPECS
from cityos.streaming.jobs.validate import Limits, classify, parse
from tests.jobs.conftest import prsa_december, prsa_event
from tests.jobs.kafka_rows import NOW, kafka_frame, record

T0 = datetime(2016, 12, 19, 7, 0, tzinfo=UTC)
LIMITS = Limits(
    max_event_bytes=1024,
    earliest=datetime(2000, 1, 1, tzinfo=UTC),
    now=NOW,
    max_future_skew=timedelta(hours=1),
)
WATERMARKS = {"cologne-tr-06": datetime(2016, 12, 19, 6, 0, tzinfo=UTC)}  # per sensor
SENSORS = ["cologne-tr-06", "cologne-tr-07", "beijing-aq-dongsi"]


def traffic() -> dict:
    """A cologne8-like 5-minute loop reading (values of the NLQ fixture's Monday peak)."""
    return events.traffic_flow(
        "cologne-tr-06",
        T0,
        T0 + timedelta(minutes=5),
        intensity=31,
        occupancy=0.1142,
        average_speed_kmh=27.4,
    )


def air() -> dict:
    """The real Dongsi reading of 2016-12-19 08:00 Beijing time."""
    rows = prsa_december("Dongsi", 19, 19)
    r = rows[rows.hour == 8].iloc[0]
    return prsa_event("beijing-aq-dongsi", r)


def with_(event: dict, **changes) -> dict:
    return {**event, **changes}


def without(event: dict, name: str) -> dict:
    return {k: v for k, v in event.items() if k != name}


TRAFFIC_CASES = [
    ("valid", record(traffic()), None),
    (
        "oversize",
        record(
            events.encode(traffic())[:-1] + b', "pad": "' + b"x" * 2000 + b'"}', "cologne-tr-06"
        ),
        "oversize",
    ),
    ("garbage bytes", record(b"\xff\xfe\x00garbage", "cologne-tr-06"), "not_json"),
    ("truncated json", record(events.encode(traffic())[:40], "cologne-tr-06"), "not_json"),
    ("json array", record(b"[1, 2, 3]", "cologne-tr-06"), "not_json"),
    ("tombstone", (b"cologne-tr-06", None), "not_json"),
    ("unknown type", record(with_(traffic(), type="ParkingSpot")), "unknown_type"),
    ("air event on traffic", record(air()), "unknown_type"),
    ("schema v2", record(with_(traffic(), schemaVersion=2)), "unknown_schema_version"),
    ("no dateObservedFrom", record(without(traffic(), "dateObservedFrom")), "missing_field"),
    ("no refDevice", record(without(traffic(), "refDevice"), "cologne-tr-06"), "missing_field"),
    ("intensity as text", record(with_(traffic(), intensity="many")), "wrong_type"),
    ("fractional intensity", record(with_(traffic(), intensity=3.5)), "wrong_type"),
    (
        "time without offset",
        record(with_(traffic(), dateObservedFrom="2016-12-19T07:00:00")),
        "wrong_type",
    ),
    ("NaN speed", record(with_(traffic(), averageVehicleSpeed=float("nan"))), "non_finite"),
    ("infinite occupancy", record(with_(traffic(), occupancy=float("inf"))), "non_finite"),
    ("negative count", record(with_(traffic(), intensity=-4)), "negative"),
    ("occupancy above 1", record(with_(traffic(), occupancy=1.7)), "out_of_range"),
    ("speed 400", record(with_(traffic(), averageVehicleSpeed=400.0)), "out_of_range"),
    (
        "end before start",
        record(with_(traffic(), dateObservedTo="2016-12-19T06:59:00Z")),
        "bad_period",
    ),
    (
        "two-hour period",
        record(with_(traffic(), dateObservedTo="2016-12-19T09:00:00Z")),
        "bad_period",
    ),
    (
        "1999",
        record(
            events.traffic_flow(
                "cologne-tr-06",
                datetime(1999, 12, 31, 23, 0, tzinfo=UTC),
                datetime(1999, 12, 31, 23, 5, tzinfo=UTC),
                intensity=3,
                occupancy=0.01,
                average_speed_kmh=40.0,
            )
        ),
        "too_old",
    ),
    (
        "two hours ahead",
        record(
            events.traffic_flow(
                "cologne-tr-06",
                NOW + timedelta(hours=2),
                NOW + timedelta(hours=2, minutes=5),
                intensity=3,
                occupancy=0.01,
                average_speed_kmh=40.0,
            )
        ),
        "future",
    ),
    ("unknown sensor", record(with_(traffic(), refDevice="cologne-tr-99")), "unknown_sensor"),
    ("key differs", record(traffic(), "cologne-tr-07"), "key_mismatch"),
    ("no key", (None, events.encode(traffic())), "key_mismatch"),
    (
        "before watermark",
        record(
            events.traffic_flow(
                "cologne-tr-06",
                T0 - timedelta(hours=2),
                T0 - timedelta(hours=2) + timedelta(minutes=5),
                intensity=3,
                occupancy=0.01,
                average_speed_kmh=40.0,
            )
        ),
        "late",
    ),
]


def judge(spark, records, topic="traffic", limits=LIMITS, watermarks=WATERMARKS):
    spec = TOPIC_SPECS[topic]
    sensors = spark.createDataFrame(
        [(s, watermarks.get(s)) for s in SENSORS], "sensor_id string, watermark timestamp"
    )
    frame = kafka_frame(spark, records, topic)
    return classify(parse(frame, spec, limits.max_event_bytes), spec, sensors, limits)


def test_every_bad_traffic_event_gets_its_reason(spark):
    judged = judge(spark, [case[1] for case in TRAFFIC_CASES])
    got = {r.offset: r.reason for r in judged.select("offset", "reason").collect()}
    expected = {i: case[2] for i, case in enumerate(TRAFFIC_CASES)}
    wrong = {
        TRAFFIC_CASES[i][0]: (got.get(i), want)
        for i, want in expected.items()
        if got.get(i) != want
    }
    assert not wrong, f"(got, expected) per case: {wrong}"


def test_valid_rows_carry_typed_fields_and_event_time(spark):
    row = judge(spark, [record(traffic())]).collect()[0]
    assert row.reason is None
    assert row.sensor_id == "cologne-tr-06"
    assert row.intensity == 31 and row.occupancy == pytest.approx(0.1142)
    assert row.event_time.replace(tzinfo=UTC) == T0 or row.event_time == T0.replace(tzinfo=None)


def test_environment_topic_takes_air_and_noise(spark):
    noise = events.noise_level("beijing-aq-dongsi", T0, T0 + timedelta(minutes=15), laeq=61.2)
    bad_noise = with_(noise, LAeq=250.0)
    bad_air = with_(air(), relativeHumidity=45.0)  # percent instead of a 0..1 fraction
    no_time = without(air(), "dateObserved")
    judged = judge(
        spark,
        [
            record(air()),
            record(noise),
            record(bad_noise),
            record(bad_air),
            record(no_time),
            record(traffic()),
        ],
        topic="environment",
        watermarks={},
    )
    got = [r.reason for r in judged.orderBy("offset").collect()]
    assert got == [None, None, "out_of_range", "out_of_range", "missing_field", "unknown_type"]


def test_lateness_is_judged_per_sensor(spark):
    """A sensor far ahead (tr-06's watermark) never makes another sensor's older reading late."""
    two_hours_back = T0 - timedelta(hours=2)
    readings = [
        events.traffic_flow(
            sensor,
            two_hours_back,
            two_hours_back + timedelta(minutes=5),
            intensity=3,
            occupancy=0.01,
            average_speed_kmh=40.0,
        )
        for sensor in ("cologne-tr-06", "cologne-tr-07")
    ]
    judged = judge(spark, [record(r) for r in readings])
    got = [r.reason for r in judged.orderBy("offset").collect()]
    assert got == ["late", None]
