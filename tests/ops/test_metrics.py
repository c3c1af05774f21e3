"""Prometheus metrics: real scrapes (HTTP server, the service's /metrics) that change with real
events (producer deliveries, a Spark query's progress, questions to the service)."""

from __future__ import annotations

import time
import urllib.request

import pytest

from cityos import metrics
from cityos.metrics import source_lag
from tests.integration import test_control as control_tests
from tests.nlq import service_tools
from tests.ops.conftest import air_events, sample

# the service's fixtures (tests/nlq/service_tools.py)
answerer, client, service_settings, tokens = (
    service_tools.answerer,
    service_tools.client,
    service_tools.service_settings,
    service_tools.tokens,
)
# the control test's fixtures: the SUMO twin, its control loop, the action service, operators
actuator, control_settings, loop, people, prepared, service, sim = (
    control_tests.actuator,
    control_tests.control_settings,
    control_tests.loop,
    control_tests.people,
    control_tests.prepared,
    control_tests.service,
    control_tests.sim,
)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:  # noqa: S310
        assert reply.status == 200
        return reply.read().decode()


@pytest.fixture
def server():
    started = metrics.serve_metrics(0, addr="127.0.0.1")
    yield started
    started.shutdown()


def test_no_port_means_no_server():
    assert metrics.serve_metrics(None) is None


def test_source_lag_sums_partitions_behind_latest():
    end = '{"t.traffic": {"0": 10, "1": 4}}'
    latest = '{"t.traffic": {"0": 12, "1": 4, "2": 3}}'
    assert source_lag(end, latest) == {"t.traffic": 5}
    assert source_lag(end, None) == {}
    assert source_lag("not json", latest) == {}


def test_watermark_delay_is_computed_when_scraped():
    from datetime import UTC, datetime, timedelta

    query = "aggregate-test-watermark"
    metrics.record_batch(
        query,
        "wm.environment",
        valid=3,
        dead=2,
        watermark=datetime.now(UTC) - timedelta(hours=2),
    )
    text = metrics.exposition()[0].decode()
    delay = sample(text, "cityos_stream_watermark_delay_seconds", query=query)
    assert delay is not None and 7190 < delay < 7300
    assert sample(text, "cityos_stream_dead_letters_total", topic="wm.environment") == 2
    assert sample(text, "cityos_stream_valid_rows_total", query=query) == 3


@pytest.mark.integration
def test_producer_counts_sent_and_failed_per_topic(server, topics, produce, kafka_bootstrap):
    port = server.server_port
    before = _scrape(port)
    assert sample(before, "cityos_producer_events_sent_total", topic=topics.environment) is None

    stats = produce(topics.environment, air_events(4))
    from cityos.streaming.producer import make_producer

    producer = make_producer(kafka_bootstrap, "kafka-python")
    producer.send_raw(topics.environment, b"big", b"x" * 1_100_000)  # above the message limit
    producer.flush(30)
    producer.close()

    after = _scrape(port)
    assert stats.sent == 4
    assert sample(after, "cityos_producer_events_sent_total", topic=topics.environment) == 4
    assert sample(after, "cityos_producer_events_failed_total", topic=topics.environment) == 1


@pytest.mark.integration
def test_a_streaming_query_reports_rows_duration_and_lag(
    server,
    spark,
    ops_settings,
    topics,
    produce,  # noqa: F811 - fixture
):
    from cityos.doctor import diagnose
    from cityos.streaming.jobs.aggregate import query_name, read_topic

    topic = topics.environment
    name = query_name(topic)
    produce(topic, air_events(5))
    metrics.attach_listener(spark)
    assert metrics.attach_listener(spark) is metrics.attach_listener(spark)  # once per session

    seen: list[int] = []
    query = (
        read_topic(spark, ops_settings, topic)
        .writeStream.queryName(name)
        .option("checkpointLocation", str(ops_settings.state_dir / "checkpoints" / name))
        .foreachBatch(lambda batch, _id: seen.append(batch.count()))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    assert sum(seen) == 5

    def rows() -> float | None:
        return sample(_scrape(server.server_port), "cityos_stream_input_rows_total", query=name)

    deadline = time.monotonic() + 60  # the listener bus delivers progress asynchronously
    while rows() != 5 and time.monotonic() < deadline:
        time.sleep(0.5)
    text = _scrape(server.server_port)
    assert sample(text, "cityos_stream_input_rows_total", query=name) == 5
    assert sample(text, "cityos_stream_batch_duration_seconds_count", query=name) >= 1
    assert sample(text, "cityos_stream_consumer_lag_messages", query=name, topic=topic) == 0
    assert sample(text, "cityos_stream_last_progress_timestamp_seconds", query=name) > 0

    # three more events: the doctor reads the lag from the query's real checkpoint
    produce(topic, air_events(3, first=5))
    lag = next(f for f in diagnose(ops_settings) if f.component == f"lag {topic}")
    assert lag.status == "ok" and "3 messages behind" in lag.message


@pytest.mark.integration
def test_the_service_serves_metrics_without_a_token_and_counts_questions(client, tokens):
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    n0 = sample(before.text, "cityos_nlq_requests_total", kind="clarification") or 0
    h0 = sample(before.text, "cityos_nlq_request_duration_seconds_count", kind="clarification") or 0

    reply = client.post(
        "/api/v1/ask", json={"question": "How busy is it?"}, headers=tokens.header("viewer", "v")
    )
    assert reply.json()["kind"] == "clarification"

    after = client.get("/metrics").text
    assert sample(after, "cityos_nlq_requests_total", kind="clarification") == n0 + 1
    count = sample(after, "cityos_nlq_request_duration_seconds_count", kind="clarification")
    assert count == h0 + 1
    assert "Bearer" not in after and "postgresql://" not in after


@pytest.mark.integration
def test_actuator_sends_and_confirmations_are_counted_and_timed(
    sim, loop, service, people, prepared
):
    """A real change: proposed, approved (sent by the Kafka actuator), confirmed by SUMO."""
    from tests.nlq.service_tools import signal_draft

    tls, run_until = control_tests.NEUSSER_WILHELM, control_tests.run_until

    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0

    sends0 = value("cityos_actuator_sends_total", kind="apply", outcome="ok")
    applied0 = value("cityos_actuator_confirmations_total", kind="apply", result="applied")
    timed0 = value("cityos_actuator_confirmation_seconds_count")

    proposed = service.propose(signal_draft(tls, 0, 60), people["alice"])
    service.approve(proposed.action_id, people["bob"])
    assert value("cityos_actuator_sends_total", kind="apply", outcome="ok") == sends0 + 1
    applied = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
    assert applied.status == "applied", applied.note

    text = metrics.exposition()[0].decode()
    assert sample(text, "cityos_actuator_confirmations_total", kind="apply", result="applied") == (
        applied0 + 1
    )
    assert sample(text, "cityos_actuator_confirmation_seconds_count") == timed0 + 1
    assert sample(text, "cityos_actuator_confirmation_seconds_sum") > 0
