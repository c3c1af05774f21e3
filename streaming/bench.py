"""`cityos bench streaming`: producer, raw consume, end-to-end, latency and sink figures in one run.

Everything runs against the embedded stack, isolated from demo data: topics under a prefix of the
run's own (``bench<utc time>.``), a PostgreSQL schema of its own (``bench_<utc time>``) holding
registered synthetic sensors (``load-tr-NNNNN``, city ``bench``), and a state directory of its own
(``<state_dir>/bench/<run>``) for checkpoints, the lake and Spark's scratch. Topics and schema are
dropped at the end unless ``keep``.

How each figure is measured (the report repeats this under ``method``):

producer
    The same pool of realistic TrafficFlowObserved events is sent N times per client library
    (idempotent, acks=all); the clock runs from the first ``send`` (which stamps producedAt and
    encodes) to the end of ``flush``. MB/s counts value bytes.
raw consume
    Spark: the Kafka source (the same V1 source the job uses) read ``availableNow`` and only
    counted (``count`` and ``sum(length(value))`` per batch); time = first batch start to last
    batch end, from the query's progress events. confluent-kafka: a Python consumer reading the
    topic to its end offsets, first message to last.
end to end
    N events produced up front, then the pipeline ``availableNow``; time = first batch start to
    the end of the last batch (whose PostgreSQL commit is part of it), from progress events.
steps
    The first ``max_offsets_per_trigger`` events of the end-to-end topic (one steady batch) read
    as a Spark batch job, the micro-batch's steps added one at a time: read only, + parse,
    + validate, + stage as Parquet, + the summary from the staged files. Round-robin rounds; each
    step's figure is the median wall time; ``vs_read`` = read's median / the step's median.
latency
    The live pipeline (trigger every ``trigger_seconds``) while a load generator sends at a fixed
    rate from a process of its own (as sources do: in the job's interpreter it held the GIL
    the micro-batches' Py4J calls wait for). A poller reads ``stream_commits`` every 100 ms
    and notes when each batch first became visible. Afterwards the batch end offsets are read
    from the query's checkpoint (``offsets/<batch>``) and the topic is read back: each event
    belongs to the batch whose offset range holds it, and its latency is (batch first seen in
    PostgreSQL) - producedAt. Resolution: the poll interval (100 ms) and producedAt's
    milliseconds; one host, one clock.
sink
    The same prepared traffic partial-sum rows merged with ``merge_batch`` by COPY and by
    executemany, into emptied accumulators each time; rows/s = rows / merge time.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import platform
import random
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from psycopg import sql

from cityos import events
from cityos.db import connect, migrate
from cityos.settings import Settings, load_settings
from cityos.topics import Topics, checkpoint_end_offsets

log = logging.getLogger(__name__)

BENCH_CITY = "bench"
POLL_S = 0.1
EVENT_POOL = 5000  # distinct events cycled by the producer runs (generation is not timed)
TARGETS = {"e2e_events_per_s": 50_000, "pipeline_vs_raw": 0.5, "latency_p95_s": 5.0}


@dataclass(frozen=True)
class Params:
    """Sizes of one run; ``quick`` proves the wiring in about a minute."""

    producer_events: int = 150_000
    e2e_events: int = 1_000_000
    max_offsets_per_trigger: int = 125_000
    latency_rate: float = 10_000.0
    latency_seconds: float = 90.0
    latency_warmup_s: float = 30.0  # latencies of events produced later count as steady state
    sink_rows: int = 50_000
    sensors: int = 1000
    step_reps: int = 3

    @classmethod
    def quick(cls) -> Params:
        return cls(
            producer_events=5_000,
            e2e_events=10_000,
            max_offsets_per_trigger=20_000,
            latency_rate=1_000.0,
            latency_seconds=10.0,
            latency_warmup_s=5.0,
            sink_rows=5_000,
            sensors=200,
            step_reps=2,
        )


# ----------------------------------------------------------------------------- pure helpers
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(latencies: Sequence[float]) -> dict[str, float | int]:
    return {
        "n": len(latencies),
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies),
    }


def read_batch_offsets(offsets_dir: Path, topic: str) -> dict[int, dict[int, int]]:
    """batch id -> {partition: end offset (exclusive)} from a query checkpoint's offset log."""
    return {
        int(path.name): checkpoint_end_offsets(path, topic)
        for path in offsets_dir.iterdir()
        if path.name.isdigit()
    }


