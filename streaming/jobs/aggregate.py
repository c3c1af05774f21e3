"""The streaming job: one query per source topic, each micro-batch validated, laked, aggregated.

    read_topic -> parse -> classify -> stage_batch -> batch_summary -> write_lake / write_dlq
    -> merge_batch

Each query is named ``aggregate-<topic>`` and checkpoints under
``<state_dir>/checkpoints/<query name>``. Everything per batch happens in :meth:`TopicJob.process`
(``foreachBatch``); the order of its sinks makes a replay safe: lake (overwritten per batch), DLQ
(at least once), then the PostgreSQL transaction that records the batch, so a batch merged before a
crash is recognised and skipped as a whole. Spark's report of each batch, which comes after it,
completes the batch's row with its duration and the offsets it left behind (:class:`BatchReports`).
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from cityos import events, metrics
from cityos.db import connect
from cityos.errors import CityOSError, ConfigError
from cityos.settings import Settings
from cityos.streaming.jobs.errors import StreamingJobError
from cityos.streaming.jobs.frames import literal_frame
from cityos.streaming.jobs.sinks import (
    BatchCommit,
    BatchReport,
    Method,
    batch_state,
    has_commits,
    log_dead_letters,
    merge_batch,
    record_report,
    sensor_progress,
    stage_batch,
    staging_folder,
    write_dlq,
    write_lake,
)
from cityos.streaming.jobs.spec import TOPIC_SPECS, TopicSpec
from cityos.streaming.jobs.validate import Limits, classify, parse
from cityos.streaming.jobs.windows import BatchSummary, batch_summary
from cityos.topics import Topics, checkpoint_batch_time, checkpoint_end_offsets

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


# ----------------------------------------------------------------------------- settings
def parse_duration(text: str, setting: str) -> timedelta:
    """'10 minutes', '2 hours' -> timedelta; anything else stops with the setting's name."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(setting, f"expected '<number> seconds|minutes|hours|days', got {text!r}")
    return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2].lower()])


def earliest_event_time(settings: Settings) -> datetime:
    try:
        return events.parse_time(settings.earliest_event_time)
    except ValueError as err:
        raise ConfigError("CITYOS_EARLIEST_EVENT_TIME", str(err)) from err


def query_name(topic: str) -> str:
    """The query's name, also its checkpoint folder: safe characters only."""
    return "aggregate-" + re.sub(r"[^A-Za-z0-9_.-]", "_", topic)


