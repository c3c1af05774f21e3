"""The streaming job's score stage on real Beijing windows in real PostgreSQL.

The windows are written the way the job's merge writes them (``air_quality_1h`` rows and the
sensors' event-time progress), a day per "micro-batch", so the scorer sees windows close as it
would live.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import psycopg
import pytest

from cityos.alerting.engine import AlertEngine
from cityos.alerting.events import AlertEvent
from cityos.alerting.rules import load_rules
from cityos.anomaly.detector import Detector, DetectorConfig
from cityos.anomaly.registry import production, register, save_model, set_status
from cityos.db import connect
from cityos.settings import data_dir_from_env
from cityos.streaming.jobs.aqi import aqi
from cityos.streaming.jobs.score import AIR, Scorer, online_version
from tests.sql import one, scalar

pytestmark = pytest.mark.integration

QUERY = "aggregate-environment"
LATENESS = timedelta(hours=2)
STATIONS = ("Dongsi", "Tiantan")
POLLUTANTS = {"pm25": "PM2.5", "pm10": "PM10", "no2": "NO2", "o3": "O3"}


def station_hours(station: str, start: str, end: str) -> list[dict]:
    folder = data_dir_from_env() / "beijing-air-quality-prsa"
    df = pd.read_csv(next(folder.glob(f"PRSA_Data_{station}_*.csv")))
    local = pd.to_datetime(df[["year", "month", "day", "hour"]]).dt.tz_localize("Asia/Shanghai")
    df["at"] = local.dt.tz_convert(UTC)
    df = df[(df["at"] >= pd.Timestamp(start, tz=UTC)) & (df["at"] < pd.Timestamp(end, tz=UTC))]
    rows = []
    for rec in df.to_dict("records"):
        values = {
            k: (None if pd.isna(rec[col]) else float(rec[col])) for k, col in POLLUTANTS.items()
        }
        index, category = aqi("china_hj633", values)
        start_at = rec["at"].to_pydatetime()
        rows.append(
            {
                "sensor_id": f"beijing-aq-{station.lower()}",
                "window_start": start_at,
                "window_end": start_at + timedelta(hours=1),
                "aqi": index,
                "aqi_category": category,
                **values,
            }
        )
    return rows


@pytest.fixture
def beijing(database_url: str, pg_schema: str) -> str:
    from cityos.streaming.sources.registry import open_city, write_city, write_sensors
    from cityos.streaming.sources.replay import beijing_sensors

    city = open_city("beijing", data_dir_from_env())
    with connect(database_url, pg_schema) as conn:
        write_city(conn, city)
        write_sensors(conn, city, beijing_sensors(data_dir_from_env()))
    return pg_schema


def merge_day(conn, rows: list[dict]) -> None:
    """What the job's merge leaves behind for a day of windows: the rows and the progress."""
    with conn.transaction():
        conn.cursor().executemany(
            "INSERT INTO air_quality_1h (sensor_id, zone_id, window_start, window_end, pm25,"
            " pm10, no2, o3, aqi, aqi_category) SELECT %(sensor_id)s, zone_id, %(window_start)s,"
            " %(window_end)s, %(pm25)s, %(pm10)s, %(no2)s, %(o3)s, %(aqi)s, %(aqi_category)s"
            " FROM sensors WHERE sensor_id = %(sensor_id)s",
            rows,
        )
        latest: dict[str, datetime] = {}
        for r in rows:
            latest[r["sensor_id"]] = max(
                latest.get(r["sensor_id"], r["window_end"]), r["window_end"]
            )
        conn.cursor().executemany(
            "INSERT INTO sensor_watermarks (query_name, sensor_id, max_event_time)"
            " VALUES (%s, %s, %s) ON CONFLICT (query_name, sensor_id) DO UPDATE"
            " SET max_event_time = excluded.max_event_time",
            [(QUERY, s, at) for s, at in latest.items()],
        )


def days(start: str, n: int) -> list[list[dict]]:
    first = pd.Timestamp(start, tz=UTC)
    out = []
    for d in range(n):
        a, b = first + timedelta(days=d), first + timedelta(days=d + 1)
        out.append([r for s in STATIONS for r in station_hours(s, str(a), str(b))])
    return out


def scorer(**kw) -> Scorer:
    return Scorer(QUERY, LATENESS, (AIR,), AlertEngine(load_rules()), registry_check_s=0, **kw)


