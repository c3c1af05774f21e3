"""`cityos demo`: the whole pipeline on the embedded stack, end to end, in a few minutes.

1. start Kafka and PostgreSQL (idempotent) and apply the migrations;
2. load the Cologne and Beijing zones, register the twin's intersections, phases and sensors;
3. start the Spark job live, then, in a process of its own, replay the Beijing December 2016
   smog episode and run the Cologne twin for a few simulated hours (240x real time by default),
   both into Kafka;
4. drain what is left through Spark, then print what landed where.

Event times end at about "now": the twin's simulated t=0 is set ``hours`` before the start and
the replay is rebased so its last hour is the current one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cityos.settings import Settings
from cityos.topics import Topics

if TYPE_CHECKING:
    from cityos.stack import Stack

log = logging.getLogger(__name__)

SERVING_TABLES = [
    "cities",
    "zones",
    "intersections",
    "signal_phases",
    "sensors",
    "traffic_5m",
    "air_quality_1h",
    "alerts",
]
# The Beijing replay: December 2016 up to the end of its smog episode (Beijing time), rebased to
# end now. Twenty days give the stations' detectors enough history (200 hours) to forecast, so
# the end of the episode shows predictive alerts as well as threshold ones.
BEIJING_FROM = datetime(2016, 12, 1, 16, tzinfo=UTC)
BEIJING_TO = datetime(2016, 12, 21, 16, tzinfo=UTC)


@dataclass
class DemoReport:
    simulated_s: float = 0.0
    traffic_events: int = 0
    environment_events: int = 0
    replay_events: int = 0
    delivered: int = 0
    failed: int = 0
    processed: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    table_rows: dict[str, int] = field(default_factory=dict)
    latest_traffic: list[tuple[Any, ...]] = field(default_factory=list)
    latest_air: list[tuple[Any, ...]] = field(default_factory=list)
    alerts: list[tuple[Any, ...]] = field(default_factory=list)
    alert_counts: dict[str, int] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    charts: list[Path] = field(default_factory=list)


Say = Callable[[str], None]


@dataclass(frozen=True)
class Sources:
    """What the demo sends: the Beijing replay of ``beijing_from``..``beijing_to`` (all at once,
    rebased to end now), then ``hours`` simulated hours of the twin at ``speedup``."""

    hours: float
    speedup: float
    beijing_from: datetime = BEIJING_FROM
    beijing_to: datetime = BEIJING_TO


# What a demo run produces; a fresh run clears it so that it can be repeated. Sensor watermarks
# in particular: a second run's twin starts hours before now again, which the first run's
# watermarks would otherwise judge late.
STREAM_TABLES = [
    "traffic_5m",
    "air_quality_1h",
    "traffic_5m_acc",
    "air_quality_1h_acc",
    "stream_commits",
    "sensor_watermarks",
    "scoring_progress",
    "anomaly_scores",
    "forecasts",
    "zone_forecasts",
    "detector_state",
    "alert_state",
    "alert_outbox",
    "alerts",
    "model_registry",
]  # models trained on earlier runs' data go with it


def reset_streams(settings: Settings, say: Say) -> None:
    """Empty the topics, checkpoints, lake and streamed tables of earlier runs (not the zones)."""
    import shutil

    from psycopg import sql

    from cityos.db import connect
    from cityos.stack import delete_topics, ensure_topics
    from cityos.stack.kafka import admin_client

    topics = Topics(settings.topic_prefix).all()
    delete_topics(settings.kafka_bootstrap, topics)
    with admin_client(settings.kafka_bootstrap) as admin:  # deletion completes asynchronously
        deadline = time.monotonic() + 30
        while set(topics) & set(admin.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.2)
    ensure_topics(
        settings.kafka_bootstrap,
        topics,
        partitions=settings.kafka_partitions,
        retention_ms=settings.kafka_retention_hours * 3600 * 1000,
    )
    for folder in (settings.state_dir / "checkpoints", settings.lake_dir, settings.model_dir):
        shutil.rmtree(folder, ignore_errors=True)  # type: ignore[arg-type]
    with connect(
        settings.database_url.get_secret_value(), settings.database_schema, autocommit=True
    ) as conn:
        conn.execute(
            sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, STREAM_TABLES)))
        )
    say("cleared the streams of earlier runs (topics, checkpoints, lake, streamed tables, models)")


def register(settings: Settings, say: Say) -> Any:
    """Zones of Cologne and Beijing, the twin's signals and sensors, Beijing's stations."""
    from cityos.db import connect
    from cityos.streaming.sources import replay, twin
    from cityos.streaming.sources.registry import (
        open_city,
        register_twin,
        write_city,
        write_sensors,
    )

    prepared = twin.prepare(settings.twin_network, settings.data_dir)
    beijing = open_city("beijing", settings.data_dir)
    with connect(
        settings.database_url.get_secret_value(), settings.database_schema, autocommit=True
    ) as conn:
        counts = register_twin(conn, prepared.city, prepared.layout, prepared.stations)
        write_city(conn, beijing)
        stations = write_sensors(conn, beijing, replay.beijing_sensors(settings.data_dir))
    say(
        f"registered Cologne ({counts['intersections']} intersections, {counts['sensors']} "
        f"sensors) and Beijing ({stations} air-quality stations)"
    )
    return prepared


def produce(
    settings: Settings,
    prepared: Any,
    sources: Sources,
    report: DemoReport,
    stop: threading.Event,
    on_progress: Callable[[float], None],
) -> None:
    """The Beijing replay (all at once), then the twin, paced (see :class:`Sources`)."""
    from cityos.streaming.producer import make_producer
    from cityos.streaming.sources import replay, twin

    topics = Topics(settings.topic_prefix)
    duration = sources.hours * 3600.0
    producer = make_producer(settings.kafka_bootstrap, settings.producer_client)
    try:
        records, _missing = replay.beijing_records(
            settings.data_dir, sources.beijing_from, sources.beijing_to
        )
        sent = replay.publish(records, producer, topics, rebase=True, stop=stop)
        report.replay_events = sent.sent
        start = twin.default_start(sources.speedup, duration)
        with twin.Twin(
            prepared.scenario,
            prepared.layout,
            prepared.stations,
            work_dir=settings.state_dir / "twin",
        ) as sim:
            stats = twin.run(
                sim,
                producer,
                topics,
                start=start,
                speedup=sources.speedup,
                duration_s=duration,
                stop=stop,
                progress=on_progress,
            )
        report.simulated_s = stats.simulated_s
        report.traffic_events = stats.traffic_events
        report.environment_events = stats.environment_events
    finally:
        producer.flush()
        producer.close()
        report.delivered = producer.stats.sent
        report.failed = producer.stats.failed


def produce_in_process(
    settings: Settings,
    prepared: Any,
    sources: Sources,
    report: DemoReport,
    on_progress: Callable[[float], None],
) -> None:
    """:func:`produce` in a child process, as sources run in a deployment.

    In the Spark driver's interpreter the twin's loop would hold the GIL that every Py4J call of
    a micro-batch waits for (see ``streaming/README.md``, "The fixed cost of a batch, and the
    GIL"). The child reports its progress and, at the end, its counts into ``report``. Ctrl-C
    reaches both processes: the child stops its sources and reports what it sent, then this
    raises KeyboardInterrupt as :func:`produce` would.
    """
    import dataclasses
    import multiprocessing
    import os
    import signal

    ctx = multiprocessing.get_context("spawn")  # no forked copy of the JVM gateway's threads
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_produce_child,
        # without the city's geo data: the sources need none of it, and it is the heavy part
        args=(send, settings, dataclasses.replace(prepared, city=None), sources),
        kwargs={
            "log_levels": {name: logging.getLogger(name).level for name in ("", "kafka", "py4j")},
        },
        name="cityos-sources",
        daemon=True,
    )
    child.start()
    send.close()
    interrupted: list[int] = []

    def on_interrupt(signum: int, _frame: Any) -> None:
        # not a KeyboardInterrupt in the middle of reading a message: the child stops its
        # sources (it may have had the signal already) and reports what it sent
        interrupted.append(signum)
        if child.pid is not None:
            os.kill(child.pid, signal.SIGINT)

    main = threading.current_thread() is threading.main_thread()  # where handlers may be set
    previous = signal.signal(signal.SIGINT, on_interrupt) if main else None
    outcome: dict[str, Any] | str | None = None
    try:
        while outcome is None:
            if not receive.poll(0.2):
                if not child.is_alive() and not receive.poll():
                    outcome = f"its process ended with code {child.exitcode} before reporting"
                continue
            try:
                kind, payload = receive.recv()
            except EOFError:
                outcome = f"its process ended with code {child.exitcode} before reporting"
                continue
            if kind == "progress":
                on_progress(payload)
            else:
                outcome = payload
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
        child.join(timeout=30)
    if isinstance(outcome, str):
        from cityos.errors import CityOSError

        raise CityOSError(f"the demo's sources failed: {outcome}")
    for name, value in outcome.items():
        setattr(report, name, value)
    if interrupted:
        raise KeyboardInterrupt


def _produce_child(
    send: Any,
    settings: Settings,
    prepared: Any,
    sources: Sources,
    *,
    log_levels: dict[str, int],
) -> None:
    """The child's side of :func:`produce_in_process`: progress, then the counts (or the
    error's text). It logs as the parent does (the CLI quiets the client libraries)."""
    import signal

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, level in log_levels.items():
        logging.getLogger(name).setLevel(level)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())  # stop cleanly, flush, report
    report = DemoReport()
    outcome: dict[str, Any] | str
    try:
        produce(
            settings,
            prepared,
            sources,
            report,
            stop,
            lambda sim_s: send.send(("progress", sim_s)),
        )
        outcome = {
            name: getattr(report, name)
            for name in (
                "simulated_s",
                "traffic_events",
                "environment_events",
                "replay_events",
                "delivered",
                "failed",
            )
        }
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises
        outcome = f"{type(err).__name__}: {err}"
    send.send(("done", outcome))
    send.close()


