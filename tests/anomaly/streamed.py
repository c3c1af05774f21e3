"""Real events through the real pipeline: Kafka -> the streaming job -> PostgreSQL and the lake.

Beijing PRSA readings (at their own times, not rebased) and, optionally, an hour of the Cologne
twin (SUMO: counts, vehicle-weighted speeds, occupancy, air and noise) are published to the
test's topics; the streaming job then runs with availableNow, in several micro-batches, into the
test's schema and lake. The serving tables and the lake hold the same events afterwards, as in
production.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cityos.db import connect
from cityos.settings import SHARED_DIR, Settings
from cityos.topics import Topics

DATA = SHARED_DIR / "data"
BATCH_OFFSETS = 1_500  # several micro-batches: windows split across batches, as live


@dataclass(frozen=True)
class Streamed:
    """What went through the pipeline."""

    settings: Settings
    air_from: datetime
    air_to: datetime
    beijing_events: int
    twin_events: int
    batches: int


def register(conn: Any, twin: Any | None) -> None:
    """Beijing's city, zones and stations; the twin's sensors and speed limits when given."""
    from cityos.streaming.sources.registry import (
        open_city,
        register_twin,
        write_city,
        write_sensors,
    )
    from cityos.streaming.sources.replay import beijing_sensors

    beijing = open_city("beijing", DATA)
    write_city(conn, beijing)
    write_sensors(conn, beijing, beijing_sensors(DATA))
    if twin is not None:
        register_twin(conn, twin.city, twin.layout, twin.stations)


def stream(
    settings: Settings,
    spark: Any,
    air_from: datetime,
    air_to: datetime,
    twin_start: datetime | None = None,
    twin_seconds: float = 3600,
) -> Streamed:
    """Publish the readings of ``[air_from, air_to)`` (and the twin's hour) and run the job."""
    from cityos.streaming.jobs.aggregate import run_pipeline
    from cityos.streaming.producer import make_producer
    from cityos.streaming.sources import replay, twin

    prepared = twin.prepare("cologne8", DATA) if twin_start is not None else None
    with connect(
        settings.database_url.get_secret_value(), settings.database_schema, autocommit=True
    ) as conn:
        register(conn, prepared)
    topics = Topics(settings.topic_prefix)
    producer = make_producer(settings.kafka_bootstrap)
    try:
        records, _ = replay.beijing_records(DATA, air_from, air_to)
        sent = replay.publish(records, producer, topics, rebase=False).sent
        twin_events = 0
        if prepared is not None:
            with twin.Twin(prepared.scenario, prepared.layout, prepared.stations) as sim:
                stats = twin.run(
                    sim,
                    producer,
                    topics,
                    start=twin_start,
                    speedup=math.inf,
                    duration_s=twin_seconds,
                )
            twin_events = stats.traffic_events + stats.environment_events
        producer.flush(120)
    finally:
        producer.close()
    jobs = run_pipeline(settings, until="available", spark=spark)
    return Streamed(
        settings, air_from, air_to, sent, twin_events, sum(j.merged_batches for j in jobs)
    )


def stream_settings(base: dict[str, Any], **more: Any) -> Settings:
    """Settings of a streamed run: no scoring (not under test here), small micro-batches."""
    from cityos.settings import load_settings

    return load_settings(**base, score_windows=False, max_offsets_per_trigger=BATCH_OFFSETS, **more)