class BatchIndex:
    """Which batch read a (partition, offset): batch b holds [end(b-1), end(b)) per partition."""

    def __init__(self, ends: dict[int, dict[int, int]]) -> None:
        self._bounds: dict[int, tuple[list[int], list[int]]] = {}
        for batch in sorted(ends):
            for part, end in ends[batch].items():
                offs, ids = self._bounds.setdefault(part, ([], []))
                offs.append(end)
                ids.append(batch)

    def batch_of(self, partition: int, offset: int) -> int | None:
        offs, ids = self._bounds.get(partition, ([], []))
        i = bisect.bisect_right(offs, offset)
        return ids[i] if i < len(ids) else None


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


# ----------------------------------------------------------------------------- machine
def machine_info(spark_version: str | None) -> dict[str, Any]:
    import confluent_kafka
    import kafka
    import psycopg

    from cityos.stack.jars import kafka_classpath

    broker = next(
        (
            Path(j).stem.removeprefix("kafka-clients-")
            for j in kafka_classpath().split(os.pathsep)
            if "kafka-clients-" in j
        ),
        None,
    )
    mem_kb = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 2**20, 1),
        "load_avg_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "spark": spark_version,
        "kafka_broker": broker,
        "kafka_python": kafka.__version__,
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "psycopg": psycopg.__version__,
    }


# ----------------------------------------------------------------------------- the run
@dataclass
class Run:
    """One benchmark run: its isolated names, settings, and the results gathered so far."""

    base: Settings
    params: Params
    name: str = field(default_factory=lambda: "bench" + datetime.now(UTC).strftime("%Y%m%d%H%M%S"))
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    topics_made: list[str] = field(default_factory=list)

    @property
    def schema(self) -> str:
        return self.name.replace("bench", "bench_", 1)

    @property
    def url(self) -> str:
        return self.base.database_url.get_secret_value()

    def topics(self, phase: str) -> Topics:
        return Topics(f"{self.name}.{phase}.")

    def settings(self, phase: str, **overrides: Any) -> Settings:
        """Settings of one phase: its topics, the run's schema, its own checkpoints and lake."""
        return load_settings(
            **{
                "state_dir": self.base.state_dir / "bench" / self.name / phase,
                "cache_dir": self.base.cache_dir,
                "topic_prefix": self.topics(phase).prefix,
                "database_schema": self.schema,
                **overrides,
            }
        )

    def attempt(self, phase: str, measure: Callable[[], Any]) -> None:
        """Run one phase; a failure is logged and reported, and the other phases still run."""
        try:
            self.results[phase] = measure()
        except Exception as err:
            log.exception("bench phase %s failed", phase)
            self.errors[phase] = f"{type(err).__name__}: {str(err).splitlines()[0]}"

    def make_topics(self, topics: Topics) -> None:
        from cityos.stack import ensure_topics

        names = topics.all()
        ensure_topics(
            self.base.kafka_bootstrap,
            names,
            partitions=self.base.kafka_partitions,
            retention_ms=self.base.kafka_retention_hours * 3_600_000,
        )
        self.topics_made += names

    def sensor_ids(self) -> list[str]:
        return [f"load-tr-{i:05d}" for i in range(self.params.sensors)]

    def prepare_schema(self) -> None:
        """The run's schema, migrated, with a city and the synthetic sensors registered."""
        migrate(self.url, self.schema)
        rng = random.Random(3)  # noqa: S311 - positions only
        with connect(self.url, self.schema) as conn, conn.transaction():
            conn.execute(
                "INSERT INTO cities (city_id, name, timezone, aqi_standard)"
                " VALUES (%s, 'Benchmark', 'UTC', 'us_epa')",
                (BENCH_CITY,),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO sensors (sensor_id, city_id, kind, name, latitude, longitude)"
                    " VALUES (%s, %s, 'traffic', %s, %s, %s)",
                    [
                        (s, BENCH_CITY, s, 50.9 + rng.random() / 10, 6.9 + rng.random() / 10)
                        for s in self.sensor_ids()
                    ],
                )

    def cleanup(self) -> None:
        from cityos.stack import delete_topics

        delete_topics(self.base.kafka_bootstrap, self.topics_made)
        with connect(self.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )
        shutil.rmtree(self.base.state_dir / "bench" / self.name, ignore_errors=True)
        log.info(
            "dropped %d topics, schema %s and the run's checkpoints",
            len(self.topics_made),
            self.schema,
        )