def dead_letter_counts(settings: Settings) -> dict[str, int]:
    """Messages in each dead-letter topic: end minus start offsets, summed over partitions."""
    from kafka import KafkaConsumer, TopicPartition

    topics = Topics(settings.topic_prefix)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        counts = {}
        for source in topics.sources():
            name = topics.dlq(source)
            parts = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or []]
            ends, begins = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
            counts[name] = sum(ends[p] - begins[p] for p in parts)
        return counts
    finally:
        consumer.close()


LATEST_TRAFFIC = """
SELECT i.name, count(*) AS approaches, max(t.window_end) AS window_end,
       sum(t.vehicle_count) AS vehicles, round(avg(t.avg_speed_kmh)::numeric, 1) AS speed_kmh,
       round(avg(t.occupancy)::numeric, 3) AS occupancy,
       round(avg(t.congestion_index)::numeric, 3) AS congestion
FROM traffic_5m t JOIN sensors s USING (sensor_id) JOIN intersections i USING (intersection_id)
WHERE t.window_start = (SELECT max(window_start) FROM traffic_5m t2
                        WHERE t2.sensor_id = t.sensor_id AND t2.window_end <= now())
GROUP BY i.name ORDER BY congestion DESC NULLS LAST
"""

LATEST_AIR = """
SELECT name, city_id, window_start, pm25, no2, aqi, aqi_category FROM (
  SELECT s.name, s.city_id, t.window_start, round(t.pm25::numeric, 1) AS pm25,
         round(t.no2::numeric, 1) AS no2, t.aqi, t.aqi_category,
         row_number() OVER (PARTITION BY s.city_id ORDER BY t.aqi DESC NULLS LAST, s.name) AS n
  FROM air_quality_1h t JOIN sensors s USING (sensor_id)
  WHERE t.window_start = (SELECT max(window_start) FROM air_quality_1h t2
                          WHERE t2.sensor_id = t.sensor_id AND t2.window_end <= now())
) worst WHERE n <= 4 ORDER BY city_id, aqi DESC NULLS LAST
"""


