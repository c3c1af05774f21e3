"""SparkExecutor: Spark SQL over JDBC views of the serving tables answers like PostgreSQL itself.

The gold SQL of the development questions (PostgreSQL, written by the evaluation team) is
transpiled to Spark SQL by sqlglot and run through the executor; its rows must equal what
psycopg gets for the gold SQL, compared the way the kit's evaluate.py compares them. That proves
the JDBC views and every push-down (filters, aggregates, joins, top-N) faithful on the shapes the
service generates. Refused SQL must never reach Spark; a query over its budget is cancelled.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import time
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import sqlglot

from cityos.nlq.errors import NLQError, SQLValidationError
from cityos.nlq.execute import (
    QueryExecutionError,
    QueryTimeoutError,
    SparkExecutor,
    to_json_scalar,
)
from cityos.nlq.guard import SERVING_TABLES
from cityos.settings import SHARED_DIR

KIT = SHARED_DIR / "nlq"
QUESTIONS = [
    json.loads(line)
    for line in (KIT / "dev-questions.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]
ANSWERS = [q for q in QUESTIONS if q["kind"] == "answer"]


def _load_evaluate() -> ModuleType:
    """The kit's evaluate.py by path (a script, not a package): its comparison is the bar."""
    spec = importlib.util.spec_from_file_location("nlq_evaluate", Path(KIT / "evaluate.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


evaluate = _load_evaluate()


def gold_rows(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        return [tuple(evaluate.norm(v) for v in row) for row in conn.execute(sql).fetchall()]


def _active_statements(database_url: str, application_name: str) -> int:
    """Statements PostgreSQL runs for the executor, once cancelled ones had up to 10 s to end
    (a cancel is a signal to the backend: not a timing assertion, a bounded wait)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in range(50):
            (active,) = conn.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND state = 'active'",
                (application_name,),
            ).fetchone() or (0,)
            if active == 0:
                break
            time.sleep(0.2)
    return int(active)


# ----------------------------------------------------------------------------------------------
# JSON values (no Spark)
# ----------------------------------------------------------------------------------------------
def test_json_scalars() -> None:
    instant = dt.datetime(2016, 12, 19, 7, 55, tzinfo=dt.UTC)
    assert to_json_scalar(instant) == "2016-12-19T07:55:00Z"
    assert to_json_scalar(instant.replace(microsecond=250000)) == "2016-12-19T07:55:00.250000Z"
    # PySpark hands TimestampType values over as naive datetimes in the process's local time
    assert to_json_scalar(instant.astimezone().replace(tzinfo=None)) == "2016-12-19T07:55:00Z"
    assert to_json_scalar(dt.datetime(2016, 12, 19, 7, 55), naive_is_utc=True).endswith("07:55:00Z")
    assert to_json_scalar(dt.date(2016, 12, 19)) == "2016-12-19"
    assert to_json_scalar(Decimal("23.400")) == 23.4
    assert to_json_scalar(Decimal("NaN")) is None
    assert to_json_scalar(float("nan")) is None
    assert to_json_scalar(float("-inf")) is None
    assert to_json_scalar(dt.timedelta(minutes=5)) == 300.0
    assert to_json_scalar([1, Decimal("2.5"), None]) == "[1, 2.5, null]"
    assert to_json_scalar(True) is True
    assert to_json_scalar("Köln") == "Köln"


# ----------------------------------------------------------------------------------------------
# integration: the test stack's PostgreSQL with the evaluation fixture, a local Spark
# ----------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_views_expose_exactly_the_contract_columns(spark_executor: SparkExecutor) -> None:
    assert set(spark_executor.columns) == set(SERVING_TABLES)
    for table, columns in spark_executor.columns.items():
        assert set(columns) == SERVING_TABLES[table], table
    assert spark_executor.spark.conf.get("spark.sql.session.timeZone") == "UTC"


@pytest.mark.integration
@pytest.mark.parametrize("question", ANSWERS, ids=[q["id"] for q in ANSWERS])
def test_gold_sql_through_spark_equals_postgres(
    question: dict[str, Any], spark_executor: SparkExecutor, nlq_database_url: str
) -> None:
    spark_sql = sqlglot.transpile(question["gold_sql"], read="postgres", write="spark")[0]
    result = spark_executor.run(spark_sql, max_rows=10_000, timeout_s=120)

    gold = gold_rows(nlq_database_url, question["gold_sql"])
    pred = [tuple(evaluate.norm(v) for v in row) for row in result.rows]
    ok, diff = evaluate.compare_results(
        gold, pred, bool(question.get("ordered")), strict_columns=True
    )
    assert ok, f"{question['id']}: {diff}\nspark: {result.sql}"
    assert len(result.columns) == len(result.rows[0]) if result.rows else True
    json.dumps(result.rows, allow_nan=False)


# Shapes the compiler emits beyond the gold queries: (id, Spark SQL, PostgreSQL SQL or None for
# the same text, ordered). Local days go through from_utc_timestamp, which PostgreSQL lacks.
SHAPES = [
    (
        "local-day buckets",
        "SELECT TO_DATE(FROM_UTC_TIMESTAMP(t.window_start, 'Europe/Berlin')) AS day,"
        " SUM(t.vehicle_count) AS n FROM traffic_5m t WHERE t.sensor_id = 'cologne-tr-08'"
        " GROUP BY TO_DATE(FROM_UTC_TIMESTAMP(t.window_start, 'Europe/Berlin'))",
        "SELECT (t.window_start AT TIME ZONE 'Europe/Berlin')::date AS day,"
        " SUM(t.vehicle_count) AS n FROM traffic_5m t WHERE t.sensor_id = 'cologne-tr-08'"
        " GROUP BY 1",
        False,
    ),
    (
        "district roll-up (LEFT JOIN, COALESCE)",
        "SELECT COALESCE(pz.name, z.name) AS district, AVG(t.avg_speed_kmh) AS v"
        " FROM traffic_5m t JOIN sensors s ON s.sensor_id = t.sensor_id"
        " JOIN zones z ON z.zone_id = s.zone_id LEFT JOIN zones pz ON pz.zone_id = z.parent_zone_id"
        " WHERE s.city_id = 'cologne' AND t.window_start >= '2016-12-19 06:00:00+00:00'"
        " AND t.window_end <= '2016-12-19 09:00:00+00:00' GROUP BY COALESCE(pz.name, z.name)",
        None,
        False,
    ),
    (
        "zone tree (IN subquery)",
        "SELECT AVG(t.avg_speed_kmh) AS v FROM traffic_5m t JOIN sensors s"
        " ON s.sensor_id = t.sensor_id WHERE (s.zone_id = 'cologne-stb-5' OR s.zone_id IN"
        " (SELECT zone_id FROM zones WHERE parent_zone_id = 'cologne-stb-5'))"
        " AND t.window_start >= '2016-12-19 16:00:00+00:00'"
        " AND t.window_end <= '2016-12-19 17:00:00+00:00'",
        None,
        False,
    ),
    (
        "latest window of a table (scalar subquery)",
        "SELECT s.name, t.congestion_index FROM traffic_5m t JOIN sensors s"
        " ON s.sensor_id = t.sensor_id WHERE t.window_end = (SELECT MAX(window_end)"
        " FROM traffic_5m WHERE window_end <= '2016-12-19 07:55:00+00:00')",
        None,
        False,
    ),
    (
        "top-N with NULLs",
        "SELECT s.name, AVG(a.pm25) AS v FROM air_quality_1h a JOIN sensors s"
        " ON s.sensor_id = a.sensor_id WHERE a.window_start >= '2016-12-19 16:00:00+00:00'"
        " AND a.window_start < '2016-12-20 16:00:00+00:00' GROUP BY s.name"
        " ORDER BY AVG(a.pm25) DESC NULLS LAST, s.name LIMIT 3",
        None,
        True,
    ),
    (
        "timestamps out, ordered",
        "SELECT t.window_start, t.window_end, t.occupancy FROM traffic_5m t"
        " WHERE t.sensor_id = 'cologne-tr-03' AND t.window_start >= '2016-12-19 20:00:00+00:00'"
        " AND t.window_start < '2016-12-19 21:00:00+00:00' ORDER BY t.window_start",
        None,
        True,
    ),
]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("spark_sql", "pg_sql", "ordered"),
    [shape[1:] for shape in SHAPES],
    ids=[shape[0] for shape in SHAPES],
)
def test_compiler_shapes_through_spark_equal_postgres(
    spark_sql: str,
    pg_sql: str | None,
    ordered: bool,
    spark_executor: SparkExecutor,
    nlq_database_url: str,
) -> None:
    result = spark_executor.run(spark_sql, max_rows=10_000, timeout_s=120)
    gold = gold_rows(nlq_database_url, pg_sql or spark_sql)
    assert gold, "a shape that selects nothing proves nothing"
    pred = [tuple(evaluate.norm(v) for v in row) for row in result.rows]
    ok, diff = evaluate.compare_results(gold, pred, ordered, strict_columns=True)
    assert ok, diff


@pytest.mark.integration
def test_scalars_are_json(spark_executor: SparkExecutor, nlq_database_url: str) -> None:
    result = spark_executor.run(
        "SELECT t.window_start, CAST(t.window_start AS DATE) AS day,"
        " CAST(t.occupancy AS DECIMAL(10, 4)) AS occ, CAST('NaN' AS DOUBLE) AS nan,"
        " t.avg_speed_kmh, t.vehicle_count, t.vehicle_count > 0 AS moving"
        " FROM traffic_5m t WHERE t.sensor_id = 'cologne-tr-13'"
        " AND t.window_start = '2016-12-19 07:50:00+00:00'",
        max_rows=10,
        timeout_s=60,
    )
    text = json.dumps(result.rows, allow_nan=False)  # NaN would make this raise
    assert result.columns == [
        "window_start", "day", "occ", "nan", "avg_speed_kmh", "vehicle_count", "moving"
    ]  # fmt: skip
    [[start, day, occ, nan, speed, count, moving]] = json.loads(text)
    assert start == "2016-12-19T07:50:00Z"
    assert day == "2016-12-19"
    assert nan is None
    assert isinstance(occ, float) and isinstance(count, int) and isinstance(moving, bool)
    [(pg_occ, pg_speed, pg_count)] = gold_rows(
        nlq_database_url,
        "SELECT round(occupancy::numeric, 4), avg_speed_kmh, vehicle_count FROM traffic_5m"
        " WHERE sensor_id = 'cologne-tr-13' AND window_start = '2016-12-19 07:50:00+00'",
    )
    assert (occ, speed, count) == (pg_occ, pg_speed, pg_count)


@pytest.mark.integration
def test_limit_is_clamped_to_max_rows(spark_executor: SparkExecutor) -> None:
    result = spark_executor.run("SELECT sensor_id FROM sensors ORDER BY sensor_id", 5, 60)
    assert len(result.rows) == 5
    assert result.truncated
    assert result.sql.endswith("LIMIT 5")
    assert result.rows[0] == ["beijing-aq-aotizhongxin"]


@pytest.mark.integration
@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE traffic_5m",
        "INSERT INTO alerts (alert_id) VALUES ('x')",
        "DELETE FROM sensors",
        "SELECT name FROM cities; DROP TABLE cities",
        "SELECT name FROM schema_migrations",  # a table of the database, not a serving table
        "SELECT valid_rows FROM stream_commits",
        "SELECT name FROM public.cities",  # qualified: could reach the JDBC catalog itself
        "SELECT * FROM cities",
        "SELECT id FROM range(10)",
        "SELECT reflect('java.lang.System', 'exit', 0)",
    ],
)
def test_guard_refusals_never_reach_spark(
    sql: str, spark_executor: SparkExecutor, nlq_database_url: str
) -> None:
    before = spark_executor.statements_run
    with pytest.raises(SQLValidationError):
        spark_executor.run(sql, max_rows=10, timeout_s=60)
    assert spark_executor.statements_run == before
    with psycopg.connect(nlq_database_url) as conn:  # and nothing changed where it points
        assert conn.execute("SELECT COUNT(*) FROM sensors").fetchone() == (39,)
        assert conn.execute("SELECT COUNT(*) FROM traffic_5m").fetchone() == (15546,)


@pytest.mark.integration
def test_spark_failure_is_an_nlq_error(spark_executor: SparkExecutor) -> None:
    """SQL the guard passes but Spark fails (ANSI cast of a name to a number): a clear error."""
    with pytest.raises(QueryExecutionError) as info:
        spark_executor.run("SELECT CAST(name AS INT) FROM cities", max_rows=10, timeout_s=60)
    assert isinstance(info.value, NLQError)
    assert "An error occurred while calling" not in info.value.problem
    assert spark_executor.run("SELECT COUNT(*) FROM cities", 10, 60).rows == [[2]]


@pytest.mark.integration
def test_the_jdbc_connections_cannot_write_even_past_the_guard(
    spark_executor: SparkExecutor, nlq_database_url: str
) -> None:
    """Spark SQL run straight on the session (no guard) still cannot change a serving table:
    PostgreSQL holds the catalog's connections read-only."""
    table = f"{spark_executor._catalog}.`{spark_executor._schema}`.cities"
    try:
        with pytest.raises(Exception, match="read-only transaction"):
            spark_executor.spark.sql(
                f"INSERT INTO {table} VALUES ('x', 'X', 'X', 'UTC', 'eu_eaqi')"  # noqa: S608
            ).collect()
    finally:  # the fixture database is shared by the whole run (and cached): leave it as it was
        with psycopg.connect(nlq_database_url, autocommit=True) as conn:
            written = conn.execute("DELETE FROM cities WHERE city_id = 'x'").rowcount
    assert written == 0


@pytest.mark.integration
def test_timeout_cancels_spark_and_the_session_still_answers(
    spark_executor: SparkExecutor,
) -> None:
    # a cross join is not pushed down: Spark computes 15,546^3 rows, far beyond any budget
    heavy = (
        "SELECT COUNT(*) FROM traffic_5m a CROSS JOIN traffic_5m b CROSS JOIN traffic_5m c"
        " WHERE a.vehicle_count + b.vehicle_count + c.vehicle_count >= 0"
    )
    with pytest.raises(QueryTimeoutError) as info:
        spark_executor.run(heavy, max_rows=10, timeout_s=1.0)
    assert isinstance(info.value, NLQError)
    assert spark_executor.run("SELECT COUNT(*) FROM zones", 10, 60).rows == [[112]]


@pytest.mark.integration
def test_timeout_cancels_a_statement_pushed_down_to_postgres(
    spark_executor: SparkExecutor, nlq_database_url: str
) -> None:
    # an inner join with a condition and COUNT(*) is pushed down whole: PostgreSQL does the work
    heavy = (
        "SELECT COUNT(*) FROM traffic_5m a JOIN traffic_5m b ON a.sensor_id <> b.sensor_id"
        " JOIN traffic_5m c ON b.sensor_id <> c.sensor_id"
    )
    with pytest.raises(QueryTimeoutError):
        spark_executor.run(heavy, max_rows=10, timeout_s=1.0)
    assert _active_statements(nlq_database_url, spark_executor.application_name) == 0
    assert spark_executor.run("SELECT COUNT(*) FROM cities", 10, 60).rows == [[2]]
