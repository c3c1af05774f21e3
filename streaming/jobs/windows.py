"""Event-time windows of one micro-batch, reduced to additive partial sums.

A window's rows can arrive over many batches, so a batch never computes a mean: it emits sums and
counts that PostgreSQL adds into the accumulator tables; the serving rows are recomputed from the
accumulated totals (streaming/jobs/sql.py). Re-adding a batch would double count, which is why the
merge checks ``stream_commits`` first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cityos import events
from cityos.streaming.jobs.frames import as_utc

WINDOW_SECONDS = {events.TRAFFIC: 5 * 60, events.AIR: 3600}  # tumbling, aligned to the epoch
OTHER_WINDOW_S = 3600  # types without partial sums (noise): windows only for the batch's stats
TRAFFIC_WINDOW = f"{WINDOW_SECONDS[events.TRAFFIC]} seconds"
AIR_WINDOW = f"{WINDOW_SECONDS[events.AIR]} seconds"

# event field -> air_quality_1h column; each gets <column>_sum and <column>_n
AIR_MEASURES = {
    "pm25": "pm25",
    "pm10": "pm10",
    "no2": "no2",
    "o3": "o3",
    "so2": "so2",
    "co": "co",
    "temperature": "temperature_c",
    "relativeHumidity": "relative_humidity",
    "windSpeed": "wind_speed_ms",
}

TRAFFIC_PARTIALS = (
    "vehicles",  # Σ intensity (NULL intensity counts 0)
    "speed_x_vehicles",  # Σ speed × intensity, readings with a speed and vehicles
    "speed_vehicles",  # Σ intensity of those readings: the weight of the mean speed
    "speed_sum",  # Σ speed of readings without an intensity (speed-only detectors)
    "speed_n",
    "occupancy_sum",
    "occupancy_n",
    "readings",
)
AIR_PARTIALS = tuple(f"{c}_{part}" for c in AIR_MEASURES.values() for part in ("sum", "n")) + (
    "readings",
)


def _windowed(valid: DataFrame, event_type: str, duration: str) -> DataFrame:
    rows = valid.where(F.col("type") == event_type)
    return rows.withColumn("w", F.window("event_time", duration))


def _keys() -> list[Column]:
    return [
        F.col("sensor_id"),
        F.col("w.start").alias("window_start"),
        F.col("w.end").alias("window_end"),
    ]


def traffic_sums() -> list[Column]:
    """The partial sums (:data:`TRAFFIC_PARTIALS`) of a group of TrafficFlowObserved rows."""
    speed, n = F.col("averageVehicleSpeed"), F.col("intensity")
    weighted = speed.isNotNull() & (n > 0)
    unweighted = speed.isNotNull() & n.isNull()
    return [
        F.sum(F.coalesce(n, F.lit(0))).alias("vehicles"),
        F.sum(F.when(weighted, speed * n).otherwise(0.0)).alias("speed_x_vehicles"),
        F.sum(F.when(weighted, n).otherwise(0)).alias("speed_vehicles"),
        F.sum(F.when(unweighted, speed).otherwise(0.0)).alias("speed_sum"),
        F.count(F.when(unweighted, speed)).alias("speed_n"),
        F.sum(F.coalesce(F.col("occupancy"), F.lit(0.0))).alias("occupancy_sum"),
        F.count(F.col("occupancy")).alias("occupancy_n"),
        F.count(F.lit(1)).alias("readings"),
    ]


def air_sums() -> list[Column]:
    """The air partial sums (:data:`AIR_PARTIALS`) of a group of AirQualityObserved rows."""
    sums = []
    for name, column in AIR_MEASURES.items():
        sums.append(F.sum(F.coalesce(F.col(name), F.lit(0.0))).alias(f"{column}_sum"))
        sums.append(F.count(F.col(name)).alias(f"{column}_n"))
    return [*sums, F.count(F.lit(1)).alias("readings")]


SUMS = {events.TRAFFIC: (traffic_sums, TRAFFIC_PARTIALS), events.AIR: (air_sums, AIR_PARTIALS)}


def traffic_partials(valid: DataFrame) -> DataFrame:
    """Valid traffic rows -> one row of partial sums per (sensor, 5-minute window)."""
    rows = _windowed(valid, events.TRAFFIC, TRAFFIC_WINDOW)
    return rows.groupBy("sensor_id", "w").agg(*traffic_sums()).select(*_keys(), *TRAFFIC_PARTIALS)


def air_partials(valid: DataFrame) -> DataFrame:
    """Valid AirQualityObserved rows -> partial sums per (station, hour); noise is left out."""
    rows = _windowed(valid, events.AIR, AIR_WINDOW)
    return rows.groupBy("sensor_id", "w").agg(*air_sums()).select(*_keys(), *AIR_PARTIALS)


# ----------------------------------------------------------------------------- one batch
def batch_summary(judged: DataFrame, event_types: tuple[str, ...]) -> DataFrame:
    """Everything a micro-batch needs to know of itself, in one Spark job.

    One row per dead-letter ``reason`` (``sensor``, ``type``, ``window_start`` NULL), and one per
    valid (``sensor``, ``type``, ``window_start``) with ``n`` rows, the ``latest`` event time
    (epoch micros) and the partial sums of every type of ``event_types`` that has them (see
    :class:`BatchSummary`). Windows are the tumbling windows of :func:`traffic_partials` and
    :func:`air_partials` (aligned to the epoch: start = time - time mod width), computed by
    arithmetic so that types of different widths share one aggregation.

    Measured on batch reads of the benchmark's events (warm session, medians of 7, two runs
    each): as two jobs (rows per reason and sensor, then the partial sums) the stats and windows
    of an 800-event batch took 0.98-1.05 s, as this one 0.77-0.83 s; at 120k events 2.17-2.37 s
    against 2.11-2.33 s, no difference beyond the noise. It is a fixed cost saved per batch.
    """
    valid = F.col("reason").isNull()
    micros = F.unix_micros("event_time")
    width = F.lit(OTHER_WINDOW_S * 1_000_000)
    for event_type, seconds in WINDOW_SECONDS.items():
        width = F.when(F.col("type") == event_type, F.lit(seconds * 1_000_000)).otherwise(width)
    sums = [c for t in event_types if t in SUMS for c in SUMS[t][0]()]
    return judged.groupBy(
        "reason",
        F.when(valid, F.col("sensor_id")).alias("sensor"),
        F.when(valid, F.col("type")).alias("type"),
        F.when(valid, micros - F.pmod(micros, width)).alias("window_start"),
    ).agg(F.count(F.lit(1)).alias("n"), F.max(micros).alias("latest"), *sums)


@dataclass
class BatchSummary:
    """:func:`batch_summary`'s rows, sorted out: dead letters per reason; per sensor its valid
    rows and newest event time; the UTC dates of the valid rows (the lake's partitions); the
    partial-sum rows per type, ``(sensor_id, window_start, window_end, *partials)``."""

    by_reason: dict[str, int] = field(default_factory=dict)
    sensors: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    dates: set[str] = field(default_factory=set)
    partials: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: list[Any]) -> BatchSummary:
        out = cls()
        for r in rows:
            if r.reason is not None:
                out.by_reason[r.reason] = r.n
                continue
            n, latest = out.sensors.get(r.sensor, (0, None))
            newest = as_utc(r.latest)
            out.sensors[r.sensor] = (n + r.n, newest if latest is None else max(latest, newest))
            start = as_utc(r.window_start)
            out.dates.add(start.strftime("%Y-%m-%d"))  # a window never spans two UTC days
            if r.type in SUMS:
                end = start + timedelta(seconds=WINDOW_SECONDS[r.type])
                columns = SUMS[r.type][1]
                out.partials.setdefault(r.type, []).append(
                    (r.sensor, start, end, *(r[c] for c in columns))
                )
        return out

    @property
    def valid(self) -> int:
        return sum(n for n, _ in self.sensors.values())

    @property
    def dead(self) -> int:
        return sum(self.by_reason.values())

    @property
    def latest(self) -> datetime | None:
        return max((t for _, t in self.sensors.values()), default=None)
