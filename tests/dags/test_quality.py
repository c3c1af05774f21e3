"""cityos/quality.py: the checks as pure functions, then against real PostgreSQL and real data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cityos import quality
from cityos.db import connect
from tests.dags.realdata import SILENT_SENSOR, seed_next_hour, seed_quality_scenario
from tests.sql import scalar

START = datetime(2014, 1, 15, 10, tzinfo=UTC)
OFFLINE = "sensor_offline"
END = START + timedelta(hours=1)


def _stats(
    kind: str = "traffic", windows: int = 12, last_end: datetime | None = END, **outside: int
) -> quality.SensorStats:
    return quality.SensorStats("s1", "cologne", kind, "z1", windows, last_end, outside)


def _by_check(results: list[quality.CheckResult]) -> dict[str, quality.CheckResult]:
    return {r.check_name: r for r in results}


def test_a_complete_fresh_clean_sensor_passes_everything() -> None:
    results = _by_check(quality.evaluate(_stats(occupancy=0), START, END))
    assert all(r.passed for r in results.values())
    assert results["completeness"].value == 1.0
    assert results["freshness"].value == 0.0
    assert results["silent"].value == 0.0


def test_each_defect_fails_its_own_check() -> None:
    gappy = _by_check(quality.evaluate(_stats(windows=8), START, END))
    assert not gappy["completeness"].passed and gappy["completeness"].value == pytest.approx(8 / 12)
    assert gappy["completeness"].details == {"windows": 8, "expected": 12}

    wild = _by_check(quality.evaluate(_stats(occupancy=2, avg_speed_kmh=1), START, END))
    assert not wild["out_of_range"].passed and wild["out_of_range"].value == 3
    assert wild["out_of_range"].details == {"occupancy": 2, "avg_speed_kmh": 1}

    stale = _by_check(
        quality.evaluate(_stats(windows=0, last_end=START - timedelta(minutes=30)), START, END)
    )
    assert not stale["freshness"].passed and stale["freshness"].value == 90
    assert not stale["silent"].passed and stale["silent"].value == 90


def test_silence_allows_one_open_window_per_kind() -> None:
    assert quality.silent_minutes(_stats(last_end=END - timedelta(minutes=5)), END) == 0
    assert quality.silent_minutes(_stats(last_end=END - timedelta(minutes=10)), END) == 10
    air = _stats("air_quality", windows=0, last_end=END - timedelta(hours=1))
    assert quality.silent_minutes(air, END) == 0
    assert (
        quality.silent_minutes(_stats("air_quality", last_end=END - timedelta(hours=2)), END) == 120
    )
    assert quality.silent_minutes(_stats(last_end=None), END) is None


def test_air_quality_expects_one_window_an_hour() -> None:
    day = _by_check(
        quality.evaluate(_stats("air_quality", windows=21), START, START + timedelta(days=1))
    )
    assert day["completeness"].details == {"windows": 21, "expected": 24}  # 0.875 < 0.9
    assert not day["completeness"].passed


def _windows(kind: str, before: datetime | None, *starts: int) -> quality.SensorWindows:
    """A sensor's windows of [START, END), by their start minute."""
    size = quality.KINDS[kind].window
    windows = tuple(
        (START + timedelta(minutes=m), START + timedelta(minutes=m) + size) for m in starts
    )
    return quality.SensorWindows("s1", "cologne", kind, "z1", before, windows)


def test_silence_is_followed_window_by_window() -> None:
    """Windows at 10:00 and from 10:50: silent from 10:05, 15 minutes at 10:20, back at 10:55."""
    loop = _windows("traffic", START, 0, 50, 55)
    timeline = quality.silence_timeline(loop, START, END)
    assert [t for t, _ in timeline] == [START + timedelta(minutes=m) for m in range(5, 65, 5)]
    assert [v for _, v in timeline] == [0, 0, 10, 15, 20, 25, 30, 35, 40, 45, 0, 0]
    # the hour mark alone says 0: the outage inside the hour is seen only window by window
    assert timeline[-1][1] == quality.silent_minutes(_stats(last_end=END), END) == 0

    # a station: one window an hour, so one moment (the interval's end)
    air = _windows("air_quality", START - timedelta(hours=2))
    assert quality.silence_timeline(air, START, END) == [(END, 180.0)]
    # a sensor's first window inside the interval: nothing said before it
    new = _windows("traffic", None, 30, 35, 40, 45, 50, 55)
    assert quality.silence_timeline(new, START, END)[0] == (START + timedelta(minutes=35), 0)


def test_offline_observations_carry_minutes_silent() -> None:
    sensors = [
        _windows("traffic", START, *range(0, 60, 5)),
        quality.SensorWindows("s2", "beijing", "air_quality", None, END - timedelta(hours=3), ()),
        quality.SensorWindows("s3", "beijing", "air_quality", None, None, ()),  # never reported
    ]
    observations = quality.offline_observations(sensors, START, END)
    assert [(o.sensor_id, o.value) for o in observations] == [("s1", 0.0)] * 12 + [("s2", 180.0)]
    assert all(o.rule_id == OFFLINE for o in observations)
    assert [o.at for o in observations] == [
        START + timedelta(minutes=m) for m in range(5, 65, 5)
    ] + [END]
    assert observations[-1].city_id == "beijing"


