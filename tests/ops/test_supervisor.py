"""The supervisor: restarts with exponential back-off, an alert when the pipeline keeps failing,
resolved once it runs again; against the real pipeline (a lost checkpoint) and PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from cityos import metrics
from cityos.db import connect
from cityos.streaming.jobs.errors import StreamingJobError
from cityos.streaming.supervisor import Backoff, Supervisor, raise_pipeline_alert
from tests.sql import scalar

FAST = Backoff(initial_s=0.01, factor=2.0, max_s=0.04)


def test_backoff_doubles_up_to_its_ceiling():
    backoff = Backoff(initial_s=5, factor=2, max_s=60)
    assert [backoff.delay(n) for n in range(0, 7)] == [0, 5, 10, 20, 40, 60, 60]


class Flaky:
    """A pipeline that fails ``failures`` times, then runs until asked to stop."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict] = []
        self.running = threading.Event()

    def __call__(self, settings, **kwargs) -> None:
        self.calls.append(kwargs)
        if len(self.calls) <= self.failures:
            raise RuntimeError(f"boom {len(self.calls)}")
        self.running.set()
        kwargs["stop_event"].wait()


def test_a_failing_pipeline_is_restarted_with_backoff_until_it_runs(tmp_path):
    from cityos.settings import load_settings

    settings = load_settings(
        state_dir=tmp_path, kafka_bootstrap="127.0.0.1:9", database_url="postgresql://x@h/db"
    )
    run = Flaky(failures=3)
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    supervisor = Supervisor(
        settings, run, backoff=Backoff(0.01, 2, 1.0), max_failures=99, wait=wait
    )
    restarts0 = metrics.REGISTRY.get_sample_value("cityos_supervisor_restarts_total")
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    assert run.running.wait(30)
    supervisor.stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert len(run.calls) == 4
    assert all(c["until"] == "stopped" and c["stop_event"] is supervisor.stop for c in run.calls)
    assert waits == [0.01, 0.02, 0.04]
    assert metrics.REGISTRY.get_sample_value("cityos_supervisor_restarts_total") == restarts0 + 3
    assert supervisor.alert_ids == []


def _add_city(database_url: str, schema: str) -> None:
    with connect(database_url, schema) as conn:
        conn.execute(
            "INSERT INTO cities (city_id, name, local_name, timezone, aqi_standard)"
            " VALUES ('beijing', 'Beijing', '北京', 'Asia/Shanghai', 'china_hj633')"
        )


def _alerts(database_url: str, schema: str) -> list[tuple]:
    with connect(database_url, schema) as conn:
        return conn.execute(
            "SELECT a.alert_id, a.kind, a.severity, a.status, a.value, a.message,"
            " o.published_at IS NOT NULL FROM alerts a JOIN alert_outbox o USING (alert_id)"
            " ORDER BY o.seq"
        ).fetchall()


@pytest.mark.integration
def test_the_real_pipeline_failing_is_retried_then_alerted(
    ops_settings,
    database_url,
    pg_schema,
    spark,
):
    """A lost checkpoint (stream_commits rows but no checkpoint folder) makes run_pipeline
    refuse to start: a failure no restart fixes, so the alert must come."""
    from cityos.streaming.jobs.aggregate import query_name
    from cityos.topics import Topics

    _add_city(database_url, pg_schema)
    with connect(database_url, pg_schema) as conn:
        conn.execute(
            "INSERT INTO stream_commits (query_name, batch_id, valid_rows, dead_letters)"
            " VALUES (%s, 0, 10, 0)",
            (query_name(Topics(ops_settings.topic_prefix).traffic),),
        )
    supervisor = Supervisor(
        ops_settings, backoff=FAST, max_failures=3, window_s=600, max_restarts=2
    )
    with pytest.raises(StreamingJobError, match="has no checkpoint"):
        supervisor.run()
    assert supervisor.restarts == 2 and len(supervisor.failures) == 3

    alerts = _alerts(database_url, pg_schema)
    assert len(alerts) == 1
    alert_id, kind, severity, status, value, message, published = alerts[0]
    assert alert_id.startswith("pipeline_failing:beijing:")
    assert (kind, severity, status, value) == ("manual", "critical", "firing", 3.0)
    assert "failed 3 times" in message and "has no checkpoint" in message
    assert "cityos doctor" in message
    assert published  # the outbox went to the alerts topic of the test's prefix