def scores(conn) -> list[tuple]:
    return conn.execute(
        "SELECT sensor_id, metric, window_start, round(score::numeric, 9), model_version"
        " FROM anomaly_scores ORDER BY 1, 2, 3"
    ).fetchall()


RESET = (
    "anomaly_scores",
    "forecasts",
    "zone_forecasts",
    "scoring_progress",
    "detector_state",
    "alert_state",
    "alert_outbox",
    "alerts",
)


def test_detectors_keep_their_city_s_calendar(database_url, beijing) -> None:
    """Beijing's detectors count hours and weekends in Asia/Shanghai time, from the cities
    table. A saved state kept in another zone is not used (its hours would be the wrong ones):
    that series starts afresh, the others resume."""
    run = scorer()
    with connect(database_url, beijing, autocommit=True) as conn:
        for day in days("2013-12-01", 2):
            merge_day(conn, day)
            run.score(conn, datetime.now(UTC))
        assert run._detectors
        assert {d.timezone for d in run._detectors.values()} == {"Asia/Shanghai"}
        run.checkpoint(conn)

        (sensor, metric), other = sorted(run._detectors)[:2]
        raw = scalar(
            conn,
            "SELECT state FROM detector_state WHERE sensor_id = %s AND metric = %s",
            (sensor, metric),
        )
        moved = Detector.from_bytes(bytes(raw))
        assert moved.count > 0
        moved.timezone = "UTC"
        conn.execute(
            "UPDATE detector_state SET state = %s WHERE sensor_id = %s AND metric = %s",
            (moved.to_bytes(), sensor, metric),
        )
        later = scorer()
        end = datetime(2013, 12, 3, tzinfo=UTC)
        fresh = later._detector(conn, AIR, sensor, metric, end, "Asia/Shanghai")
        assert fresh.timezone == "Asia/Shanghai" and fresh.count == 0
        resumed = later._detector(conn, AIR, *other, end, "Asia/Shanghai")
        assert resumed.timezone == "Asia/Shanghai" and resumed.count > 0


def test_closed_windows_are_scored_once_forecast_and_alerted(database_url, beijing) -> None:
    batches = days("2013-12-01", 12)
    run = scorer()
    with connect(database_url, beijing, autocommit=True) as conn:
        total = 0
        for day in batches:
            merge_day(conn, day)
            summary = run.score(conn, datetime.now(UTC))
            total += summary.windows
            # windows within the lateness of the newest event are not closed yet
            open_ = scalar(
                conn,
                "SELECT count(*) FROM air_quality_1h a JOIN sensor_watermarks w USING (sensor_id)"
                " WHERE a.window_end > w.max_event_time - %s",
                (LATENESS,),
            )
            assert open_ > 0
        assert run.score(conn, datetime.now(UTC)).windows == 0  # nothing closes twice
        windows = scalar(conn, "SELECT count(*) FROM air_quality_1h")
        assert total == windows - len(STATIONS) * 2  # all but the last two hours per station

        measured = sum(
            1
            for day in batches
            for r in day
            for m in AIR.metrics
            if r.get(m) is not None
            and r["window_end"] <= max(x["window_end"] for x in batches[-1]) - LATENESS
        )
        got = one(conn, "SELECT count(*), min(score), max(score) FROM anomaly_scores")
        assert got[0] == measured and 0 <= got[1] <= got[2] <= 1
        assert {r[4] for r in scores(conn)} == {online_version(DetectorConfig())}

        # forecasts of PM2.5 once the detector has seen enough, for the hours after the window
        rows = conn.execute(
            "SELECT issued_at, target_start, expected, lower, upper FROM forecasts"
            " WHERE metric = 'pm25'"
        ).fetchall()
        assert rows and all(t >= i and lo <= e <= hi for i, t, e, lo, hi in rows)

        # the smog of December 2013 raised AQI alerts through the same transaction
        fired = scalar(
            conn, "SELECT count(*) FROM alerts WHERE kind = 'air_quality' AND metric = 'aqi'"
        )
        assert fired > 0
        outbox = scalar(conn, "SELECT count(*) FROM alert_outbox")
        assert outbox >= fired


