"""'Is the pipeline healthy?': the NL-query service answers with the doctor's diagnosis.

The real pipeline (trained model, Spark, the evaluation fixture database) and the real doctor
against the test stack: the rows of the answer are the doctor's findings, the sentence is its
verdict, and a question about one part of the platform is focused on it. A doctor pointed at a
broker that is not there shows that the answer follows what the checks find.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from cityos.doctor import Finding, diagnose, summary
from cityos.nlq import health
from cityos.nlq.guard import SERVING_TABLES, check_sql
from cityos.nlq.reply import Answer
from cityos.settings import Settings
from tests.nlq.service_tools import Tokens

if TYPE_CHECKING:
    from cityos.nlq.execute import SparkExecutor
    from cityos.nlq.pipeline import NLQPipeline

AS_OF = datetime(2016, 12, 19, 8, 0, tzinfo=UTC)

HEALTH_QUESTIONS = [
    "Is the pipeline healthy?",
    "is everything ok with the platform?",
    "Why are the dashboards stale?",
    "Is Kafka up?",
    "has the streaming job crashed?",
    "any problems with the ingestion",
    "run a health check",
]
NOT_HEALTH = [
    ("Which sensors have a firing alert?", "alerts"),
    ("What is the average speed in Nippes right now?", "aggregate"),
    ("Show the audit log", "restricted"),
]


# ---- the vocabulary (no services) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "focus"),
    [
        ("Is the pipeline healthy?", ()),
        ("Is Kafka up?", ("kafka",)),
        ("is postgres running", ("database",)),
        ("Why are the dashboards stale?", ("freshness",)),
        ("how far behind is the stream?", ("kafka", "streaming")),
        ("is the disk full?", ("disk",)),
        ("are the models deployed?", ("models",)),
        ("is Airflow alive", ("airflow",)),
    ],
)
def test_a_question_is_focused_on_the_parts_it_names(question: str, focus: tuple[str, ...]) -> None:
    assert health.focus_of(question) == focus


def test_every_component_the_doctor_reports_belongs_to_an_area() -> None:
    components = [
        "postgres", "migrations", "kafka", "topics", "consumer lag", "lag cityos.traffic",
        "streaming", "supervisor", "query aggregate-traffic", "throughput aggregate-traffic",
        "freshness traffic_5m", "freshness air_quality_1h", "sensors traffic_5m", "airflow",
        "airflow api", "disk state", "disk lake", "nlq model", "anomaly model",
    ]  # fmt: skip
    assert [c for c in components if health.area_of(c) == "other"] == []


@pytest.mark.integration
def test_every_component_of_a_real_diagnosis_belongs_to_an_area(nlq_settings: Settings) -> None:
    found = diagnose(nlq_settings)
    assert found and [f.component for f in found if health.area_of(f.component) == "other"] == []


@pytest.mark.parametrize("focus", [(), ("kafka",), ("freshness", "disk")])
def test_the_query_passes_the_guard_with_the_view_and_nothing_else(focus: tuple[str, ...]) -> None:
    sql = health.query(focus)
    view = {health.VIEW: frozenset(health.COLUMNS)}
    assert check_sql(sql, view, 100)
    with pytest.raises(Exception, match="pipeline_health"):
        check_sql(sql, SERVING_TABLES, 100)  # the serving tables alone do not have it


# ---- the real pipeline ------------------------------------------------------------------------


class Recorder:
    """The doctor, remembering what it found each time the pipeline asked."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls: list[list[Finding]] = []

    def __call__(self) -> list[Finding]:
        found = diagnose(self.settings)
        self.calls.append(found)
        return found


@pytest.fixture(scope="module")
def pipeline(nlq_settings: Settings, spark_executor: SparkExecutor) -> NLQPipeline:
    from cityos.nlq.pipeline import NLQPipeline

    return NLQPipeline.from_settings(nlq_settings, executor=spark_executor)


def _with_doctor(pipeline: NLQPipeline, doctor: Callable[[], list[Finding]]) -> NLQPipeline:
    from cityos.nlq.pipeline import NLQPipeline

    return NLQPipeline(
        pipeline.model, pipeline.catalog, pipeline.executor, pipeline.model_dir, diagnose=doctor
    )


@pytest.mark.integration
@pytest.mark.parametrize("question", HEALTH_QUESTIONS)
def test_the_model_reads_health_questions_as_health(pipeline: NLQPipeline, question: str) -> None:
    assert pipeline.understand(question, AS_OF).intent == "health"


@pytest.mark.integration
@pytest.mark.parametrize(("question", "intent"), NOT_HEALTH)
def test_other_questions_stay_what_they_were(
    pipeline: NLQPipeline, question: str, intent: str
) -> None:
    assert pipeline.understand(question, AS_OF).intent == intent


@pytest.mark.integration
def test_the_answer_is_the_doctors_diagnosis(pipeline: NLQPipeline, nlq_settings: Settings) -> None:
    doctor = Recorder(nlq_settings)
    reply = _with_doctor(pipeline, doctor).ask("Is the pipeline healthy?", AS_OF)
    assert isinstance(reply, Answer), reply
    findings = doctor.calls[-1]
    assert reply.columns == list(health.COLUMNS)
    assert "pipeline_health" in reply.sql
    got = sorted(tuple(r) for r in reply.rows)
    want = sorted(
        (health.area_of(f.component), f.component, f.status, f.message, f.fix) for f in findings
    )
    assert got == want
    order = [{"fail": 0, "warn": 1, "ok": 2}[r[2]] for r in reply.rows]
    assert order == sorted(order)  # worst first
    assert reply.answer == summary(findings)
    assert "whole platform" in reply.interpretation


@pytest.mark.integration
def test_a_broker_that_is_not_there_is_what_the_answer_says(
    pipeline: NLQPipeline, nlq_settings: Settings
) -> None:
    down = nlq_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:9"})  # discard port
    doctor = Recorder(down)
    reply = _with_doctor(pipeline, doctor).ask("Is Kafka up?", AS_OF)
    assert isinstance(reply, Answer), reply
    assert reply.answer.startswith("Kafka: failing")
    areas = {r[0] for r in reply.rows}
    components = {r[1] for r in reply.rows}
    assert areas <= {"kafka", "streaming"} and "kafka" in components
    kafka = next(r for r in reply.rows if r[1] == "kafka")
    assert kafka[2] == "fail" and "127.0.0.1:9" in kafka[3]
    assert reply.rows[0][2] == "fail"


@pytest.mark.integration
def test_a_viewer_asks_through_the_api_and_gets_the_contracts_answer(
    pipeline: NLQPipeline, nlq_settings: Settings, database_url: str, pg_schema: str
) -> None:
    from cityos.nlq.service import create_app

    settings = nlq_settings.model_copy(
        update={"database_url": SecretStr(database_url), "database_schema": pg_schema}
    )  # the service's own tables (tokens, audit) in this test's schema
    tokens = Tokens(database_url, pg_schema)
    with TestClient(create_app(settings, answerer=pipeline)) as client:
        reply = client.post(
            "/api/v1/ask",
            json={"question": "is the platform healthy?"},
            headers=tokens.header("viewer", "vera"),
        )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["kind"] == "answer"
    assert set(body) >= {"sql", "columns", "rows", "answer", "interpretation"}
    assert body["columns"] == list(health.COLUMNS)
    assert body["rows"] and body["sql"].lower().startswith("select")