# ----------------------------------------------------------------------------- sensor registry
class SensorRegistry:
    """Sensor ids from PostgreSQL, re-read every ``sensor_refresh_s``, as a broadcastable frame."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._frame: DataFrame | None = None
        self._read_at = 0.0

    def _read(self) -> list[str]:
        s = self._settings
        with connect(s.database_url.get_secret_value(), s.database_schema) as conn:
            return [r[0] for r in conn.execute("SELECT sensor_id FROM sensors ORDER BY sensor_id")]

    def frame(self, spark: SparkSession) -> DataFrame:
        with self._lock:
            stale = time.monotonic() - self._read_at > self._settings.sensor_refresh_s
            if self._frame is None or stale:
                try:
                    ids = self._read()
                except psycopg.OperationalError as err:
                    if self._frame is None:
                        raise
                    log.warning(
                        "sensor registry refresh failed (%s): keeping the last one",
                        str(err).splitlines()[0],
                    )
                    return self._frame
                self._frame = literal_frame(spark, ["sensor_id"], [(i,) for i in ids])
                self._read_at = time.monotonic()
                log.info("sensor registry: %d sensors", len(ids))
            return self._frame


DB_RETRY_S = (1, 2, 4, 8, 15, 30, 30, 30, 30, 30)  # about three minutes of PostgreSQL outage
STOP_WAIT_S = 120.0  # at a stop, how long a running micro-batch may take to finish


# ----------------------------------------------------------------------------- one topic
@dataclass
class TopicJob:
    """The streaming query of one source topic and the handling of its micro-batches."""

    settings: Settings
    spec: TopicSpec
    topic: str
    registry: SensorRegistry
    method: Method = "copy"
    # merged by this process (counts: a list of every batch would grow for as long as it runs)
    merged_batches: int = 0
    merged_rows: int = 0  # valid events
    merged_dead: int = 0  # dead letters
    last_batch_id: int | None = None
    scorer: Any = None  # streaming/jobs/score.py Scorer, made at the first batch
    publisher: Any = None  # the alert outbox's Kafka publisher
    score_seconds: float = 0.0  # wall time spent in the score stage by this process

    @property
    def name(self) -> str:
        return query_name(self.topic)

    @property
    def checkpoint(self) -> Path:
        return self.settings.state_dir / "checkpoints" / self.name

    @property
    def lateness(self) -> timedelta:
        setting = self.spec.lateness_setting
        return parse_duration(getattr(self.settings, setting), "CITYOS_" + setting.upper())

    def _connect(self):  # noqa: ANN202 - psycopg.Connection
        s = self.settings
        return connect(s.database_url.get_secret_value(), s.database_schema)

    def limits(self, now: datetime) -> Limits:
        s = self.settings
        return Limits(
            max_event_bytes=s.max_event_bytes,
            earliest=earliest_event_time(s),
            now=now,
            max_future_skew=timedelta(seconds=s.max_future_skew_s),
        )

    def sensors_with_watermarks(self, spark: SparkSession, conn) -> DataFrame:  # noqa: ANN001
        """The registry with each sensor's watermark: its latest merged event time - lateness."""
        progress = [(sensor, at - self.lateness) for sensor, at in sensor_progress(conn, self.name)]
        registry = self.registry.frame(spark)
        if not progress:
            return registry
        marks = literal_frame(spark, ["sensor_id", "watermark"], progress)
        return registry.join(F.broadcast(marks), "sensor_id", "left")

    def check_checkpoint(self) -> None:
        """Commits without a checkpoint mean a reset checkpoint: replaying would double count."""
        if self.checkpoint.exists():
            return
        with self._connect() as conn:
            if has_commits(conn, self.name):
                raise StreamingJobError(
                    f"query {self.name} has no checkpoint at {self.checkpoint} but stream_commits "
                    f"holds its batches: restore the checkpoint, or delete its rows from "
                    f"stream_commits and the accumulators before reprocessing"
                )

    def with_db(self, work: Callable[[Any], Any]) -> Any:
        """``work(conn)`` on a fresh connection; an unreachable PostgreSQL is waited out."""
        for pause in (*DB_RETRY_S, None):
            try:
                with self._connect() as conn:
                    return work(conn)
            except psycopg.OperationalError as err:
                if pause is None:
                    raise
                log.warning(
                    "%s: PostgreSQL unavailable (%s); retry in %g s",
                    self.name,
                    str(err).splitlines()[0],
                    pause,
                )
                time.sleep(pause)
        return None

    def process(self, batch: DataFrame, batch_id: int) -> None:
        """foreachBatch: validate, dead-letter, lake, aggregate, merge; skip merged batches.

        Events are judged against the batch's own time from the offset log (``future``, the
        watermarks' cap), not the clock: a replay of the batch judges them as the first run did,
        so an event dead-lettered then is not merged now."""
        started = datetime.now(UTC)
        now = checkpoint_batch_time(self.checkpoint / "offsets" / str(batch_id)) or started
        clock = _StageClock()
        spark = batch.sparkSession

        def state(conn):  # noqa: ANN001, ANN202
            done, watermark = batch_state(conn, self.name, batch_id)
            return done, watermark, None if done else self.sensors_with_watermarks(spark, conn)

        done, watermark, sensors = self.with_db(state)
        clock.lap("state")
        if done:
            log.info("%s batch %d was merged before a restart: skipped", self.name, batch_id)
            return
        if batch_id == 0 and self.never_written(batch_id):
            # a new query's first batch runs even when its topic is empty (it fixes the starting
            # offsets); staging nothing would still generate and compile the whole validation
            # code: 11.7 s of a core for the benchmark's empty environment topic, beside the
            # traffic topic's first batch. Later batches run only when there is data.
            summary = BatchSummary()
        else:
            summary = self._write(batch, batch_id, sensors, now, clock)
        self._commit(summary, batch_id, watermark, started, now, clock)

    def never_written(self, batch_id: int) -> bool:
        """The batch ends at offset 0 of every partition: its topic has never held a message.

        Read from the checkpoint's offset log, not by asking Spark whether the batch is empty:
        that is a job of its own, and the rows it reads count in the batch's reported input."""
        ends = checkpoint_end_offsets(self.checkpoint / "offsets" / str(batch_id), self.topic)
        return bool(ends) and not any(ends.values())

    def _write(
        self,
        batch: DataFrame,
        batch_id: int,
        sensors: DataFrame,
        now: datetime,
        clock: _StageClock,
    ) -> BatchSummary:
        """Validate and stage the batch, then from the staged files: its summary, the lake, the
        DLQ, in the order that makes a replay safe (the PostgreSQL commit comes after)."""
        judged = classify(
            parse(batch, self.spec, self.settings.max_event_bytes),
            self.spec,
            sensors,
            self.limits(now),
        )
        lake = self.settings.lake_dir / self.topic  # type: ignore[operator]
        staged = staging_folder(lake, batch_id)
        try:
            rows = stage_batch(judged, staged)
            clock.lap("stage")
            summary = BatchSummary.of(batch_summary(rows, self.spec.event_types).collect())
            clock.lap("summary")
            if summary.valid:
                write_lake(staged, lake, batch_id, summary.dates)
                clock.lap("lake")
            if summary.dead:
                invalid = rows.where(F.col("reason").isNotNull())
                dlq = Topics.dlq(self.topic)
                write_dlq(invalid, self.settings.kafka_bootstrap, dlq)
                log_dead_letters(invalid, dlq, summary.dead)
                clock.lap("dlq")
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return summary

    def _commit(
        self,
        summary: BatchSummary,
        batch_id: int,
        watermark: datetime | None,
        started: datetime,
        now: datetime,
        clock: _StageClock,
    ) -> None:
        """The batch's windows, sensors' progress and commit record in one PostgreSQL
        transaction; then the score stage.

        Event time moves the watermarks, but never past the batch's time (``now``): an event
        stamped ahead of the clock (accepted up to ``max_future_skew_s``: a producer's clock
        an hour off, local time sent as UTC) is merged, but it neither closes its sensor's
        windows early nor makes the sensor's next real readings late."""
        valid_n, dead_n = summary.valid, summary.dead
        if summary.latest is not None:
            candidate = min(summary.latest, now) - self.lateness
            watermark = candidate if watermark is None else max(watermark, candidate)
        traffic = summary.partials.get(events.TRAFFIC, [])
        air = summary.partials.get(events.AIR, [])
        progress = [(sensor, min(latest, now)) for sensor, (_, latest) in summary.sensors.items()]
        commit = BatchCommit(self.name, batch_id, watermark, valid_n, dead_n, started)
        merged = self.with_db(
            lambda conn: merge_batch(
                conn, commit, traffic=traffic, air=air, method=self.method, progress=progress
            )
        )
        clock.lap("merge")
        if merged:
            self.merged_batches += 1
            self.merged_rows += valid_n
            self.merged_dead += dead_n
            self.last_batch_id = batch_id
            metrics.record_batch(
                self.name, self.topic, valid=valid_n, dead=dead_n, watermark=watermark
            )
        if self.settings.score_windows:
            began = time.monotonic()
            self._score()
            self.score_seconds += time.monotonic() - began
            clock.lap("score")
        log.info(
            "%s batch %d: %d valid, %d dead letters %s, %d traffic + %d air windows, "
            "watermark %s; %s",
            self.name,
            batch_id,
            valid_n,
            dead_n,
            summary.by_reason or "",
            len(traffic),
            len(air),
            watermark.isoformat() if watermark else "-",
            clock,
        )

    def _score(self) -> None:
        """The score stage: anomaly scores, forecasts and alerts of the windows closed now; then
        the alert transitions to Kafka. A failure is logged and retried with the next batch
        (nothing is marked scored unless it was)."""
        from cityos.streaming.jobs.score import Scorer, tables_for

        tables = tables_for(self.spec.event_types)
        if not tables:
            return
        s = self.settings
        if self.scorer is None:
            from cityos.alerting.engine import AlertEngine, OutboxPublisher

            self.scorer = Scorer(
                self.name,
                self.lateness,
                tables,
                AlertEngine.from_settings(s),
                forecast_minutes=s.forecast_minutes,
                checkpoint_s=s.detector_checkpoint_s,
            )
            self.publisher = OutboxPublisher(s.kafka_bootstrap, Topics(s.topic_prefix).alerts)
        scorer, publisher = self.scorer, self.publisher
        try:
            with connect(
                s.database_url.get_secret_value(), s.database_schema, autocommit=True
            ) as conn:
                summary = scorer.score(conn, datetime.now(UTC))
                published = publisher.publish_pending(conn) if publisher else 0
        except (psycopg.Error, CityOSError) as err:
            log.error("%s: scoring failed, retried with the next batch: %s", self.name, err)
            return
        if summary.windows:
            log.info(
                "%s scored %d closed windows: %d scores, %d forecasts, %d alert events "
                "(%d published)",
                self.name,
                summary.windows,
                summary.scores,
                summary.forecasts,
                summary.alert_events,
                published,
            )

    def close(self) -> None:
        """Save the detectors' states and close the alert publisher (when the query stops)."""
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        if self.scorer is None:
            return
        s = self.settings
        with connect(s.database_url.get_secret_value(), s.database_schema, autocommit=True) as conn:
            self.scorer.checkpoint(conn)


