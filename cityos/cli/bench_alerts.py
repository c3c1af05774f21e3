"""`cityos bench alerts`: event -> alert row latency through Kafka, Spark and the score stage.

Against the running stack (started when it is not healthy), in a schema, topic prefix and state
folder of the run's own (removed afterwards unless ``--keep``): Beijing's zones and its 12 PRSA
stations are registered, the streaming job runs live (a micro-batch every ``trigger_seconds``),
and a real winter of hourly readings is replayed into Kafka at ``--speed`` data seconds per wall
second, rebased to end now. The air-quality rule fires on the smog hours.

An hourly window closes when its station's newest event is ``air_watermark`` (2 h) past the
window's end, so the event that makes an alert possible is the first one of that station with an
event time at or after window end + 2 h. Per fired alert, latency = the moment its ``firing``
transition was written (``alert_outbox.created_at``, the transaction that wrote the alert row) -
that closing event's Kafka timestamp (the producer's CreateTime, kept in the lake). One host,
one clock. Also printed: windows and scores written, and the detectors' scoring rate inside the
job (scored windows x metrics / seconds spent in the score stage).

Printed, never asserted: a benchmark on a shared 2-core machine is not a test.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(log_path=False)
log = logging.getLogger(__name__)
DEFAULT_REPORT = Path("reports/bench-alerts.json")
FIRST = datetime(2013, 11, 24, 16, tzinfo=UTC)  # Beijing winter: smog episodes in December


def register(bench_app: typer.Typer) -> None:
    bench_app.command("alerts")(bench_alerts)


def bench_alerts(
    days: Annotated[float, typer.Option(min=1.0, help="days of Beijing data to replay")] = 21.0,
    speed: Annotated[float, typer.Option(min=60.0, help="data seconds per wall second")] = 4
    * 3600.0,
    report: Annotated[Path, typer.Option(help="JSON report")] = DEFAULT_REPORT,
    keep: Annotated[bool, typer.Option(help="keep the run's schema, topics and state")] = False,
) -> None:
    """Event -> alert row latency (p50/p95) on a live replay of Beijing's winter air."""
    from cityos.cli.bench import publish
    from cityos.cli.bench_control import _drop_schema
    from cityos.cli.bench_nlq import latency
    from cityos.cli.nlq_eval import stack_settings
    from cityos.db import connect, migrate
    from cityos.stack import delete_topics, ensure_topics
    from cityos.streaming.jobs.aggregate import parse_duration, run_pipeline
    from cityos.streaming.producer import make_producer
    from cityos.streaming.sources import replay
    from cityos.streaming.sources.registry import open_city, write_city, write_sensors
    from cityos.topics import Topics

    base = stack_settings(console.log)
    run_id = uuid.uuid4().hex[:8]
    schema, topics = f"bench_alerts_{run_id}", Topics(prefix=f"bench{run_id}.")
    state = base.state_dir / "bench" / f"alerts-{run_id}"
    settings = base.model_copy(
        update={
            "database_schema": schema,
            "topic_prefix": topics.prefix,
            "state_dir": state,
            "lake_dir": state / "lake",
            "model_dir": state / "models",
        }
    )
    url = settings.database_url.get_secret_value()
    lateness = parse_duration(settings.air_watermark, "CITYOS_AIR_WATERMARK")
    errors: dict[str, str] = {}
    result: dict[str, Any] = {}
    with ExitStack() as cleanup:
        migrate(url, schema)
        names = topics.all()
        ensure_topics(
            settings.kafka_bootstrap,
            names,
            partitions=settings.kafka_partitions,
            retention_ms=settings.kafka_retention_hours * 3_600_000,
        )
        if not keep:
            cleanup.callback(shutil.rmtree, state, True)
            cleanup.callback(delete_topics, settings.kafka_bootstrap, names)
            cleanup.callback(_drop_schema, url, schema)
        city = open_city("beijing", settings.data_dir)
        with connect(url, schema, autocommit=True) as conn:
            write_city(conn, city)
            write_sensors(conn, city, replay.beijing_sensors(settings.data_dir))
        records, _ = replay.beijing_records(settings.data_dir, FIRST, FIRST + timedelta(days=days))
        console.log(
            f"schema {schema}; replaying {len(records):,} hourly readings "
            f"({days:g} days) at {speed:g}x"
        )

        stop, started, failure = threading.Event(), threading.Event(), []
        jobs: list[Any] = []

        def on_started(topic_jobs: list[Any]) -> None:
            jobs.extend(topic_jobs)
            started.set()

        def live() -> None:
            try:
                run_pipeline(settings, until="stopped", stop_event=stop, on_started=on_started)
            except BaseException as err:  # noqa: BLE001 - reported below
                failure.append(err)
                started.set()

        spark = threading.Thread(target=live, name="bench-alerts-spark", daemon=True)
        spark.start()
        started.wait()
        if failure:
            raise failure[0]
        producer = make_producer(settings.kafka_bootstrap, settings.producer_client)
        clock = time.monotonic()
        try:
            sent = replay.publish(records, producer, topics, speed=speed, rebase=True)
        finally:
            producer.flush()
            producer.close()
        console.log(
            f"sent {sent.sent:,} events in {time.monotonic() - clock:.1f} s; waiting "
            "for the job to merge and score them"
        )
        _drain(settings, schema, sent.sent, lateness)
        stop.set()
        spark.join()
        if failure:
            errors["pipeline"] = str(failure[0])
        samples, fired = _latencies(settings, schema, lateness)
        with connect(url, schema) as conn:
            windows, scores = conn.execute(
                "SELECT (SELECT count(*) FROM air_quality_1h), (SELECT count(*) FROM"
                " anomaly_scores)"
            ).fetchone() or (0, 0)
        score_s = sum(j.score_seconds for j in jobs)
        result = {
            "run": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": {"cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
            "config": {
                "days": days,
                "speed": speed,
                "stations": 12,
                "trigger_seconds": settings.trigger_seconds,
                "air_watermark": settings.air_watermark,
            },
            "results": {
                "event_to_alert": latency(samples),
                "alerts_fired": fired,
                "events": sent.sent,
                "windows": windows,
                "anomaly_scores": scores,
                "score_stage_s": round(score_s, 2),
                "scores_per_s": round(scores / score_s, 1) if score_s else None,
            },
            "errors": errors,
            "method": __doc__,
        }
    publish(console, _table(result), result, report)


