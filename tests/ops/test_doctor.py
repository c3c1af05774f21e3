"""`cityos doctor` against the real test stack: what is healthy says ok, what is broken says
fail or warn with the command that fixes it; the CLI's table, --json and exit code."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from cityos.db import connect
from cityos.doctor import Finding, Limits, diagnose, summary, worst
from tests.ops.conftest import SENSOR, air_events

pytestmark = pytest.mark.integration


def by_component(findings: list[Finding]) -> dict[str, Finding]:
    return {f.component: f for f in findings}


def _add_station(database_url: str, schema: str) -> None:
    """The Guanyuan station of Beijing (PRSA), as the sensor registry lists it."""
    with connect(database_url, schema) as conn:
        conn.execute(
            "INSERT INTO cities (city_id, name, local_name, timezone, aqi_standard)"
            " VALUES ('beijing', 'Beijing', '北京', 'Asia/Shanghai', 'china_hj633')"
        )
        conn.execute(
            "INSERT INTO sensors (sensor_id, city_id, kind, name, latitude, longitude)"
            " VALUES (%s, 'beijing', 'air_quality', 'Guanyuan', 39.929, 116.339)",
            (SENSOR,),
        )


def _add_air_window(database_url: str, schema: str, end: datetime) -> None:
    with connect(database_url, schema) as conn:
        conn.execute(
            "INSERT INTO air_quality_1h (sensor_id, window_start, window_end, pm25)"
            " VALUES (%s, %s, %s, 12.0)",
            (SENSOR, end - timedelta(hours=1), end),
        )


def delete_topic(bootstrap: str, name: str) -> None:
    """Delete a topic and wait until the broker no longer lists it (deletion is asynchronous)."""
    from cityos.stack import delete_topics
    from cityos.stack.kafka import admin_client

    delete_topics(bootstrap, [name])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with admin_client(bootstrap) as admin:
            if name not in admin.list_topics():
                return
        time.sleep(0.5)
    raise AssertionError(f"{name} still listed a minute after its deletion")


def test_a_running_stack_is_ok_for_broker_topics_and_postgres(ops_settings):
    found = by_component(diagnose(ops_settings))
    for component in ("postgres", "migrations", "kafka", "topics"):
        assert found[component].status == "ok", found[component]
    assert found["migrations"].message.startswith("all ")
    assert "lag " + ops_settings.topic_prefix + "traffic" in found
    assert found["disk state dir"].status in ("ok", "warn")


def test_a_missing_topic_fails_and_the_fix_names_the_command(ops_settings, topics, kafka_bootstrap):
    delete_topic(kafka_bootstrap, topics.control)
    findings = diagnose(ops_settings)
    topic = by_component(findings)["topics"]
    assert topic.status == "fail"
    assert topics.control in topic.message and topics.traffic not in topic.message
    assert "`cityos up`" in (topic.fix or "")
    assert worst(findings) == "fail"
    assert "cityos up" in summary(findings)


def test_a_stale_serving_table_warns_and_a_fresh_one_is_ok(ops_settings, database_url, pg_schema):
    _add_station(database_url, pg_schema)
    now = datetime(2016, 12, 19, 12, 0, tzinfo=UTC)
    _add_air_window(database_url, pg_schema, now - timedelta(hours=1))
    fresh = by_component(diagnose(ops_settings, now=now))["freshness air_quality_1h"]
    assert fresh.status == "ok" and "60 min ago" in fresh.message
    open_ = by_component(diagnose(ops_settings, now=now - timedelta(minutes=80)))
    window = open_["freshness air_quality_1h"]  # the hour 10:00-11:00, asked at 10:40
    assert window.status == "ok" and "still open (it ends in 20 min)" in window.message

    stale = by_component(diagnose(ops_settings, now=now + timedelta(hours=6)))
    assert stale["freshness air_quality_1h"].status == "warn"
    assert "7.0 h ago" in stale["freshness air_quality_1h"].message
    assert stale["freshness traffic_5m"].status == "warn"  # empty: no windows yet
    assert "cityos stream run" in (stale["freshness traffic_5m"].fix or "")


def test_a_stopped_query_with_waiting_messages_fails(
    ops_settings, database_url, pg_schema, topics, produce
):
    from cityos.streaming.jobs.aggregate import query_name

    name = query_name(topics.environment)
    with connect(database_url, pg_schema) as conn:
        conn.execute(
            "INSERT INTO stream_commits (query_name, batch_id, valid_rows, dead_letters,"
            " committed_at) VALUES (%s, 0, 4, 0, now() - interval '1 hour')",
            (name,),
        )
    quiet = by_component(diagnose(ops_settings))[f"query {name}"]
    assert quiet.status == "ok" and "idle" in quiet.message  # nothing waits: an idle query

    produce(topics.environment, air_events(4))
    found = by_component(diagnose(ops_settings, limits=Limits()))
    lag = found[f"lag {topics.environment}"]
    assert lag.status == "warn" and "4 messages waiting" in lag.message
    query = found[f"query {name}"]
    assert query.status == "fail" and "not running" in query.message
    assert "`cityos stream run`" in (query.fix or "")


def _batches(database_url: str, schema: str, name: str, behind: list[int]) -> None:
    """Recent merged batches of a query, each with the backlog its progress report gave."""
    with connect(database_url, schema) as conn:
        for n, left in enumerate(behind):
            conn.execute(
                "INSERT INTO stream_commits (query_name, batch_id, valid_rows, dead_letters,"
                " committed_at, batch_started_at, batch_duration_ms, offsets_behind)"
                " VALUES (%s, %s, 100000, 0, now() - make_interval(secs => %s),"
                "  now() - make_interval(secs => %s), 9000, %s)",
                (name, n, 10 * (len(behind) - n), 10 * (len(behind) - n) + 9, left),
            )


def test_a_query_whose_backlog_grows_batch_after_batch_is_falling_behind(
    ops_settings, database_url, pg_schema, topics
):
    from cityos.streaming.jobs.aggregate import query_name

    traffic, air = query_name(topics.traffic), query_name(topics.environment)
    _batches(database_url, pg_schema, traffic, [20_000, 35_000, 52_000, 70_000, 91_000])
    _batches(database_url, pg_schema, air, [20_000, 35_000, 0, 70_000, 91_000])  # caught up once
    found = by_component(diagnose(ops_settings))
    behind = found[f"throughput {traffic}"]
    assert behind.status == "warn" and "falling behind" in behind.message
    assert "20000 -> 91000" in behind.message and "9.0 s" in behind.message
    assert "cores" in (behind.fix or "")
    assert found[f"throughput {air}"].status == "ok"


def test_unreachable_services_fail_and_dependent_checks_say_not_checked(ops_settings):
    broken = ops_settings.model_copy(
        update={
            "kafka_bootstrap": "127.0.0.1:9",
            "database_url": ops_settings.database_url.__class__(
                "postgresql://cityos@127.0.0.1:9/cityos"
            ),
        }
    )
    found = by_component(diagnose(broken, limits=Limits(timeout_s=2.0)))
    assert found["postgres"].status == "fail" and "cityos up" in (found["postgres"].fix or "")
    assert found["kafka"].status == "fail"
    assert found["topics"].status == "warn" and "not checked" in found["topics"].message
    assert found["streaming"].status == "warn"


def test_a_production_model_whose_folder_is_gone_fails(ops_settings, database_url, pg_schema):
    with connect(database_url, pg_schema) as conn:
        conn.execute(
            "INSERT INTO model_registry (family, version, path, status, metrics)"
            " VALUES ('anomaly', 'v-gone', %s, 'production', '{}')",
            (str(ops_settings.state_dir / "models" / "v-gone"),),
        )
    model = by_component(diagnose(ops_settings))["anomaly model"]
    assert model.status == "fail" and "v-gone" in model.message


def test_the_cli_prints_json_and_exits_1_on_a_failure(
    ops_settings, topics, kafka_bootstrap, monkeypatch
):
    from cityos.cli import doctor as doctor_cli
    from cityos.settings import get_settings

    s = ops_settings
    for name, value in {
        "CITYOS_STATE_DIR": str(s.state_dir),
        "CITYOS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "CITYOS_DATABASE_URL": s.database_url.get_secret_value(),
        "CITYOS_DATABASE_SCHEMA": s.database_schema,
        "CITYOS_TOPIC_PREFIX": s.topic_prefix,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    import typer

    app = typer.Typer()
    doctor_cli.register(app)
    app.command("noop")(lambda: None)  # two commands: `doctor` stays a sub-command
    runner = CliRunner()
    try:
        ok = runner.invoke(app, ["doctor", "--json"])
        delete_topic(kafka_bootstrap, topics.alerts)
        bad = runner.invoke(app, ["doctor", "--json"])
        table = runner.invoke(app, ["doctor"])
    finally:
        get_settings.cache_clear()
    assert ok.exit_code == 0, ok.output
    body = json.loads(ok.output)
    assert body["status"] in ("ok", "warn") and body["summary"].startswith("The platform")
    assert {"component", "status", "message", "fix"} <= set(body["findings"][0])
    assert bad.exit_code == 1
    assert json.loads(bad.output)["status"] == "fail"
    assert table.exit_code == 1 and "CityOS doctor" in table.output and "cityos up" in table.output


def test_an_airflow_api_server_that_does_not_answer_fails(ops_settings):
    found = by_component(
        diagnose(ops_settings, airflow_url="http://127.0.0.1:9", limits=Limits(timeout_s=2.0))
    )
    assert found["airflow api"].status == "fail"
    assert "cityos airflow standalone" in (found["airflow api"].fix or "")
