"""Event builders and validation: real readings pass, each kind of fault is named."""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cityos import events
from cityos.settings import SHARED_DIR
from cityos.streaming.sources import loadgen

DATA = SHARED_DIR / "data"
T0 = datetime(2016, 12, 19, 7, 0, tzinfo=UTC)


def test_iso_is_utc_with_z_and_refuses_naive_times():
    plus_one = timezone(timedelta(hours=1))
    assert events.iso(datetime(2016, 12, 19, 8, tzinfo=plus_one)) == "2016-12-19T07:00:00Z"
    assert events.iso(T0) == "2016-12-19T07:00:00Z"
    with pytest.raises(ValueError, match="naive"):
        events.iso(datetime(2016, 12, 19))  # noqa: DTZ001


def test_builders_give_schema_valid_events_keyed_by_sensor():
    built = [
        events.traffic_flow(
            "cologne-tr-01",
            T0,
            T0 + timedelta(minutes=1),
            intensity=12,
            occupancy=0.1,
            average_speed_kmh=41.3,
        ),
        events.traffic_flow(
            "la-773869",
            T0,
            T0 + timedelta(minutes=5),
            intensity=None,
            occupancy=None,
            average_speed_kmh=103.6,
        ),
        events.air_quality("beijing-aq-dongsi", T0, pm25=246.0, co=6500.0, relative_humidity=0.8),
        events.noise_level("cologne-aq-01", T0, T0 + timedelta(minutes=1), laeq=70.2, lamax=75.0),
    ]
    for event in built:
        assert events.validate(event) == [], event
        assert events.key_of(event) == event["refDevice"].encode()
        stamped = events.stamp_produced(event)
        assert events.parse(events.encode(stamped))[0]["producedAt"].endswith("Z")


def test_real_beijing_row_is_accepted():
    path = DATA / "beijing-air-quality-prsa" / "PRSA_Data_Dongsi_20130301-20170228.csv"
    with path.open(newline="") as handle:
        row = next(
            r
            for r in csv.DictReader(handle)
            if (r["year"], r["month"], r["day"], r["hour"]) == ("2016", "12", "19", "8")
        )
    event = events.air_quality(
        "beijing-aq-dongsi",
        T0,
        pm25=float(row["PM2.5"]),
        pm10=float(row["PM10"]),
        co=float(row["CO"]),
        wind_speed=float(row["WSPM"]),
        temperature=float(row["TEMP"]),
    )
    assert events.validate(event) == []


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"dateObservedTo": "2016-12-19T07:00:00Z"}, "not after"),
        ({"dateObservedTo": "2016-12-19T08:00:01Z"}, "longer than"),
        ({"occupancy": float("nan")}, "not a finite number"),
        ({"intensity": 1.5}, "intensity"),
        ({"refDevice": ""}, "refDevice"),
        ({"schemaVersion": 2}, "schemaVersion"),
    ],
)
def test_semantic_and_schema_faults_are_named(change, reason):
    event = {
        **events.traffic_flow(
            "cologne-tr-01",
            T0,
            T0 + timedelta(minutes=1),
            intensity=3,
            occupancy=0.1,
            average_speed_kmh=30.0,
        ),
        **change,
    }
    reasons = events.validate(event)
    assert reasons and reason in " ".join(reasons)


def test_event_time_window_uses_the_given_limits():
    event = events.air_quality("x", T0, pm25=1.0)
    assert events.validate(event, now=T0 - timedelta(hours=2)) != []
    assert events.validate(event, now=T0 - timedelta(hours=2), max_future_skew_s=3 * 3600) == []
    assert events.validate(event, earliest=T0 + timedelta(days=1)) != []


def test_encode_refuses_nan():
    with pytest.raises(ValueError, match="not representable"):
        events.encode({"occupancy": float("inf")})


@pytest.mark.parametrize("kind", sorted(set(loadgen.MALFORMED) - {"unknown_sensor"}))
def test_every_malformed_kind_is_rejected_with_a_reason(kind):
    rng = random.Random(kind)
    for _ in range(20):
        _key, value = loadgen.malformed(kind, rng)
        reasons = events.check(value)
        assert reasons, (kind, value[:200])
        assert all(isinstance(r, str) and r for r in reasons)


def test_unknown_sensor_passes_the_schema_and_names_no_registered_sensor():
    _key, value = loadgen.malformed("unknown_sensor", random.Random(1))
    assert events.check(value) == []
    assert events.parse(value)[0]["refDevice"].startswith("unknown-")


def test_generated_good_events_are_valid():
    rng = random.Random(3)
    now = datetime.now(UTC)
    for build in (loadgen.traffic_event, loadgen.air_event, loadgen.noise_event):
        for _ in range(500):
            event = build(rng, "load-tr-00001", now)
            assert events.check(events.encode(event)) == [], event


def test_schemas_ship_with_the_package():
    for name in events.EVENT_TYPES:
        assert events.schema(name)["title"].startswith(name)
    assert Path(events.__file__).parent.joinpath("schemas").is_dir()