def event_pool(sensor_ids: Sequence[str], size: int = EVENT_POOL) -> list[events.Event]:
    from cityos.streaming.sources.loadgen import traffic_event

    rng = random.Random(11)  # noqa: S311 - reproducible load
    now = datetime.now(UTC)
    return [traffic_event(rng, sensor_ids[i % len(sensor_ids)], now) for i in range(size)]


def produce(
    bootstrap: str, client: str, topic: str, pool: Sequence[events.Event], n: int
) -> dict[str, Any]:
    """Send ``n`` events cycling the pool; events/s and MB/s from first send to flushed."""
    from cityos.streaming.producer import make_producer

    producer = make_producer(bootstrap, client, client_id=f"cityos-bench-{client}")
    sizes = [len(events.encode(events.stamp_produced(e))) for e in pool]
    producer.send(topic, pool[-1])  # untimed: connections, producer id, partition leaders
    producer.flush(timeout=60)
    t0 = time.perf_counter()
    for i in range(n):
        producer.send(topic, pool[i % len(pool)])
    producer.flush(timeout=300)
    seconds = time.perf_counter() - t0
    producer.close()
    mb = sum(sizes[i % len(pool)] for i in range(n)) / 1e6
    return {
        "client": client,
        "events": n,
        "seconds": seconds,
        "events_per_s": rate(n, seconds),
        "mb_per_s": rate(mb, seconds),
        "delivered": producer.stats.sent - 1,
        "failed": producer.stats.failed,
        "warm_up_events": 1,
    }


class Progress:
    """Collects streaming progress events (batch start, duration, rows) per query name."""

    def __init__(self) -> None:
        self.batches: dict[str, list[tuple[datetime, float, int]]] = {}

    def add(self, progress: Any) -> None:
        start = events.parse_time(progress.timestamp)
        total_ms = progress.durationMs.get("triggerExecution", 0)
        self.batches.setdefault(progress.name, []).append(
            (start, total_ms / 1000, progress.numInputRows)
        )

    def steady(self, name: str) -> tuple[float, int]:
        """(seconds, rows) of the batches after the first one with rows: the rate once Spark has
        compiled the plan and warmed its JVM, which a long-running job spends its life in."""
        rows = sorted((b for b in self.batches.get(name, []) if b[2]), key=lambda b: b[0])[1:]
        if not rows:
            return 0.0, 0
        last = max(b[0] + timedelta(seconds=b[1]) for b in rows)
        return (last - rows[0][0]).total_seconds(), sum(b[2] for b in rows)

    def span(self, name: str | None = None) -> tuple[float, int]:
        """(seconds from first batch start to last batch end, rows) of one or all queries."""
        rows = [b for n, bs in self.batches.items() if name in (None, n) for b in bs if b[2]]
        if not rows:
            return 0.0, 0
        first = min(b[0] for b in rows)
        last = max(b[0] + timedelta(seconds=b[1]) for b in rows)
        return (last - first).total_seconds(), sum(b[2] for b in rows)


def listen(spark: Any, progress: Progress) -> Any:
    from pyspark.sql.streaming import StreamingQueryListener

    class Listener(StreamingQueryListener):
        def onQueryStarted(self, event: Any) -> None: ...  # noqa: N802 - PySpark's names

        def onQueryProgress(self, event: Any) -> None:  # noqa: N802
            progress.add(event.progress)

        def onQueryIdle(self, event: Any) -> None: ...  # noqa: N802

        def onQueryTerminated(self, event: Any) -> None: ...  # noqa: N802

    listener = Listener()
    spark.streams.addListener(listener)
    return listener