class _StageClock:
    """Seconds per stage of a micro-batch, for the batch's log line."""

    def __init__(self) -> None:
        self._last = self._start = time.monotonic()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.stages[stage] = now - self._last
        self._last = now

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.stages.items())
        return f"{time.monotonic() - self._start:.2f} s ({parts})"


# ----------------------------------------------------------------------------- batch reports
REPORT_QUEUE = 1000  # reports waiting for PostgreSQL; more are dropped (their rows keep NULLs)
REPORT_FLUSH_S = 30.0  # at the end of a run, how long to wait for the last batches' reports


class BatchReports:
    """Completes each merged batch's ``stream_commits`` row with Spark's report of it.

    Spark reports a batch (:class:`~cityos.streaming.jobs.sinks.BatchReport`: its duration, the
    offsets it left behind) after the batch, on its listener bus: :attr:`listener` only queues
    the report and a daemon thread writes it, so neither the batch nor the other listeners wait
    for PostgreSQL. A report that cannot be written is logged and dropped: the row keeps NULLs.
    Only the queries named in ``names`` are recorded (query names are unique among a session's
    active queries).
    """

    def __init__(self, settings: Settings, names: set[str]) -> None:
        self._settings = settings
        self._names = frozenset(names)
        self._queue: queue.Queue[BatchReport | None] = queue.Queue(REPORT_QUEUE)
        self._done: dict[str, int] = {}  # query name -> newest batch id handled
        self._changed = threading.Condition()
        self._conn: psycopg.Connection | None = None
        self._thread = threading.Thread(target=self._write, name="batch-reports", daemon=True)
        self._thread.start()
        self.listener = _ReportListener(self)

    def offer(self, progress: Any) -> None:
        """From the listener thread: queue the report of a batch of ours."""
        if progress.get("name") not in self._names:
            return
        try:
            self._queue.put_nowait(BatchReport.of(progress))
        except queue.Full:
            log.warning(
                "%s batch %s: report dropped (PostgreSQL too slow)",
                progress.get("name"),
                progress.get("batchId"),
            )

    def _write(self) -> None:
        while (report := self._queue.get()) is not None:
            try:
                self._record(report)
            except psycopg.Error as err:
                log.warning(
                    "%s batch %d: report not recorded: %s",
                    report.query_name,
                    report.batch_id,
                    str(err).splitlines()[0],
                )
                self._close_connection()
            with self._changed:
                done = self._done.get(report.query_name, -1)
                self._done[report.query_name] = max(done, report.batch_id)
                self._changed.notify_all()

    def _record(self, report: BatchReport) -> None:
        if self._conn is None or self._conn.closed:
            s = self._settings
            self._conn = connect(
                s.database_url.get_secret_value(),
                s.database_schema,
                autocommit=True,
                connect_timeout=5,
            )
        record_report(self._conn, report)

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def flush(self, queries: list[StreamingQuery], timeout_s: float = REPORT_FLUSH_S) -> bool:
        """Wait until the last reported batch of each query is recorded; False on timeout."""
        want: dict[str, int] = {}
        for query in queries:
            last = query.lastProgress
            if last is not None and query.name in self._names:
                want[query.name] = int(last["batchId"])

        def caught_up() -> bool:
            return all(self._done.get(name, -1) >= batch for name, batch in want.items())

        with self._changed:
            if self._changed.wait_for(caught_up, timeout_s):
                return True
        log.warning(
            "batch reports still missing after %g s: %s",
            timeout_s,
            {n: b for n, b in want.items() if self._done.get(n, -1) < b},
        )
        return False

    def close(self) -> None:
        """Stop the writer once the queued reports are written."""
        self._queue.put(None)
        self._thread.join(timeout=REPORT_FLUSH_S)
        self._close_connection()