ALERTS = """
SELECT a.severity, a.status, a.kind, coalesce(s.name, i.name, z.name, '-') AS place, a.message,
       a.started_at
FROM alerts a LEFT JOIN sensors s USING (sensor_id)
LEFT JOIN intersections i ON i.intersection_id = a.intersection_id
LEFT JOIN zones z ON z.zone_id = a.zone_id
ORDER BY a.status = 'resolved', a.severity = 'critical' DESC, a.started_at DESC LIMIT 12
"""


def summarise(settings: Settings, report: DemoReport) -> None:
    from psycopg import sql

    from cityos.db import connect

    with connect(
        settings.database_url.get_secret_value(), settings.database_schema, autocommit=True
    ) as conn:
        for table in SERVING_TABLES:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            report.table_rows[table] = (conn.execute(query).fetchone() or (0,))[0]
        report.latest_traffic = conn.execute(LATEST_TRAFFIC).fetchall()
        report.latest_air = conn.execute(LATEST_AIR).fetchall()
        report.alerts = conn.execute(ALERTS).fetchall()
        report.alert_counts = dict(
            conn.execute("SELECT status, count(*) FROM alerts GROUP BY status").fetchall()
        )
        report.scored = dict(
            zip(
                ("anomaly scores", "forecasts", "zone forecasts"),
                conn.execute(
                    "SELECT (SELECT count(*) FROM anomaly_scores),"
                    " (SELECT count(*) FROM forecasts), (SELECT count(*) FROM zone_forecasts)"
                ).fetchone()
                or (0, 0, 0),
                strict=True,
            )
        )
    report.dead_letters = dead_letter_counts(settings)


