"""The DAGs: they import cleanly, and `dag.test()` runs them end to end on real PostgreSQL and a
real lake slice (Beijing PRSA readings and METR-LA loop speeds, tests/dags/realdata.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cityos.anomaly.retrain import read_series
from cityos.db import connect
from cityos.streaming import lake
from tests.anomaly.streamed import stream, stream_settings
from tests.dags.realdata import (
    SILENT_SENSOR,
    seed_quality_scenario,
    write_day,
)
from tests.jobs.conftest import spark  # noqa: F401 - the shared local SparkSession
from tests.sql import scalar

SCHEDULES = {
    "data_quality": "@hourly",
    "retention": "@daily",
    "retrain_anomaly_models": "@daily",
}
# tasks whose runs must follow data time: each waits for the previous interval's to succeed, so
# Airflow runs a backfill's days in order and refuses one --run-backwards
IN_ORDER = {
    "data_quality": {"alert_silent_sensors"},  # the alert engine drops older observations
    "retention": {"compact_lake", "expire_lake"},
    "retrain_anomaly_models": {"retrain"},  # compared with the previous runs' production model
}


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(SCHEDULES)


@pytest.mark.parametrize("dag_id", sorted(SCHEDULES))
def test_dags_follow_the_house_rules(dagbag, dag_id: str) -> None:
    dag = dagbag.get_dag(dag_id)
    assert dag.timetable.__class__.__name__ == "CronDataIntervalTimetable"  # real intervals
    assert dag.timetable.expression == SCHEDULES[dag_id]
    assert dag.catchup is False
    assert dag.start_date.tzinfo is not None and dag.start_date.utcoffset() == timedelta(0)
    assert "cityos" in dag.tags
    assert dag.doc_md
    assert all(task.doc_md or task.doc for task in dag.tasks), "every task has a docstring"
    assert {task.task_id for task in dag.tasks if task.depends_on_past} == IN_ORDER[dag_id]


@pytest.fixture
def cityos_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database_url: str,
    kafka_bootstrap: str,
    pg_schema: str,
) -> Path:
    """Settings for the DAG tasks (they call load_settings()): the test schema and lake."""
    lake_dir = tmp_path / "lake"
    for name, value in {
        "CITYOS_STATE_DIR": str(tmp_path / "state"),
        "CITYOS_DATABASE_URL": database_url,
        "CITYOS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CITYOS_DATABASE_SCHEMA": pg_schema,
        "CITYOS_LAKE_DIR": str(lake_dir),
        "CITYOS_TOPIC_PREFIX": "",
    }.items():
        monkeypatch.setenv(name, value)
    return lake_dir


def _states(dagrun) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}


@pytest.mark.integration
def test_data_quality_runs_its_hour(
    dagbag, cityos_env: Path, database_url: str, pg_schema: str
) -> None:
    start = datetime(2014, 1, 15, 10, tzinfo=UTC)
    with connect(database_url, pg_schema) as conn:
        scenario = seed_quality_scenario(conn, start)

    # a manual run at 11:00 covers the last whole hour, [10:00, 11:00)
    run = dagbag.get_dag("data_quality").test(logical_date=start + timedelta(hours=1))

    assert _states(run) == {"check_sensors": "success", "alert_silent_sensors": "success"}
    assert (run.data_interval_start, run.data_interval_end) == (start, start + timedelta(hours=1))
    with connect(database_url, pg_schema) as conn:
        rows = conn.execute(
            "SELECT check_name, sensor_id, passed, interval_start, interval_end"
            " FROM data_quality_checks"
        ).fetchall()
        assert len(rows) == 18 * 4
        assert {(r[3], r[4]) for r in rows} == {(start, start + timedelta(hours=1))}
        failed = {(c, s) for c, s, passed, _, _ in rows if not passed}
        assert ("silent", SILENT_SENSOR) in failed
        assert ("completeness", scenario["gappy"]) in failed
        assert ("out_of_range", scenario["wild"]) in failed
        alerts = conn.execute(
            "SELECT sensor_id, status FROM alerts WHERE kind = 'sensor_offline'"
        ).fetchall()
        # the gappy loop's 15 silent minutes inside the hour fired and resolved
        assert sorted(alerts) == sorted(
            [(SILENT_SENSOR, "firing"), (scenario["gappy"], "resolved")]
        )


@pytest.mark.integration
def test_retention_compacts_its_day_and_expires_old_dates(dagbag, cityos_env: Path) -> None:
    topic_dir = cityos_env / "environment"
    day = datetime(2014, 1, 15, tzinfo=UTC)
    rows, batch = write_day(topic_dir, day, 0, timedelta(hours=1))
    write_day(topic_dir, day - timedelta(days=1), batch, timedelta(hours=6), first_offset=10_000)
    write_day(
        topic_dir, day - timedelta(days=45), batch + 10, timedelta(hours=6), first_offset=20_000
    )
    target = topic_dir / "date=2014-01-15"
    before = sorted(
        (r["sensor_id"], r["event_time"], r["offset"], r["pm25"])
        for f in lake.data_files(target)
        for r in pq.ParquetFile(f).read().to_pylist()
    )

    run = dagbag.get_dag("retention").test(logical_date=day + timedelta(days=1))

    assert _states(run) == dict.fromkeys(
        ("wait_for_late_data", "compact_lake", "expire_lake"), "success"
    )
    assert [p.name for p in target.iterdir()] == ["batch=-1"]
    after = sorted(
        (r["sensor_id"], r["event_time"], r["offset"], r["pm25"])
        for f in lake.data_files(target)
        for r in pq.ParquetFile(f).read().to_pylist()
    )
    assert len(after) == rows == 288 and after == before
    dates = sorted(p.name for p in topic_dir.iterdir())
    assert dates == ["date=2014-01-14", "date=2014-01-15"]  # 2013-12-01 is past 30 days
    assert len(lake.batch_folders(topic_dir / "date=2014-01-14")) == 4  # not its interval


@pytest.mark.integration
def test_retrain_trains_its_interval_from_the_lake(
    dagbag,
    cityos_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database_url: str,
    pg_schema: str,
    kafka_bootstrap: str,
    topics,
    spark,  # noqa: F811
) -> None:
    day = datetime(2014, 1, 15, tzinfo=UTC)
    end, lookback = day + timedelta(days=1), timedelta(days=14)  # the task's default lookback
    monkeypatch.setenv("CITYOS_TOPIC_PREFIX", topics.prefix)
    settings = stream_settings(
        {
            "database_url": database_url,
            "database_schema": pg_schema,
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": topics.prefix,
            "state_dir": tmp_path / "stream-state",
            "lake_dir": cityos_env,
        }
    )
    stream(settings, spark, end - lookback, end)  # real PRSA readings -> Kafka -> job
    with connect(database_url, pg_schema) as conn:
        expected = read_series(conn, end - lookback, end)
        windows = scalar(conn, "SELECT count(*) FROM air_quality_1h")
        conn.execute("TRUNCATE traffic_5m, air_quality_1h")  # the task reads the lake only
        conn.commit()

    dag = dagbag.get_dag("retrain_anomaly_models")
    # it trains once the day is complete and compacted: after retention's wait and compaction
    assert dag.get_task("retrain").upstream_task_ids == {"wait_for_late_data"}
    assert (
        dag.get_task("wait_for_late_data").delta
        > dagbag.get_dag("retention").get_task("wait_for_late_data").delta
    )
    run = dag.test(logical_date=end)

    assert _states(run) == {"wait_for_late_data": "success", "retrain": "success"}
    assert (run.data_interval_start, run.data_interval_end) == (day, end)
    with connect(database_url, pg_schema) as conn:
        models = conn.execute(
            "SELECT data_start, data_end, metrics, status FROM model_registry"
        ).fetchall()
    assert [(m[0], m[1], m[3]) for m in models] == [(end - lookback, end, "production")]
    metrics = models[0][2]
    assert metrics["series"] == len(expected) and metrics["sensors"] == 12
    read = metrics["read"]
    assert read["source"] == "lake" and read["lake_dir"] == str(cityos_env)
    assert read["windows"] == {"traffic_5m": 0, "air_quality_1h": windows} and windows > 4000