def uninterrupted_then_reset(conn, batches: list[list[dict]]) -> tuple[list, list]:  # noqa: ANN001
    """The scores and zone forecasts of one scorer through every batch; then the tables are
    emptied for the run to compare with it."""
    once = scorer()
    for day in batches:
        merge_day(conn, day)
        once.score(conn, datetime.now(UTC))
    reference = scores(conn), zone_forecasts(conn)
    for table in (*RESET, "air_quality_1h", "sensor_watermarks"):
        conn.execute(f"DELETE FROM {table}")  # noqa: S608 - our own table names
    return reference


def test_a_restart_resumes_from_the_checkpoint_exactly(database_url, beijing) -> None:
    batches = days("2013-12-01", 10)
    with connect(database_url, beijing, autocommit=True) as conn:
        reference = uninterrupted_then_reset(conn, batches)
        assert reference[1]
        first = scorer(checkpoint_s=1e9)
        for day in batches[:4]:
            merge_day(conn, day)
            first.score(conn, datetime.now(UTC))
        first.checkpoint(conn)
        for day in batches[4:6]:  # scored, but the process dies before the next checkpoint
            merge_day(conn, day)
            first.score(conn, datetime.now(UTC))
        del first
        second = scorer()  # a new process: loads the checkpoint, replays two days into it
        for day in batches[6:]:
            merge_day(conn, day)
            second.score(conn, datetime.now(UTC))
        assert (scores(conn), zone_forecasts(conn)) == reference


def test_a_forecast_runs_on_from_the_last_window_with_its_metric(database_url, beijing) -> None:
    """A station whose PM2.5 is missing in its last hours (its other pollutants are not): the
    forecast of PM2.5 starts after the last hour the detector saw, not after the last row."""
    batches = days("2013-12-01", 10)
    station = "beijing-aq-dongsi"
    gap = [r for r in batches[-1] if r["sensor_id"] == station][-12:]
    for r in gap:
        r["pm25"] = None
    with connect(database_url, beijing, autocommit=True) as conn:
        run = scorer()
        for day in batches:
            merge_day(conn, day)
            run.score(conn, datetime.now(UTC))
        seen = {
            r[0]
            for r in conn.execute(
                "SELECT window_end FROM air_quality_1h WHERE sensor_id = %s AND pm25 IS NOT NULL",
                (station,),
            )
        }
        issued = conn.execute(
            "SELECT issued_at, min(target_start) FROM forecasts"
            " WHERE sensor_id = %s AND metric = 'pm25' GROUP BY 1",
            (station,),
        ).fetchall()
    assert issued and max(i for i, _ in issued) < gap[0]["window_end"]
    assert all(i in seen and first == i for i, first in issued)


class FailsOnce(AlertEngine):
    """The alert engine, failing its ``fail_at``-th call as a lost connection would."""

    def __init__(self, fail_at: int) -> None:
        super().__init__(load_rules())
        self.calls, self.fail_at = 0, fail_at

    def observe(self, conn, observations, now):  # noqa: ANN001, ANN201
        self.calls += 1
        if self.calls == self.fail_at:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return super().observe(conn, observations, now)


@pytest.mark.parametrize("saved_before", [False, True], ids=["no saved state", "saved state"])
def test_a_failed_scoring_transaction_loses_no_score(database_url, beijing, saved_before) -> None:
    """The detectors learn a batch's windows before its transaction commits; when it fails the
    windows are scored again with the next batch, by detectors that have not learnt them."""
    batches = days("2013-12-01", 8)
    with connect(database_url, beijing, autocommit=True) as conn:
        reference = uninterrupted_then_reset(conn, batches)
        flaky = Scorer(QUERY, LATENESS, (AIR,), FailsOnce(fail_at=6), registry_check_s=0)
        flaky.checkpoint_s = 1e9
        failed = []
        for i, day in enumerate(batches):
            merge_day(conn, day)
            if saved_before and i == 3:
                flaky.checkpoint(conn)
            try:
                flaky.score(conn, datetime.now(UTC))
            except psycopg.OperationalError:
                failed.append(i)
        assert len(failed) == 1 and 3 < failed[0] < len(batches) - 1
        assert (scores(conn), zone_forecasts(conn)) == reference