class _ReportListener(StreamingQueryListener):
    """Spark's progress reports -> :class:`BatchReports`. Runs on Spark's listener thread:
    never raises, never waits."""

    def __init__(self, reports: BatchReports) -> None:
        self._reports = reports

    def onQueryStarted(self, event: Any) -> None:  # noqa: N802 - Spark's names
        pass

    def onQueryProgress(self, event: Any) -> None:  # noqa: N802
        try:
            self._reports.offer(event.progress)
        except Exception:  # a report must never disturb the query  # noqa: BLE001
            log.exception("batch report not queued")

    def onQueryTerminated(self, event: Any) -> None:  # noqa: N802
        pass


# ----------------------------------------------------------------------------- wiring
def read_topic(spark: SparkSession, settings: Settings, topic: str) -> DataFrame:
    """The Kafka source of one topic (native spark-sql-kafka), from the earliest offset."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "false")  # retention may drop data a stopped job never read
    )
    if settings.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger))
    return reader.load()


Until = Literal["available", "stopped"]

STREAMING_CONF = {
    # a staged batch is written partitioned by reason and date (sinks.stage_batch): a writer per
    # partition value instead of sorting the batch by them first
    "spark.sql.maxConcurrentOutputFileWriters": "8",
}


def start_query(spark: SparkSession, job: TopicJob, until: Until) -> StreamingQuery:
    job.check_checkpoint()
    writer = (
        read_topic(spark, job.settings, job.topic)
        .writeStream.queryName(job.name)
        .option("checkpointLocation", str(job.checkpoint))
        .foreachBatch(job.process)
    )
    if until == "available":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{job.settings.trigger_seconds} seconds")
    query = writer.start()
    log.info("started %s on %s (checkpoint %s)", job.name, job.topic, job.checkpoint)
    return query


def topic_jobs(settings: Settings, method: Method = "copy") -> list[TopicJob]:
    topics = Topics(settings.topic_prefix)
    registry = SensorRegistry(settings)
    return [
        TopicJob(settings, spec, getattr(topics, spec.base), registry, method)
        for spec in TOPIC_SPECS.values()
    ]


def run_pipeline(
    settings: Settings,
    *,
    until: Until = "available",
    spark: SparkSession | None = None,
    method: Method = "copy",
    stop_event: threading.Event | None = None,
    on_started: Callable[[list[TopicJob]], None] | None = None,
) -> list[TopicJob]:
    """Run both queries: ``available`` processes what the topics hold now, then returns;
    ``stopped`` runs live (trigger every ``trigger_seconds``) until ``stop_event`` is set or a
    query fails. ``on_started`` is called with the jobs once their queries run (their
    ``batches`` grow as micro-batches are merged). Returns the jobs."""
    if spark is None:
        from cityos.streaming.spark import spark_session

        spark = spark_session(settings, "cityos-aggregate")
    metrics.attach_listener(spark)  # query progress -> Prometheus (once per session)
    # before the queries start: each runs on a clone of the session's configuration
    for key, value in STREAMING_CONF.items():
        spark.conf.set(key, value)
    jobs = topic_jobs(settings, method)
    reports = BatchReports(settings, {job.name for job in jobs})  # -> stream_commits
    spark.streams.addListener(reports.listener)
    queries: list[StreamingQuery] = []
    stop = stop_event or threading.Event()
    try:
        for job in jobs:
            queries.append(start_query(spark, job, until))
        if on_started is not None:
            on_started(jobs)
        if until == "available":
            for query in queries:
                _await(query)
        else:
            while not stop.is_set() and all(q.isActive for q in queries):
                stop.wait(1.0)
        for query in queries:
            if not query.isActive and query.exception() is not None:
                raise StreamingJobError(f"query {query.name} failed: {query.exception()}")
    finally:
        for query in queries:
            _stop_between_batches(query)
        reports.flush(queries)
        spark.streams.removeListener(reports.listener)
        reports.close()
        for job in jobs:
            try:
                job.close()
            except (psycopg.Error, CityOSError) as err:
                log.error("%s: detector states not saved: %s", job.name, err)
    return jobs


def _stop_between_batches(query: StreamingQuery, timeout_s: float = STOP_WAIT_S) -> None:
    """Stop a query once its running micro-batch (if any) has finished, or after ``timeout_s``.

    ``stop()`` interrupts the batch's thread: a batch cut off in its merge is replayed from the
    checkpoint on the next start (nothing is lost), but the interrupt surfaces as a Java stack
    trace in the middle of an orderly shutdown. Waiting for the batch avoids both."""
    deadline = time.monotonic() + timeout_s
    said = False
    while query.isActive and time.monotonic() < deadline:
        try:
            if not query.status.get("isTriggerActive"):
                break
        except Exception:  # noqa: BLE001 - the query ended meanwhile: stop() below is a no-op
            break
        if not said:
            log.info("%s: letting the running micro-batch finish before stopping", query.name)
            said = True
        time.sleep(0.2)
    if query.isActive:
        query.stop()


def _await(query: StreamingQuery) -> None:
    """Wait for an availableNow query; its failure is read from ``query.exception()``."""
    try:
        query.awaitTermination()
    except Exception as err:  # noqa: BLE001 - StreamingQueryException, inspected by the caller
        log.debug("query %s ended with %s", query.name, type(err).__name__)


def main(settings: Settings | None = None) -> None:
    """`cityos stream run`: the live job, stopped cleanly by SIGINT/SIGTERM."""
    from cityos.settings import get_settings

    settings = settings or get_settings()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics.serve_metrics(settings.metrics_port, settings.metrics_host)
    run_pipeline(settings, until="stopped", stop_event=stop)