def spark_raw_count(spark: Any, settings: Settings, topic: str, progress: Progress) -> dict:
    """Read the topic with the Kafka source, availableNow, and only count rows and bytes."""
    from pyspark.sql import functions as F

    totals = {"rows": 0, "bytes": 0}

    def count(batch: Any, _batch_id: int) -> None:
        row = batch.agg(F.count(F.lit(1)), F.sum(F.length("value"))).first()
        totals["rows"] += row[0]
        totals["bytes"] += row[1] or 0

    name = f"raw-{topic}"
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
    )
    if settings.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger))
    query = (
        reader.load()
        .writeStream.queryName(name)
        .option("checkpointLocation", str(settings.state_dir / "checkpoints" / name))
        .foreachBatch(count)
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    time.sleep(0.5)  # the listener bus delivers the last progress event asynchronously
    seconds, rows = progress.span(name)
    return {
        "reader": "spark",
        "events": totals["rows"],
        "seconds": seconds,
        "events_per_s": rate(totals["rows"], seconds),
        "mb_per_s": rate(totals["bytes"] / 1e6, seconds),
    }


def _consumer(bootstrap: str, topic: str) -> tuple[Any, list[Any], int]:
    """A consumer, every partition of ``topic`` from the start (to ``assign``: no group join),
    and the number of records up to the current end offsets."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "cityos-bench", "enable.auto.commit": False}
    )
    bounds = _partition_bounds(consumer, topic)
    target = sum(high - low for low, high in bounds.values())
    return consumer, [TopicPartition(topic, p, OFFSET_BEGINNING) for p in bounds], target


def _partition_bounds(consumer: Any, topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (first, end) offsets of ``topic`` now (a confluent-kafka consumer)."""
    from confluent_kafka import TopicPartition

    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        for p in sorted(parts)
    }


def first_offsets(bounds: dict[int, tuple[int, int]], n: int) -> dict[int, tuple[int, int]]:
    """The (start, end) offsets per partition of the first ``n`` records of a topic, taken as
    evenly from its partitions as their sizes allow (fewer when the topic holds fewer)."""
    out: dict[int, tuple[int, int]] = {}
    left = n
    by_size = sorted(bounds.items(), key=lambda b: b[1][1] - b[1][0])  # the smallest first
    for i, (p, (low, high)) in enumerate(by_size):
        take = min(high - low, left // (len(by_size) - i))
        out[p] = (low, low + take)
        left -= take
    return dict(sorted(out.items()))


def confluent_raw_count(bootstrap: str, topic: str) -> dict[str, Any]:
    """Read the topic to its end offsets with a confluent-kafka consumer, nothing else."""
    consumer, partitions, target = _consumer(bootstrap, topic)
    n = size = 0
    t0 = time.perf_counter()  # librdkafka starts fetching on assign: the clock starts here
    consumer.assign(partitions)
    deadline = time.monotonic() + 300
    while n < target and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=10_000, timeout=1.0):
            if msg.error():
                continue
            n += 1
            size += len(msg.value())
    seconds = time.perf_counter() - t0
    consumer.close()
    return {
        "reader": "confluent-kafka",
        "events": n,
        "seconds": seconds,
        "events_per_s": rate(n, seconds),
        "mb_per_s": rate(size / 1e6, seconds),
    }


def read_back(bootstrap: str, topic: str) -> Iterator[tuple[int, int, datetime]]:
    """(partition, offset, producedAt) of every event of the topic."""
    consumer, partitions, target = _consumer(bootstrap, topic)
    consumer.assign(partitions)
    seen, idle = 0, 0
    try:
        while seen < target and idle < 10:
            msgs = consumer.consume(num_messages=10_000, timeout=1.0)
            idle = 0 if msgs else idle + 1
            for msg in msgs:
                if msg.error():
                    continue
                seen += 1
                produced = orjson.loads(msg.value())["producedAt"]
                yield msg.partition(), msg.offset(), events.parse_time(produced)
    finally:
        consumer.close()