@pytest.mark.integration
def test_the_alert_is_raised_once_and_resolved_when_the_pipeline_runs_again(
    ops_settings, database_url, pg_schema
):
    _add_city(database_url, pg_schema)
    run = Flaky(failures=4)
    supervisor = Supervisor(
        ops_settings, run, backoff=FAST, max_failures=2, window_s=600, healthy_after_s=1.0
    )
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        assert run.running.wait(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = _alerts(database_url, pg_schema)
            if rows and rows[0][3] == "resolved":
                break
            time.sleep(0.2)
    finally:
        supervisor.stop.set()
        thread.join(30)
    with connect(database_url, pg_schema) as conn:
        statuses = conn.execute("SELECT status FROM alerts").fetchall()
        events = conn.execute("SELECT payload FROM alert_outbox ORDER BY seq").fetchall()
    assert statuses == [("resolved",)]  # four failures, one alert
    assert [b'"type":"firing"' in bytes(p[0]) for p in events] == [True, False]
    assert b'"type":"resolved"' in bytes(events[1][0])


def _left_by_an_earlier_supervisor(settings) -> str:
    """An open pipeline alert, raised an hour ago by a supervisor process that is gone."""
    [alert_id] = raise_pipeline_alert(
        settings,
        failures=5,
        threshold=5,
        message="The streaming pipeline failed 5 times in 15 minutes",
        now=datetime.now(UTC) - timedelta(hours=1),
    )
    return alert_id


def _wait_resolved_and_published(database_url: str, schema: str, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        rows = _alerts(database_url, schema)
        if [(r[3], r[6]) for r in rows] == [("resolved", True), ("resolved", True)]:
            return
        time.sleep(0.1)


@pytest.mark.integration
def test_an_alert_left_by_an_earlier_supervisor_resolves_once_the_pipeline_is_healthy(
    ops_settings, database_url, pg_schema
):
    _add_city(database_url, pg_schema)
    alert_id = _left_by_an_earlier_supervisor(ops_settings)
    run = Flaky(failures=0)
    supervisor = Supervisor(ops_settings, run, backoff=FAST, healthy_after_s=0.3)
    assert supervisor.alert_ids == []  # a new process: it never raised that alert
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        assert run.running.wait(30)
        _wait_resolved_and_published(database_url, pg_schema)
    finally:
        supervisor.stop.set()
        thread.join(30)
    assert not thread.is_alive()

    rows = _alerts(database_url, pg_schema)  # one row per outbox event, each published
    assert [(r[0], r[3], r[6]) for r in rows] == [(alert_id, "resolved", True)] * 2
    with connect(database_url, pg_schema) as conn:
        events = conn.execute("SELECT payload FROM alert_outbox ORDER BY seq").fetchall()
        resolved_at = scalar(
            conn, "SELECT resolved_at FROM alerts WHERE alert_id = %s", (alert_id,)
        )
    assert [b'"type":"resolved"' in bytes(p[0]) for p in events] == [False, True]
    assert resolved_at is not None


@pytest.mark.integration
def test_resolving_is_tried_again_until_postgresql_answers(
    ops_settings, database_url, pg_schema, caplog
):
    _add_city(database_url, pg_schema)
    _left_by_an_earlier_supervisor(ops_settings)
    away = ops_settings.model_copy(  # nothing listens on port 9
        update={"database_url": SecretStr("postgresql://cityos@127.0.0.1:9/cityos")}
    )
    supervisor = Supervisor(away, Flaky(failures=0), backoff=FAST, healthy_after_s=0.3)
    caplog.set_level(logging.ERROR)
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
            "not resolved" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.05)
        assert any("not resolved" in r.getMessage() for r in caplog.records)
        supervisor.settings = ops_settings  # PostgreSQL answers again
        _wait_resolved_and_published(database_url, pg_schema)
    finally:
        supervisor.stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert [(r[3], r[6]) for r in _alerts(database_url, pg_schema)] == [("resolved", True)] * 2


@pytest.mark.integration
def test_a_supervised_real_pipeline_runs_reports_metrics_and_stops_on_request(
    ops_settings, database_url, pg_schema, topics, produce, spark
):
    """The supervisor's own run: run_pipeline live, the metrics listener attached; five real
    readings are merged, the doctor sees the query healthy, and stop ends it without restart."""
    from cityos.doctor import diagnose
    from cityos.streaming.jobs.aggregate import query_name
    from tests.ops.conftest import air_events
    from tests.ops.test_doctor import _add_station, by_component

    _add_station(database_url, pg_schema)
    settings = ops_settings.model_copy(update={"score_windows": False, "trigger_seconds": 1.0})
    name = query_name(topics.environment)
    produce(topics.environment, air_events(5))
    supervisor = Supervisor.from_settings(settings, backoff=FAST, max_restarts=0)
    thread = threading.Thread(target=supervisor.run)
    thread.start()

    def merged() -> int:
        with connect(database_url, pg_schema) as conn:
            return scalar(
                conn,
                "SELECT coalesce(sum(valid_rows), 0) FROM stream_commits WHERE query_name = %s",
                (name,),
            )

    def input_rows() -> float:
        got = metrics.REGISTRY.get_sample_value("cityos_stream_input_rows_total", {"query": name})
        return got or 0.0

    try:
        deadline = time.monotonic() + 180  # Spark starts two queries on two cores
        while (merged() < 5 or input_rows() < 5) and time.monotonic() < deadline:
            assert thread.is_alive(), "the supervised pipeline ended"
            time.sleep(0.5)
        assert merged() == 5 and input_rows() == 5
        found = by_component(diagnose(settings))
        assert found[f"query {name}"].status == "ok"
        assert found[f"lag {topics.environment}"].message.endswith(
            f"0 messages behind on {topics.environment}"
        )
    finally:
        supervisor.stop.set()
        thread.join(120)
    assert not thread.is_alive()
    assert supervisor.restarts == 0 and not supervisor.failures

    def active() -> float | None:
        return metrics.REGISTRY.get_sample_value("cityos_stream_query_active", {"query": name})

    deadline = time.monotonic() + 30  # Spark's listener bus reports the stop asynchronously
    while active() != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert active() == 0
