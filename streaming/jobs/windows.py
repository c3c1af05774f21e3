"""Event-time windows of one micro-batch, reduced to additive partial sums.

A window's rows can arrive over many batches, so a batch never computes a mean: it emits sums and
counts that PostgreSQL adds into the accumulator tables; the serving rows are recomputed from the
accumulated totals (streaming/jobs/sql.py). Re-adding a batch would double count, which is why the
merge checks ``stream_commits`` first.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cityos import events

TRAFFIC_WINDOW = "5 minutes"
AIR_WINDOW = "1 hour"

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


def traffic_partials(valid: DataFrame) -> DataFrame:
    """Valid traffic rows -> one row of partial sums per (sensor, 5-minute window)."""
    rows = _windowed(valid, events.TRAFFIC, TRAFFIC_WINDOW)
    speed, n = F.col("averageVehicleSpeed"), F.col("intensity")
    weighted = speed.isNotNull() & (n > 0)
    unweighted = speed.isNotNull() & n.isNull()
    return rows.groupBy("sensor_id", "w").agg(
        F.sum(F.coalesce(n, F.lit(0))).alias("vehicles"),
        F.sum(F.when(weighted, speed * n).otherwise(0.0)).alias("speed_x_vehicles"),
        F.sum(F.when(weighted, n).otherwise(0)).alias("speed_vehicles"),
        F.sum(F.when(unweighted, speed).otherwise(0.0)).alias("speed_sum"),
        F.count(F.when(unweighted, speed)).alias("speed_n"),
        F.sum(F.coalesce(F.col("occupancy"), F.lit(0.0))).alias("occupancy_sum"),
        F.count(F.col("occupancy")).alias("occupancy_n"),
        F.count(F.lit(1)).alias("readings"),
    ).select(*_keys(), *TRAFFIC_PARTIALS)


def air_partials(valid: DataFrame) -> DataFrame:
    """Valid AirQualityObserved rows -> partial sums per (station, hour); noise is left out."""
    rows = _windowed(valid, events.AIR, AIR_WINDOW)
    sums = []
    for field, column in AIR_MEASURES.items():
        sums.append(F.sum(F.coalesce(F.col(field), F.lit(0.0))).alias(f"{column}_sum"))
        sums.append(F.count(F.col(field)).alias(f"{column}_n"))
    return (
        rows.groupBy("sensor_id", "w")
        .agg(*sums, F.count(F.lit(1)).alias("readings"))
        .select(*_keys(), *AIR_PARTIALS)
    )
