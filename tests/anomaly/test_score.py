"""The streaming job's score stage on real Beijing windows in real PostgreSQL.

The windows are written the way the job's merge writes them (``air_quality_1h`` rows and the
sensors' event-time progress), a day per "micro-batch", so the scorer sees windows close as it
would live.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from cityos.alerting.engine import AlertEngine
from cityos.alerting.rules import load_rules
from cityos.anomaly.detector import Detector, DetectorConfig
from cityos.anomaly.registry import production, register, save_model, set_status
from cityos.db import connect
from cityos.settings import data_dir_from_env
from cityos.streaming.jobs.aqi import aqi
from cityos.streaming.jobs.score import AIR, Scorer, online_version

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
    "scoring_progress",
    "detector_state",
    "alert_state",
    "alert_outbox",
    "alerts",
)


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
            open_ = conn.execute(
                "SELECT count(*) FROM air_quality_1h a JOIN sensor_watermarks w USING (sensor_id)"
                " WHERE a.window_end > w.max_event_time - %s",
                (LATENESS,),
            ).fetchone()[0]
            assert open_ > 0
        assert run.score(conn, datetime.now(UTC)).windows == 0  # nothing closes twice
        windows = conn.execute("SELECT count(*) FROM air_quality_1h").fetchone()[0]
        assert total == windows - len(STATIONS) * 2  # all but the last two hours per station

        measured = sum(
            1
            for day in batches
            for r in day
            for m in AIR.metrics
            if r.get(m) is not None
            and r["window_end"] <= max(x["window_end"] for x in batches[-1]) - LATENESS
        )
        got = conn.execute("SELECT count(*), min(score), max(score) FROM anomaly_scores").fetchone()
        assert got[0] == measured and 0 <= got[1] <= got[2] <= 1
        assert {r[4] for r in scores(conn)} == {online_version(DetectorConfig())}

        # forecasts of PM2.5 once the detector has seen enough, for the hours after the window
        rows = conn.execute(
            "SELECT issued_at, target_start, expected, lower, upper FROM forecasts"
            " WHERE metric = 'pm25'"
        ).fetchall()
        assert rows and all(t >= i and lo <= e <= hi for i, t, e, lo, hi in rows)

        # the smog of December 2013 raised AQI alerts through the same transaction
        fired = conn.execute(
            "SELECT count(*) FROM alerts WHERE kind = 'air_quality' AND metric = 'aqi'"
        ).fetchone()[0]
        assert fired > 0
        outbox = conn.execute("SELECT count(*) FROM alert_outbox").fetchone()[0]
        assert outbox >= fired


def test_a_restart_resumes_from_the_checkpoint_exactly(database_url, beijing) -> None:
    batches = days("2013-12-01", 10)
    with connect(database_url, beijing, autocommit=True) as conn:
        once = scorer()
        for day in batches:
            merge_day(conn, day)
            once.score(conn, datetime.now(UTC))
        reference = scores(conn)

        for table in (*RESET, "air_quality_1h", "sensor_watermarks"):
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 - our own table names
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
        assert scores(conn) == reference


def test_a_promoted_model_is_picked_up_without_a_restart(database_url, beijing, tmp_path) -> None:
    history = days("2013-11-01", 20)
    batches = days("2013-12-01", 4)
    with connect(database_url, beijing, autocommit=True) as conn:
        run = scorer()
        merge_day(conn, batches[0])
        run.score(conn, datetime.now(UTC))
        assert production(conn, "anomaly") is None

        # a model trained on November: one detector state per station and metric
        trained = []
        for station in STATIONS:
            sensor = f"beijing-aq-{station.lower()}"
            rows = [r for day in history for r in day if r["sensor_id"] == sensor]
            for metric in AIR.metrics:
                detector = Detector(DetectorConfig())
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
        versions = dict(
            conn.execute("SELECT model_version, count(*) FROM anomaly_scores GROUP BY 1").fetchall()
        )
        assert set(versions) == {online_version(DetectorConfig()), "v1"}
        # the seeded detectors forecast at once: they have a month behind them
        assert (
            conn.execute("SELECT count(*) FROM forecasts WHERE model_version = 'v1'").fetchone()[0]
            > 0
        )
