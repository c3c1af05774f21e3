"""Prometheus metrics of CityOS: one registry, named in one place, served on ``/metrics``.

Every process of the platform records into :data:`REGISTRY`:

* producers (``streaming/producer.py``): events sent and failed per topic;
* the streaming job: a :class:`StreamingMetricsListener` attached to its SparkSession turns each
  query's progress into rows, rows/s, batch durations and consumer lag (the source's latest
  offsets minus the offsets the batch read up to); the job's own batches add valid rows, dead
  letters and the watermark (:func:`record_batch`), whose delay is computed at scrape time;
* the supervisor: restarts and consecutive failures;
* the NL-query service: requests by kind of reply and their latency;
* the actuator and the control loop: changes sent, confirmations, approval-to-confirmation time.

A process that is not an HTTP service exposes the registry with :func:`serve_metrics` (the
``metrics_port`` setting); the NL-query service serves it at ``GET /metrics`` itself.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # cpu, memory, open files of the process
CONTENT_TYPE = CONTENT_TYPE_LATEST

# buckets in seconds: a micro-batch takes ~0.5-30 s; a question ~0.01-5 s; a confirmation waits
# for the twin's next step (seconds) or, on a stopped twin, much longer
BATCH_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CONFIRM_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)

# ----------------------------------------------------------------------------- producers
PRODUCER_SENT = Counter(
    "cityos_producer_events_sent",
    "Events the broker acknowledged, per topic.",
    ["topic"],
    registry=REGISTRY,
)
PRODUCER_FAILED = Counter(
    "cityos_producer_events_failed",
    "Events that could not be delivered (logged with the reason), per topic.",
    ["topic"],
    registry=REGISTRY,
)

# ----------------------------------------------------------------------------- streaming queries
STREAM_INPUT_ROWS = Counter(
    "cityos_stream_input_rows",
    "Rows the streaming query read from its sources.",
    ["query"],
    registry=REGISTRY,
)
STREAM_INPUT_RATE = Gauge(
    "cityos_stream_input_rows_per_second",
    "Rate at which rows arrived at the query (last progress).",
    ["query"],
    registry=REGISTRY,
)
STREAM_PROCESSED_RATE = Gauge(
    "cityos_stream_processed_rows_per_second",
    "Rate at which the query processed rows (last progress).",
    ["query"],
    registry=REGISTRY,
)
STREAM_BATCH_SECONDS = Histogram(
    "cityos_stream_batch_duration_seconds",
    "Wall time of one micro-batch.",
    ["query"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
STREAM_LAST_PROGRESS = Gauge(
    "cityos_stream_last_progress_timestamp_seconds",
    "Unix time of the query's last progress report (time() - this: how long it is silent).",
    ["query"],
    registry=REGISTRY,
)
STREAM_LAG = Gauge(
    "cityos_stream_consumer_lag_messages",
    "Messages in the topic beyond what the query has read: latest offsets - end offsets of "
    "the last batch, summed over partitions.",
    ["query", "topic"],
    registry=REGISTRY,
)
STREAM_ACTIVE = Gauge(
    "cityos_stream_query_active",
    "1 while the query runs, 0 once it stopped.",
    ["query"],
    registry=REGISTRY,
)
STREAM_FAILURES = Counter(
    "cityos_stream_query_failures",
    "Queries that stopped with an exception.",
    ["query"],
    registry=REGISTRY,
)
STREAM_VALID_ROWS = Counter(
    "cityos_stream_valid_rows",
    "Valid events merged into the serving tables.",
    ["query"],
    registry=REGISTRY,
)
STREAM_DEAD_LETTERS = Counter(
    "cityos_stream_dead_letters",
    "Events sent to the dead-letter topic, per source topic.",
    ["topic"],
    registry=REGISTRY,
)
STREAM_WATERMARK = Gauge(
    "cityos_stream_watermark_timestamp_seconds",
    "The query's event-time watermark (newest event - allowed lateness), Unix time.",
    ["query"],
    registry=REGISTRY,
)
STREAM_WATERMARK_DELAY = Gauge(
    "cityos_stream_watermark_delay_seconds",
    "Now - the query's watermark, computed when scraped.",
    ["query"],
    registry=REGISTRY,
)

# ----------------------------------------------------------------------------- supervisor
SUPERVISOR_RESTARTS = Counter(
    "cityos_supervisor_restarts",
    "Times the supervisor restarted the streaming pipeline after a failure.",
    registry=REGISTRY,
)
SUPERVISOR_FAILURES = Gauge(
    "cityos_supervisor_recent_failures",
    "Failures of the pipeline within the supervisor's alert window.",
    registry=REGISTRY,
)

# ----------------------------------------------------------------------------- NL-query service
NLQ_REQUESTS = Counter(
    "cityos_nlq_requests",
    "Questions answered, by kind of reply (answer, action, clarification, refusal).",
    ["kind"],
    registry=REGISTRY,
)
NLQ_LATENCY = Histogram(
    "cityos_nlq_request_duration_seconds",
    "Time to reply to one question, by kind of reply.",
    ["kind"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)

# ----------------------------------------------------------------------------- actuator
ACTUATOR_SENDS = Counter(
    "cityos_actuator_sends",
    "Control changes published to the control topic, by kind (apply, rollback) and outcome "
    "(ok, error).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
ACTUATOR_CONFIRMATIONS = Counter(
    "cityos_actuator_confirmations",
    "Control changes handled by the controller, by kind and result (applied, rolled_back, "
    "failed, skipped).",
    ["kind", "result"],
    registry=REGISTRY,
)
ACTUATOR_CONFIRM_SECONDS = Histogram(
    "cityos_actuator_confirmation_seconds",
    "Time from an operator's approval to the controller's confirmation of the change.",
    buckets=CONFIRM_BUCKETS,
    registry=REGISTRY,
)


# ----------------------------------------------------------------------------- recording helpers
_watermarks: dict[str, float] = {}
_watermarks_lock = threading.Lock()


def record_batch(
    query: str, topic: str, *, valid: int, dead: int, watermark: datetime | None
) -> None:
    """One merged micro-batch of the streaming job: its rows, dead letters and watermark."""
    STREAM_VALID_ROWS.labels(query).inc(valid)
    if dead:
        STREAM_DEAD_LETTERS.labels(topic).inc(dead)
    if watermark is None:
        return
    at = watermark.timestamp()
    with _watermarks_lock:
        first = query not in _watermarks
        _watermarks[query] = max(at, _watermarks.get(query, at))
    STREAM_WATERMARK.labels(query).set(_watermarks[query])
    if first:
        STREAM_WATERMARK_DELAY.labels(query).set_function(lambda: time.time() - _watermarks[query])


def record_confirmation(kind: str, result: str, approved_at: datetime | None) -> None:
    """The controller handled a change; an applied one also times approval -> confirmation."""
    ACTUATOR_CONFIRMATIONS.labels(kind, result).inc()
    if result == "applied" and approved_at is not None:
        seconds = (datetime.now(UTC) - approved_at).total_seconds()
        ACTUATOR_CONFIRM_SECONDS.observe(max(seconds, 0.0))


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def source_lag(start_or_end: Any, latest: Any) -> dict[str, int]:
    """Per topic, messages between a batch's end offsets and the source's latest offsets.

    Both are the Kafka source's offset JSON (``{"topic": {"0": 12, "1": 7}}``) as progress
    reports carry them; a missing or unparsable side gives no entry.
    """
    try:
        ends = json.loads(start_or_end) if isinstance(start_or_end, str) else start_or_end
        tops = json.loads(latest) if isinstance(latest, str) else latest
    except ValueError:
        return {}
    if not isinstance(ends, dict) or not isinstance(tops, dict):
        return {}
    lag: dict[str, int] = {}
    for topic, partitions in tops.items():
        done = ends.get(topic)
        if not isinstance(partitions, dict) or not isinstance(done, dict):
            continue
        lag[topic] = sum(
            max(int(end) - int(done.get(part, 0)), 0) for part, end in partitions.items()
        )
    return lag


# ----------------------------------------------------------------------------- Spark listener
def _listener_base() -> type:
    from pyspark.sql.streaming import StreamingQueryListener

    return StreamingQueryListener


class _Progress:
    """Turns a StreamingQueryProgress (a dict subclass) into the stream metrics."""

    @staticmethod
    def apply(progress: Any) -> None:
        name = progress.get("name") or str(progress.get("id"))
        STREAM_LAST_PROGRESS.labels(name).set(time.time())
        rows = int(progress.get("numInputRows") or 0)
        if rows:
            STREAM_INPUT_ROWS.labels(name).inc(rows)
        for gauge, key in (
            (STREAM_INPUT_RATE, "inputRowsPerSecond"),
            (STREAM_PROCESSED_RATE, "processedRowsPerSecond"),
        ):
            value = _finite(progress.get(key))
            if value is not None:
                gauge.labels(name).set(value)
        duration_ms = _finite(progress.get("batchDuration"))
        if duration_ms is None:
            duration_ms = _finite((progress.get("durationMs") or {}).get("triggerExecution"))
        if rows and duration_ms is not None:  # idle triggers would drown the real batches
            STREAM_BATCH_SECONDS.labels(name).observe(duration_ms / 1000.0)
        watermark = (progress.get("eventTime") or {}).get("watermark")
        if watermark and not watermark.startswith("1970-01-01"):
            at = datetime.fromisoformat(watermark.replace("Z", "+00:00"))
            record_batch(name, "", valid=0, dead=0, watermark=at)
        for source in progress.get("sources") or []:
            lags = source_lag(source.get("endOffset"), source.get("latestOffset"))
            for topic, lag in lags.items():
                STREAM_LAG.labels(name, topic).set(lag)


def make_listener() -> Any:
    """A StreamingQueryListener feeding :data:`REGISTRY`; attach with
    ``spark.streams.addListener(make_listener())`` before the queries start."""

    class StreamingMetricsListener(_listener_base()):  # type: ignore[misc]
        """Query progress -> metrics. Called from Spark's listener thread: never raises."""

        def __init__(self) -> None:
            self._names: dict[str, str] = {}

        def onQueryStarted(self, event: Any) -> None:  # noqa: N802 - Spark's names
            name = event.name or str(event.id)
            self._names[str(event.id)] = name
            STREAM_ACTIVE.labels(name).set(1)

        def onQueryProgress(self, event: Any) -> None:  # noqa: N802
            try:
                _Progress.apply(event.progress)
            except Exception:  # a metrics bug must not disturb the query  # noqa: BLE001
                log.exception("stream metrics: progress not recorded")

        def onQueryIdle(self, event: Any) -> None:  # noqa: N802
            name = self._names.get(str(event.id))
            if name:
                STREAM_LAST_PROGRESS.labels(name).set(time.time())

        def onQueryTerminated(self, event: Any) -> None:  # noqa: N802
            name = self._names.pop(str(event.id), str(event.id))
            STREAM_ACTIVE.labels(name).set(0)
            if event.exception:
                STREAM_FAILURES.labels(name).inc()
                log.error(
                    "query %s stopped with an error: %s", name, str(event.exception).splitlines()[0]
                )

    return StreamingMetricsListener()


_attached: dict[int, Any] = {}
_attached_lock = threading.Lock()


def attach_listener(spark: Any) -> Any:
    """Attach one :func:`make_listener` to ``spark`` (again for the same session: nothing);
    returns the listener. Call before the queries start."""
    key = id(spark)
    with _attached_lock:
        if key not in _attached:
            listener = make_listener()
            spark.streams.addListener(listener)
            _attached[key] = listener
        return _attached[key]


# ----------------------------------------------------------------------------- exposition
def exposition() -> tuple[bytes, str]:
    """The registry in the text exposition format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE


def serve_metrics(port: int | None, addr: str = "127.0.0.1") -> Any:
    """Serve :data:`REGISTRY` on ``http://addr:port/metrics`` from a daemon thread; None when
    ``port`` is None (metrics off). Returns the server (``shutdown()`` stops it). Loopback by
    default: a container that Prometheus scrapes binds ``0.0.0.0`` (``metrics_host``)."""
    if port is None:
        return None
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    log.info("metrics on http://%s:%d/metrics", addr, server.server_port)
    return server