def _drain(settings: Any, schema: str, events: int, lateness: timedelta) -> None:
    """Wait until every event is merged and every closed window scored (or 5 minutes)."""
    from cityos.db import connect

    url = settings.database_url.get_secret_value()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with connect(url, schema) as conn:
            merged, left = conn.execute(
                "SELECT (SELECT coalesce(sum(valid_rows + dead_letters), 0) FROM stream_commits),"
                " (SELECT count(*) FROM air_quality_1h a JOIN sensor_watermarks w USING"
                " (sensor_id) LEFT JOIN scoring_progress p ON p.stream = 'air' AND"
                " p.sensor_id = a.sensor_id WHERE a.window_end <= w.max_event_time - %s"
                " AND (p.scored_until IS NULL OR a.window_end > p.scored_until))",
                (lateness,),
            ).fetchone() or (0, 1)
        if merged >= events and left == 0:
            return
        time.sleep(1.0)
    log.warning("not all events merged and scored within 5 minutes")


def _latencies(settings: Any, schema: str, lateness: timedelta) -> tuple[list[float], int]:
    """Per fired alert: firing row written - Kafka timestamp of the event that closed it."""
    import pandas as pd
    import pyarrow.dataset as ds

    from cityos.alerting.events import AlertEvent
    from cityos.db import connect
    from cityos.topics import Topics

    lake = settings.lake_dir / Topics(settings.topic_prefix).environment
    rows = (
        ds.dataset(str(lake), format="parquet", partitioning="hive")
        .to_table(columns=["sensor_id", "event_time", "kafka_timestamp"])
        .to_pandas()
    )
    for column in ("event_time", "kafka_timestamp"):  # Spark's Parquet stamps carry no zone
        rows[column] = pd.to_datetime(rows[column], utc=True)
    by_sensor = {s: g.sort_values("kafka_timestamp") for s, g in rows.groupby("sensor_id")}
    with connect(settings.database_url.get_secret_value(), schema) as conn:
        firing = conn.execute(
            "SELECT payload, created_at FROM alert_outbox WHERE event_id LIKE 'aqi:%:firing:%'"
        ).fetchall()
    samples = []
    for payload, written in firing:
        event = AlertEvent.from_json(bytes(payload))
        events = by_sensor.get(event.alert.sensor_id)
        if events is None:
            continue
        closing = events[events["event_time"] >= event.at + lateness]
        if closing.empty:
            continue
        produced = closing["kafka_timestamp"].iloc[0].to_pydatetime()
        samples.append((written - produced).total_seconds() * 1000)
    return samples, len(firing)


def _table(result: dict[str, Any]) -> Table:
    r, machine = result["results"], result["machine"]
    table = Table(
        title=f"alert benchmark {result['run']} ({machine['cores']} cores, load "
        f"{machine['load_avg_1m']:.1f})"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    lat = r["event_to_alert"]
    table.add_row(
        "event -> alert row, p50 / p95 / max ms",
        f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} / {lat['max_ms']:.0f} (n={lat['n']})",
    )
    table.add_row("AQI alerts fired", str(r["alerts_fired"]))
    table.add_row("events replayed / hourly windows", f"{r['events']:,} / {r['windows']:,}")
    table.add_row("anomaly scores written", f"{r['anomaly_scores']:,}")
    table.add_row(
        "score stage seconds / scores per s", f"{r['score_stage_s']} / {r['scores_per_s']}"
    )
    return table