def test_an_empty_or_naive_interval_is_refused() -> None:
    with pytest.raises(quality.QualityError):
        quality.run_checks(None, END, START)  # type: ignore[arg-type]
    with pytest.raises(quality.QualityError):
        quality.run_checks(None, START.replace(tzinfo=None), END)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- PostgreSQL
def _rows(conn, start: datetime) -> dict[tuple[str, str], tuple]:
    cur = conn.execute(
        "SELECT check_name, sensor_id, passed, value, details FROM data_quality_checks"
        " WHERE interval_start = %s",
        (start,),
    )
    return {(c, s): (p, v, d) for c, s, p, v, d in cur}


@pytest.mark.integration
def test_checks_of_real_data_are_recorded_once_per_interval(
    database_url: str, pg_schema: str
) -> None:
    with connect(database_url, pg_schema) as conn:
        scenario = seed_quality_scenario(conn)
        run = quality.run_checks(conn, START, END)
        conn.commit()
        assert run.summary()["sensors"] == 18
        rows = _rows(conn, START)
        assert len(rows) == 18 * 4

        assert rows[("silent", SILENT_SENSOR)][:2] == (False, 180.0)
        assert rows[("freshness", SILENT_SENSOR)][:2] == (False, 180.0)
        assert rows[("completeness", SILENT_SENSOR)][:2] == (False, 0.0)
        assert rows[("completeness", scenario["gappy"])][:2] == (False, pytest.approx(8 / 12))
        assert rows[("out_of_range", scenario["wild"])] == (False, 1.0, {"occupancy": 1})
        assert rows[("silent", scenario["mute"])] == (False, None, {"never_reported": True})
        failed = {key for key, (passed, _, _) in rows.items() if not passed}
        assert failed == {
            ("silent", SILENT_SENSOR),
            ("freshness", SILENT_SENSOR),
            ("completeness", SILENT_SENSOR),
            ("completeness", scenario["gappy"]),
            ("out_of_range", scenario["wild"]),
            *((check, scenario["mute"]) for check in ("silent", "freshness", "completeness")),
        }

        quality.run_checks(conn, START, END)  # a re-run replaces, never adds
        conn.commit()
        assert _rows(conn, START) == rows
        total = scalar(conn, "SELECT count(*) FROM data_quality_checks")
        assert total == 72


def _offline_alerts(conn) -> dict[str, tuple]:
    rows = conn.execute(
        "SELECT sensor_id, status, value, started_at, resolved_at FROM alerts"
        " WHERE kind = 'sensor_offline'"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


@pytest.mark.integration
def test_a_silent_sensor_fires_then_resolves_sensor_offline(
    database_url: str, pg_schema: str, settings
) -> None:
    settings = settings.model_copy(update={"database_schema": pg_schema})
    with connect(database_url, pg_schema) as conn:
        scenario = seed_quality_scenario(conn)
    summary = quality.alert_offline(settings, START, END)
    assert summary["silent_sensors"] == [SILENT_SENSOR]
    assert summary["sensors"] == 17  # the never-reported loop raises nothing
    assert summary["observations"] == 12 + 5 * 12  # stations hourly, loops each 5 minutes
    with connect(database_url, pg_schema) as conn:
        alerts = _offline_alerts(conn)
        assert alerts[SILENT_SENSOR] == ("firing", 180.0, END, None)
        # the gappy loop's 15 silent minutes (no window 10:15-10:30) fired and resolved
        assert alerts[scenario["gappy"]] == (
            "resolved",
            15.0,
            START + timedelta(minutes=30),
            START + timedelta(minutes=35),
        )
        assert alerts.keys() == {SILENT_SENSOR, scenario["gappy"]}

        seed_next_hour(conn, scenario)
    quality.alert_offline(settings, END, END + timedelta(hours=1))
    with connect(database_url, pg_schema) as conn:
        alerts = _offline_alerts(conn)
        assert alerts[SILENT_SENSOR][0] == "resolved"
        assert alerts[SILENT_SENSOR][3] == END + timedelta(hours=1)
        assert {a[0] for a in alerts.values()} == {"resolved"}


@pytest.mark.integration
def test_an_outage_inside_the_hour_fires_and_resolves_when_it_happens(
    database_url: str, pg_schema: str, settings
) -> None:
    """A loop with windows at 10:00 and from 10:50 only: reporting again at the hour mark, but
    silent 15 minutes at 10:20; the alert says so."""
    settings = settings.model_copy(update={"database_schema": pg_schema})
    with connect(database_url, pg_schema) as conn:
        scenario = seed_quality_scenario(conn)
        loop = scenario["loops"][3]  # reports every window of the scenario's hour
        deleted = conn.execute(
            "DELETE FROM traffic_5m WHERE sensor_id = %s AND window_start >= %s"
            " AND window_start < %s",
            (loop, START + timedelta(minutes=5), START + timedelta(minutes=50)),
        ).rowcount
        conn.commit()
    assert deleted == 9
    summary = quality.alert_offline(settings, START, END)
    assert loop not in summary["silent_sensors"] and loop in summary["silent_during"]
    with connect(database_url, pg_schema) as conn:
        alerts = _offline_alerts(conn)
    assert alerts[loop] == (
        "resolved",
        15.0,
        START + timedelta(minutes=20),
        START + timedelta(minutes=55),
    )
