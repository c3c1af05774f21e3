"""Replay readers on the real Beijing and METR-LA files; the rebase rule."""

from __future__ import annotations

import csv
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from cityos import events
from cityos.settings import SHARED_DIR
from cityos.streaming.sources import replay

DATA = SHARED_DIR / "data"
SINCE = datetime(2016, 12, 19, 0, tzinfo=UTC)  # 08:00 Beijing time


@pytest.fixture(scope="module")
def beijing_slice():
    records, missing = replay.beijing_records(DATA, SINCE, SINCE + timedelta(hours=3))
    return [r.build(timedelta(0)) for r in records], missing


def test_beijing_slice_has_every_station_hour_and_is_valid(beijing_slice):
    built, missing = beijing_slice
    assert missing == 0 and len(built) == 12 * 3
    assert {e["refDevice"] for e in built} == {s.sensor_id for s in replay.beijing_sensors(DATA)}
    assert all(events.validate(e) == [] for e in built)


def test_beijing_values_are_the_files_values(beijing_slice):
    built, _ = beijing_slice
    dongsi = next(
        e
        for e in built
        if e["refDevice"] == "beijing-aq-dongsi" and e["dateObserved"] == "2016-12-19T00:00:00Z"
    )
    path = DATA / "beijing-air-quality-prsa" / "PRSA_Data_Dongsi_20130301-20170228.csv"
    with path.open(newline="") as handle:
        row = next(
            r
            for r in csv.DictReader(handle)
            if (r["year"], r["month"], r["day"], r["hour"]) == ("2016", "12", "19", "8")
        )
    assert dongsi["pm25"] == float(row["PM2.5"]) and dongsi["co"] == float(row["CO"])
    assert dongsi["windSpeed"] == float(row["WSPM"])
    expected_rh = replay.relative_humidity(float(row["TEMP"]), float(row["DEWP"]))
    assert dongsi["relativeHumidity"] == pytest.approx(expected_rh, abs=1e-4)
    assert 0 < dongsi["relativeHumidity"] <= 1


def test_beijing_sensors_use_the_kdd_coordinates():
    sensors = {s.sensor_id: s for s in replay.beijing_sensors(DATA)}
    assert len(sensors) == 12
    assert (
        sensors["beijing-aq-changping"].longitude,
        sensors["beijing-aq-changping"].latitude,
    ) == (116.23, 40.217)


def test_metr_la_speeds_are_km_h_every_5_minutes(tmp_path):
    folder = tmp_path / "metr-la-los-loop"
    folder.mkdir()
    source = DATA / "metr-la-los-loop"
    lines = (source / "los_speed.csv").read_text().splitlines()
    first = lines[1].split(",")
    first_mph = float(first[0])
    first[1] = "0"  # a zero reading means "missing" in METR-LA
    (folder / "los_speed.csv").write_text("\n".join([lines[0], ",".join(first), lines[2]]) + "\n")
    shutil.copy(source / "graph_sensor_locations.csv", folder)
    records, missing = replay.metr_la_records(tmp_path)
    assert missing == 1 and len(records) == 2 * 207 - 1
    built = [r.build(timedelta(0)) for r in records]
    head = built[0]
    assert head["refDevice"] == f"la-{lines[0].split(',')[0]}"
    assert head["dateObservedFrom"] == "2012-03-01T08:00:00Z"  # midnight PST
    assert head["averageVehicleSpeed"] == pytest.approx(first_mph * 1.609344, abs=0.01)
    assert head["intensity"] is None and head["occupancy"] is None
    assert {e["dateObservedFrom"] for e in built} == {
        "2012-03-01T08:00:00Z",
        "2012-03-01T08:05:00Z",
    }
    assert all(events.validate(e) == [] for e in built)
    assert len(replay.metr_la_sensors(DATA)) == 207


def test_rebase_moves_the_first_record_to_now_in_real_time_and_the_last_when_compressed():
    records, _ = replay.beijing_records(DATA, SINCE, SINCE + timedelta(hours=3))
    records.sort(key=lambda r: r.at)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert records[0].at + replay.time_shift(records, rebase=True, speed=1, now=now) == now
    assert records[-1].at + replay.time_shift(records, rebase=True, speed=3600, now=now) == now
    assert replay.time_shift(records, rebase=False, speed=3600, now=now) == timedelta(0)