def test_a_state_saved_by_an_older_detector_starts_that_series_afresh(
    database_url, beijing
) -> None:
    """A checkpoint in a format the detector no longer reads (an upgrade) is not a crash: the
    series starts again from a fresh detector and the job scores on."""
    import json

    batches = days("2013-12-01", 3)
    with connect(database_url, beijing, autocommit=True) as conn:
        first = scorer(checkpoint_s=1e9)
        for day in batches[:2]:
            merge_day(conn, day)
            first.score(conn, datetime.now(UTC))
        first.checkpoint(conn)
        old = Detector().state_dict() | {"version": 1}
        for key in ("sustained", "sustained_sum", "sustained_sq"):
            old.pop(key, None)
        stale = conn.execute(
            "UPDATE detector_state SET state = %s WHERE sensor_id = %s AND metric = 'pm25'",
            (json.dumps(old).encode(), f"beijing-aq-{STATIONS[0].lower()}"),
        ).rowcount
        assert stale == 1
        before = len(scores(conn))
        second = scorer()  # a new process over the old checkpoint
        merge_day(conn, batches[2])
        summary = second.score(conn, datetime.now(UTC))
        assert summary.windows > 0 and len(scores(conn)) > before


def test_a_promoted_model_is_picked_up_without_a_restart(database_url, beijing, tmp_path) -> None:
    history = days("2013-11-01", 20)
    batches = days("2013-12-01", 4)
    with connect(database_url, beijing, autocommit=True) as conn:
        run = scorer()
        merge_day(conn, batches[0])
        run.score(conn, datetime.now(UTC))
        assert production(conn, "anomaly") is None

        # a model trained on November: one detector state per station and metric, in Beijing's
        # time (a state in another zone would not be used)
        trained = []
        for station in STATIONS:
            sensor = f"beijing-aq-{station.lower()}"
            rows = [r for day in history for r in day if r["sensor_id"] == sensor]
            for metric in AIR.metrics:
                detector = Detector(DetectorConfig(), timezone="Asia/Shanghai")
                for r in rows:
                    if r[metric] is not None:
                        detector.update(r["window_start"], r[metric])
                trained.append((sensor, metric, detector, rows[-1]["window_end"]))
        folder = save_model(
            tmp_path / "v1",
            "v1",
            DetectorConfig(),
            trained,
            data_start=history[0][0]["window_start"],
            data_end=history[-1][-1]["window_end"],
            metrics={"windows": 960},
        )
        register(
            conn,
            "anomaly",
            "v1",
            folder,
            {"windows": 960},
            data_start=history[0][0]["window_start"],
            data_end=history[-1][-1]["window_end"],
        )
        set_status(conn, "anomaly", "v1", "production")

        for day in batches[1:]:
            merge_day(conn, day)
            run.score(conn, datetime.now(UTC))
        versions: dict[str, int] = dict(
            conn.execute("SELECT model_version, count(*) FROM anomaly_scores GROUP BY 1").fetchall()
        )
        assert set(versions) == {online_version(DetectorConfig()), "v1"}
        # the seeded detectors forecast at once: they have a month behind them
        assert scalar(conn, "SELECT count(*) FROM forecasts WHERE model_version = 'v1'") > 0


# ----------------------------------------------------------------------------- zone forecasts
ZONE_STATIONS = ("Dongsi", "Tiantan", "Wanliu")  # Dongcheng has the first two, Haidian the third
DONGCHENG, HAIDIAN = "beijing-110101", "beijing-110108"
DONGCHENG_IDS = ["beijing-aq-dongsi", "beijing-aq-tiantan"]


def hourly_batches(start: str, warmup_days: int, hours: int) -> list[list[dict]]:
    """Day batches for the detectors' warm-up, then one batch per hour, as a live job sees them."""
    first = pd.Timestamp(start, tz=UTC)
    until = first + timedelta(days=warmup_days, hours=hours)
    rows = [r for s in ZONE_STATIONS for r in station_hours(s, str(first), str(until))]
    bounds = [first + timedelta(days=d) for d in range(warmup_days + 1)]
    bounds += [bounds[-1] + timedelta(hours=h) for h in range(1, hours + 1)]
    return [
        [r for r in rows if a <= r["window_start"] < b]
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]