class CommitPoller(threading.Thread):
    """Notes when each (query, batch) first appears in stream_commits, every ``POLL_S``."""

    def __init__(self, url: str, schema: str) -> None:
        super().__init__(name="bench-commit-poller", daemon=True)
        self.url, self.schema = url, schema
        self.seen: dict[tuple[str, int], tuple[datetime, datetime, int]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        with connect(self.url, self.schema, autocommit=True) as conn:
            while not self.stop.is_set():
                now = datetime.now(UTC)
                for q, b, committed_at, valid in conn.execute(
                    "SELECT query_name, batch_id, committed_at, valid_rows FROM stream_commits"
                ):
                    self.seen.setdefault((q, b), (now, committed_at, valid))
                self.stop.wait(POLL_S)

    def valid_rows(self, query: str) -> int:
        """Valid rows merged so far by one query (the schema holds other phases' commits)."""
        return sum(v[2] for (q, _), v in list(self.seen.items()) if q == query)


# ----------------------------------------------------------------------------- phases
def bench_producers(run: Run, pool: Sequence[events.Event]) -> list[dict[str, Any]]:
    out = []
    for client in ("kafka-python", "confluent"):
        topics = run.topics("prod-" + client.replace("-", ""))
        run.make_topics(topics)
        out.append(
            produce(
                run.base.kafka_bootstrap, client, topics.traffic, pool, run.params.producer_events
            )
        )
        log.info("producer %s: %.0f events/s", client, out[-1]["events_per_s"])
    return out


def bench_e2e(run: Run, spark: Any, progress: Progress, pool: Sequence[events.Event]) -> dict:
    """Produce up front, count raw (Spark, confluent), then the pipeline availableNow."""
    from cityos.streaming.jobs.aggregate import query_name, run_pipeline

    p = run.params
    settings = run.settings("e2e", max_offsets_per_trigger=p.max_offsets_per_trigger)
    topics = run.topics("e2e")
    run.make_topics(topics)
    fill = produce(settings.kafka_bootstrap, "confluent", topics.traffic, pool, p.e2e_events)
    raw = [
        spark_raw_count(spark, settings, topics.traffic, progress),
        confluent_raw_count(settings.kafka_bootstrap, topics.traffic),
    ]
    t0 = time.perf_counter()
    jobs = run_pipeline(settings, until="available", spark=spark)
    wall = time.perf_counter() - t0
    time.sleep(0.5)
    seconds, rows = progress.span(query_name(topics.traffic))
    merged = sum(j.merged_rows for j in jobs)
    steady_s, steady_rows = progress.steady(query_name(topics.traffic))
    pipeline = {
        "steady_seconds": steady_s,
        "steady_events": steady_rows,
        "steady_events_per_s": rate(steady_rows, steady_s),
        "events": rows,
        "valid_merged": merged,
        "batches": len(progress.batches.get(query_name(topics.traffic), [])),
        "seconds": seconds,
        "wall_seconds_incl_start": wall,
        "events_per_s": rate(rows, seconds),
    }
    return {
        "fill": fill,
        "raw": raw,
        "pipeline": pipeline,
        "pipeline_vs_spark_raw": rate(pipeline["events_per_s"], raw[0]["events_per_s"]),
        "steady_vs_spark_raw": rate(pipeline["steady_events_per_s"], raw[0]["events_per_s"]),
    }


STEPS = {  # step -> what it adds to the one before; each runs the job's own functions
    "read": "Kafka source rows of the slice, nothing else (Spark's noop sink)",
    "parse": "+ JSON parse of every value with the typed schema (validate.parse)",
    "validate": "+ every check of the schema, the sensor registry and the time bounds "
    "(validate.classify)",
    "stage": "+ written once as Parquet by reason and date (sinks.stage_batch)",
    "summary": "+ the batch's summary read back from those files (windows.batch_summary)",
}


def bench_steps(run: Run, spark: Any) -> dict[str, Any]:
    """Where a batch's time goes: the same slice of the end-to-end topic (one steady batch's
    worth of events) read as a Spark batch job, one step of the micro-batch added at a time.

    The steps run round-robin, ``step_reps`` rounds, so a slower minute of the shared machine
    spreads over all of them; each step's figure is its median. It runs after the end-to-end
    phase, in the same session, so the JVM has compiled the job's code already.
    """
    from confluent_kafka import Consumer

    from cityos.streaming.jobs.aggregate import STREAMING_CONF, topic_jobs
    from cityos.streaming.jobs.sinks import stage_batch
    from cityos.streaming.jobs.validate import classify, parse
    from cityos.streaming.jobs.windows import BatchSummary, batch_summary

    p = run.params
    settings = run.settings("e2e")
    topic = run.topics("e2e").traffic
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "cityos-bench"})
    try:
        offsets = first_offsets(_partition_bounds(consumer, topic), p.max_offsets_per_trigger)
    finally:
        consumer.close()
    n = sum(end - start for start, end in offsets.values())
    if not n:
        raise RuntimeError(f"topic {topic} is empty: the end-to-end phase produced nothing")
    job = next(j for j in topic_jobs(settings) if j.topic == topic)
    sensors = job.registry.frame(spark)  # no watermarks: the events are judged as first seen
    staging = settings.state_dir / "steps-staging"

    def ends(which: int) -> str:
        return orjson.dumps({topic: {str(k): v[which] for k, v in offsets.items()}}).decode()

    def rows() -> Any:
        return (
            spark.read.format("kafka")
            .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
            .option("subscribe", topic)
            .option("startingOffsets", ends(0))
            .option("endingOffsets", ends(1))
            .load()
        )

    def judged() -> Any:
        return classify(
            parse(rows(), job.spec, settings.max_event_bytes),
            job.spec,
            sensors,
            job.limits(datetime.now(UTC)),
        )

    def noop(frame: Any) -> None:
        frame.write.format("noop").mode("overwrite").save()

    def stage() -> Any:
        shutil.rmtree(staging, ignore_errors=True)
        return stage_batch(judged(), staging)

    def summary() -> None:
        valid = BatchSummary.of(batch_summary(stage(), job.spec.event_types).collect()).valid
        if valid != n:  # every event of the pool is valid: anything else is a broken step
            raise RuntimeError(f"the summary counted {valid} valid events of {n}")

    work = {
        "read": lambda: noop(rows()),
        "parse": lambda: noop(parse(rows(), job.spec, settings.max_event_bytes).select("j.*")),
        "validate": lambda: noop(judged()),
        "stage": stage,
        "summary": summary,
    }
    for key, value in STREAMING_CONF.items():
        spark.conf.set(key, value)
    seconds: dict[str, list[float]] = {step: [] for step in STEPS}
    try:
        for _ in range(p.step_reps):
            for step in STEPS:
                t0 = time.perf_counter()
                work[step]()
                seconds[step].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    read_s = statistics.median(seconds["read"])
    steps = []
    for step, adds in STEPS.items():
        median = statistics.median(seconds[step])
        steps.append(
            {
                "step": step,
                "adds": adds,
                "seconds": seconds[step],
                "median_s": median,
                "events_per_s": rate(n, median),
                "vs_read": rate(read_s, median),
            }
        )
    log.info(
        "steps of a %d-event batch (medians): %s",
        n,
        ", ".join(f"{s['step']} {s['median_s']:.2f} s" for s in steps),
    )
    return {"events": n, "reps": p.step_reps, "steps": steps}