def run_demo(
    settings_factory: Callable[[], Settings],
    *,
    hours: float,
    speedup: float,
    console: Any,
    fresh: bool = True,
    stack: Stack | None = None,
    beijing_from: datetime = BEIJING_FROM,
) -> DemoReport:
    """Everything `make demo` does; ``console`` is a rich Console for progress and tables.

    ``stack`` is the embedded stack to start (default: the one the environment describes);
    ``beijing_from`` where the Beijing replay starts (it ends with the smog episode)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cityos.stack import Stack
    from cityos.streaming.jobs.aggregate import run_pipeline

    report = DemoReport()
    say = console.log
    clock = time.monotonic()
    with console.status("starting Kafka and PostgreSQL") as status:
        (stack or Stack.from_env()).up(progress=lambda msg: status.update(msg))
    report.seconds["stack"] = time.monotonic() - clock
    settings = settings_factory()
    say(
        f"stack up: Kafka at {settings.kafka_bootstrap}, PostgreSQL at "
        f"{_redacted(settings.database_url.get_secret_value())}"
    )

    if fresh:
        with console.status("clearing earlier runs"):
            reset_streams(settings, say)
    clock = time.monotonic()
    with console.status("loading zones and registering sensors"):
        prepared = register(settings, say)
    report.seconds["register"] = time.monotonic() - clock

    stop_spark = threading.Event()
    started: list[Any] = []
    ready = threading.Event()
    failure: list[BaseException] = []

    def on_started(jobs: list[Any]) -> None:
        started.extend(jobs)
        ready.set()

    def spark_live() -> None:
        try:
            run_pipeline(settings, until="stopped", stop_event=stop_spark, on_started=on_started)
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            failure.append(err)
            ready.set()

    def processed() -> int:
        return sum(job.merged_rows + job.merged_dead for job in started)

    clock = time.monotonic()
    spark_thread = threading.Thread(target=spark_live, name="spark-live", daemon=True)
    spark_thread.start()
    with console.status("starting Spark (the streaming queries)"):
        ready.wait()
    if failure:
        raise failure[0]
    report.seconds["spark start"] = time.monotonic() - clock
    say(
        f"Spark: {', '.join(job.name for job in started)} running, "
        f"a micro-batch every {settings.trigger_seconds:g} s"
    )

    clock = time.monotonic()
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            twin_task = bar.add_task(f"twin {settings.twin_network}", total=hours * 60, detail="")
            spark_task = bar.add_task("Spark → PostgreSQL", total=None, detail="")

            def on_progress(sim_s: float) -> None:
                bar.update(
                    twin_task,
                    completed=sim_s / 60,
                    detail=f"{sim_s / 60:.0f}/{hours * 60:.0f} simulated min",
                )
                bar.update(spark_task, detail=f"{processed():,} events merged")

            try:
                produce_in_process(
                    settings,
                    prepared,
                    Sources(hours, speedup, beijing_from=beijing_from),
                    report,
                    on_progress,
                )
            except KeyboardInterrupt:
                say(
                    "interrupted: sources stopped; Spark merges what was sent "
                    "(Ctrl-C again to stop it now)"
                )
            sent = report.delivered
            bar.update(spark_task, total=sent)
            deadline = time.monotonic() + 300
            while processed() < sent and time.monotonic() < deadline and not failure:
                bar.update(
                    spark_task,
                    completed=processed(),
                    detail=f"{processed():,}/{sent:,} events merged",
                )
                time.sleep(0.5)
            bar.update(
                spark_task, completed=processed(), detail=f"{processed():,}/{sent:,} events merged"
            )
    except KeyboardInterrupt:
        say("stopping Spark now; what it had not merged is drained from its checkpoint")
    finally:
        stop_spark.set()
        spark_thread.join()
    if failure:
        raise failure[0]
    report.seconds["run"] = time.monotonic() - clock
    report.processed = processed()
    say(
        f"sent {report.delivered:,} events (twin {report.traffic_events:,} traffic + "
        f"{report.environment_events:,} environment, Beijing replay {report.replay_events:,}); "
        f"Spark merged or dead-lettered {report.processed:,}"
    )
    if report.processed < report.delivered:  # the live run was cut short: finish from checkpoint
        with console.status("Spark: draining what is left"):
            run_pipeline(settings, until="available")
    summarise(settings, report)
    report.charts = draw_charts(settings)
    return report


def _redacted(url: str) -> str:
    """postgresql://user:***@host:port/db — never print the password."""
    head, _, tail = url.partition("://")
    creds, at, rest = tail.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{head}://{user}:***@{rest}" if at else url


def draw_charts(settings: Settings) -> list[Path]:
    from cityos.charts import demo_charts

    return demo_charts(settings)