@pytest.fixture(scope="module")
def zone_run(database_url: str) -> Iterator[str]:
    """Three stations in two districts scored hour by hour through a smoggy December 2013, in a
    schema of this module's own, shared by the tests below (the replay test re-scores its last
    day and proves that changes nothing)."""
    from psycopg import sql

    from cityos.db import migrate
    from cityos.streaming.sources.registry import open_city, write_city, write_sensors
    from cityos.streaming.sources.replay import beijing_sensors

    schema = f"t_{uuid.uuid4().hex[:8]}"
    migrate(database_url, schema)
    city = open_city("beijing", data_dir_from_env())
    with connect(database_url, schema) as conn:
        write_city(conn, city)
        write_sensors(conn, city, beijing_sensors(data_dir_from_env()))
    run = scorer()
    with connect(database_url, schema, autocommit=True) as conn:
        for batch in hourly_batches("2013-11-21", 10, 10 * 24):
            merge_day(conn, batch)
            run.score(conn, datetime.now(UTC))
        run.checkpoint(conn)
    yield schema
    with connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def zone_forecasts(conn) -> list[tuple]:
    return conn.execute("SELECT * FROM zone_forecasts ORDER BY 1, 2, 3").fetchall()


def outbox_events(conn) -> list[AlertEvent]:
    rows = conn.execute("SELECT payload FROM alert_outbox ORDER BY created_at, event_id")
    return [AlertEvent.from_json(bytes(r[0])) for r in rows.fetchall()]


def test_a_zone_forecast_is_the_mean_of_its_sensors_forecasts(database_url, zone_run) -> None:
    with connect(database_url, zone_run) as conn:
        rows = conn.execute(
            "SELECT zone_id, target_start, expected, lower, upper, sensors FROM zone_forecasts"
            " WHERE metric = 'pm25'"
        ).fetchall()
        members: dict[Any, Any] = dict(
            conn.execute(
                "SELECT zone_id, array_agg(sensor_id) FROM sensors"
                " WHERE sensor_id = ANY(%s) GROUP BY zone_id",
                ([f"beijing-aq-{s.lower()}" for s in ZONE_STATIONS],),
            ).fetchall()
        )
        sensor_forecasts = {
            (sensor, target): (expected, lower, upper)
            for sensor, target, expected, lower, upper in conn.execute(
                "SELECT sensor_id, target_start, expected, lower, upper FROM forecasts"
                " WHERE metric = 'pm25'"
            ).fetchall()
        }
    assert sorted(members[DONGCHENG]) == ["beijing-aq-dongsi", "beijing-aq-tiantan"]
    assert members[HAIDIAN] == ["beijing-aq-wanliu"]
    assert {z for z, *_ in rows} == {DONGCHENG, HAIDIAN}  # zones without a scored sensor: none
    both = 0
    for zone, target, expected, lower, upper, n in rows:
        parts = [
            sensor_forecasts[(s, target)] for s in members[zone] if (s, target) in sensor_forecasts
        ]
        assert n == len(parts) >= 1
        for got, i in ((expected, 0), (lower, 1), (upper, 2)):
            assert got == pytest.approx(sum(p[i] for p in parts) / n, rel=1e-12)
        assert lower <= expected <= upper
        both += zone == DONGCHENG and n == 2
    # every hour of the hourly part forecast by both Dongcheng stations is in the table
    assert both >= 10 * 24 - 2