def bench_latency(run: Run, spark: Any, progress: Progress) -> dict[str, Any]:
    from cityos.streaming.jobs.aggregate import query_name, run_pipeline
    from cityos.streaming.sources.loadgen import Target, run_in_process

    p = run.params
    settings = run.settings("latency")
    topics = run.topics("latency")
    run.make_topics(topics)
    qname = query_name(topics.traffic)
    poller = CommitPoller(run.url, run.schema)
    poller.start()
    stop = threading.Event()
    failure: list[BaseException] = []

    def pipeline() -> None:
        try:
            run_pipeline(settings, until="stopped", spark=spark, stop_event=stop)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            failure.append(err)

    job = threading.Thread(target=pipeline, name="bench-pipeline", daemon=True)
    job.start()
    _wait(lambda: len(spark.streams.active) >= 2 or failure, 120, "the live queries to start")
    time.sleep(settings.trigger_seconds)  # past the first (empty) trigger
    stats = run_in_process(
        settings.kafka_bootstrap,
        "confluent",
        [Target(s, "traffic") for s in run.sensor_ids()],
        topics,
        rate=p.latency_rate,
        duration_s=p.latency_seconds,
        seed=5,
    )
    _wait(
        lambda: poller.valid_rows(qname) >= stats.delivered or failure,
        180,
        "the pipeline to commit every event",
    )
    stop.set()
    job.join(timeout=60)
    poller.stop.set()
    poller.join()
    if failure:
        raise failure[0]
    index = BatchIndex(
        read_batch_offsets(settings.state_dir / "checkpoints" / qname / "offsets", topics.traffic)
    )
    latencies, steady, unmatched = [], [], 0
    warm_until = None
    for part, offset, produced in read_back(settings.kafka_bootstrap, topics.traffic):
        seen = poller.seen.get((qname, index.batch_of(part, offset) or -1))
        if seen is None:
            unmatched += 1
            continue
        if warm_until is None:
            warm_until = produced + timedelta(seconds=p.latency_warmup_s)
        latency = (seen[0] - produced).total_seconds()
        latencies.append(latency)
        if produced >= warm_until:
            steady.append(latency)
    summary: dict[str, Any] = summarize(latencies) if latencies else {"n": 0}
    summary["after_warmup"] = {
        "warmup_s": p.latency_warmup_s,
        **(summarize(steady) if steady else {"n": 0}),
    }
    return {
        "target_rate": p.latency_rate,
        "achieved_rate": stats.achieved_rate,
        "seconds": stats.duration_s,
        "sent": stats.sent,
        "delivered": stats.delivered,
        "trigger_seconds": settings.trigger_seconds,
        "unmatched": unmatched,
        "batches": len([k for k in poller.seen if k[0] == qname]),
        **summary,
    }