def test_a_zone_alert_fires_when_the_mean_forecast_crosses_not_before(
    database_url, zone_run
) -> None:
    rule = load_rules()["pm25_forecast_zone"]
    with connect(database_url, zone_run) as conn:
        # one zone observation per batch: at the hour the stations forecast, of that next hour
        series = conn.execute(
            "SELECT target_start, expected FROM zone_forecasts"
            " WHERE zone_id = %s AND metric = 'pm25' ORDER BY target_start",
            (DONGCHENG,),
        ).fetchall()
        members = {
            (sensor, at): value
            for sensor, at, value in conn.execute(
                "SELECT sensor_id, target_start, expected FROM forecasts"
                " WHERE sensor_id = ANY(%s) AND metric = 'pm25'",
                (DONGCHENG_IDS,),
            ).fetchall()
        }
        events = outbox_events(conn)
        alerts = conn.execute(
            "SELECT zone_id, sensor_id, metric, value, threshold, message FROM alerts"
            " WHERE alert_id LIKE 'pm25_forecast_zone:%'"
        ).fetchall()

    # the lifecycle the rule asks for, replayed on the zone's forecasts by hand; and the hours
    # where a station was forecast above 150 but the district's mean was not, no alert open
    # (a zone rule on its worst station would have fired there: this one must not)
    expected: list[tuple[str, datetime]] = []
    early: list[datetime] = []
    open_, clears = False, 0
    for at, value in series:
        worst = max(members.get((s, at), 0) for s in DONGCHENG_IDS)
        if not open_ and value < rule.levels.threshold <= worst:
            early.append(at)
        clears = clears + 1 if value <= rule.levels.clear else 0
        if not open_ and value >= rule.levels.threshold:
            open_ = True
            expected.append(("firing", at))
        elif open_ and clears >= rule.clear_after:
            open_ = False
            expected.append(("resolved", at))
    zone_events = [
        (e.type, e.at)
        for e in events
        if e.alert.zone_id == DONGCHENG and e.alert.sensor_id is None and e.type != "updated"
    ]
    assert zone_events == expected
    assert len([t for t, _ in expected if t == "firing"]) >= 2  # the smog of 1-8 December
    # hysteresis: fewer alerts than upward crossings of the threshold
    crossings = sum(1 for (_, a), (_, b) in zip(series, series[1:], strict=False) if a < 150 <= b)
    assert len([t for t, _ in expected if t == "firing"]) < crossings

    assert early  # hours the district did not fire at (zone_events == expected)

    # the alert row: the zone as its target (no sensor), named with its level
    assert alerts and all(
        zone == DONGCHENG
        and sensor is None
        and metric == "pm25_forecast"
        and threshold == 150
        and value >= 150
        and message.startswith("PM2.5 in Dongcheng (district) likely above 150")
        and "mean of 2 sensors" in message
        for zone, sensor, metric, value, threshold, message in alerts
    )
    # Haidian has one station: its zone forecast is kept, its alerts are the station's own
    assert not [e for e in events if e.alert.zone_id == HAIDIAN and e.alert.sensor_id is None]


def test_replaying_scored_windows_leaves_zone_forecasts_and_alerts_unchanged(
    database_url, zone_run
) -> None:
    with connect(database_url, zone_run, autocommit=True) as conn:
        before = zone_forecasts(conn), conn.execute("SELECT * FROM alerts ORDER BY 1").fetchall()
        outbox = scalar(conn, "SELECT count(*) FROM alert_outbox")
        # a new process whose progress was lost for the last day: the day is scored again
        conn.execute("UPDATE scoring_progress SET scored_until = scored_until - interval '1 day'")
        summary = scorer().score(conn, datetime.now(UTC))
        assert summary.windows == 24 * len(ZONE_STATIONS) and summary.zone_forecasts > 0
        after = zone_forecasts(conn), conn.execute("SELECT * FROM alerts ORDER BY 1").fetchall()
        assert after == before
        assert scalar(conn, "SELECT count(*) FROM alert_outbox") == outbox


def test_a_sensor_belongs_to_its_zone_and_every_zone_above_it(database_url, pg_schema) -> None:
    from cityos.streaming.jobs.score import _zones
    from cityos.streaming.sources import twin
    from cityos.streaming.sources.registry import register_twin

    prepared = twin.prepare("cologne8", data_dir_from_env())  # real Cologne zones and loops
    with connect(database_url, pg_schema) as conn:
        register_twin(conn, prepared.city, prepared.layout, prepared.stations)
        placed = conn.execute(
            "SELECT s.sensor_id, s.zone_id, z.level, z.parent_zone_id FROM sensors s"
            " JOIN zones z ON z.zone_id = s.zone_id WHERE s.kind = 'traffic'"
        ).fetchall()
        with conn.cursor() as cur:
            zones = _zones(cur, "traffic")
    assert placed and {level for _, _, level, _ in placed} == {"subdistrict"}
    expected: dict[str, set[str]] = {}
    for sensor, zone, _, parent in placed:  # Cologne: subdistrict (Stadtteil) -> district
        expected.setdefault(zone, set()).add(sensor)
        expected.setdefault(parent, set()).add(sensor)
    assert {z: set(v.sensors) for z, v in zones.items()} == expected
    assert {v.level for v in zones.values()} == {"subdistrict", "district"}
    assert {v.city_id for v in zones.values()} == {"cologne"}