def _wait(check: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)


def sink_rows(sensor_ids: Sequence[str], n: int) -> list[tuple[Any, ...]]:
    """``n`` traffic partial-sum rows over distinct (sensor, 5-minute window) keys."""
    rng = random.Random(13)  # noqa: S311 - reproducible rows
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=30)
    rows = []
    for i in range(n):
        ws = start + timedelta(minutes=5 * (i // len(sensor_ids)))
        readings = rng.randint(1, 10)
        vehicles = rng.randint(0, 60)
        rows.append(
            (
                sensor_ids[i % len(sensor_ids)],
                ws,
                ws + timedelta(minutes=5),
                vehicles,
                vehicles * rng.uniform(20, 50),
                vehicles,
                0.0,
                0,
                rng.uniform(0, 3),
                readings,
                readings,
            )
        )
    return rows


def bench_sink(run: Run) -> list[dict[str, Any]]:
    from cityos.streaming.jobs.sinks import BatchCommit, merge_batch

    rows = sink_rows(run.sensor_ids(), run.params.sink_rows)
    out = []
    with connect(run.url, run.schema) as conn:
        for batch_id, method in enumerate(("copy", "executemany")):
            conn.execute("TRUNCATE traffic_5m_acc, traffic_5m")
            conn.commit()
            commit = BatchCommit("bench-sink", batch_id, None, len(rows), 0)
            t0 = time.perf_counter()
            merge_batch(conn, commit, traffic=rows, method=method)  # type: ignore[arg-type]
            seconds = time.perf_counter() - t0
            out.append(
                {
                    "method": method,
                    "rows": len(rows),
                    "seconds": seconds,
                    "rows_per_s": rate(len(rows), seconds),
                }
            )
            log.info("sink %s: %.0f rows/s", method, out[-1]["rows_per_s"])
    return out


# ----------------------------------------------------------------------------- entry point
def run_benchmark(
    params: Params, *, keep: bool = False, on_phase: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Bring the stack up, run every phase, clean up; returns the report (a JSON-able dict)."""
    from cityos.stack import Stack
    from cityos.streaming.spark import spark_session

    Stack.from_env().up(create_topics=False)
    run = Run(load_settings(), params)
    phase = on_phase or (lambda name: log.info("bench: %s", name))
    started = datetime.now(UTC)
    phase(f"preparing schema {run.schema}")
    run.prepare_schema()
    spark = None
    listener = None
    try:
        pool = event_pool(run.sensor_ids())
        phase("producers")
        run.attempt("producer", lambda: bench_producers(run, pool))
        spark = spark_session(run.settings("e2e"), "cityos-bench")
        progress = Progress()
        listener = listen(spark, progress)
        phase("raw consume and end to end")
        run.attempt("end_to_end", lambda: bench_e2e(run, spark, progress, pool))
        phase("where a batch's time goes")
        run.attempt("steps", lambda: bench_steps(run, spark))
        phase("latency")
        run.attempt("latency", lambda: bench_latency(run, spark, progress))
        phase("PostgreSQL sink")
        run.attempt("sink", lambda: bench_sink(run))
    finally:
        if spark is not None and listener is not None:
            spark.streams.removeListener(listener)
        if not keep:
            run.cleanup()
    return {
        "run": run.name,
        "started": events.iso(started),
        "finished": events.iso(datetime.now(UTC)),
        "machine": machine_info(spark.version if spark else None),
        "parameters": {
            **asdict(params),
            "trigger_seconds": run.base.trigger_seconds,
            "kafka_partitions": run.base.kafka_partitions,
            "spark_master": run.base.spark_master,
            "shuffle_partitions": run.base.spark_shuffle_partitions,
        },
        "targets": TARGETS,
        "results": run.results,
        "errors": run.errors,
        "method": (__doc__ or "").split("How each figure is measured")[1].strip(),
        "kept": {"topics_prefix": run.name, "schema": run.schema} if keep else None,
    }
