"""Retrain the per-sensor anomaly detectors for a data interval; promote only if better.

Called by the ``retrain_anomaly_models`` DAG (and ``cityos anomaly retrain``). For the interval
``[start, end)``:

1. the closed windows of every sensor over ``lookback`` up to the interval's end are computed from
   the lake's raw events (``streaming/lake_windows.py``: the streaming job's own window, merge and
   AQI code over the events of those dates, so they are the numbers the streaming scorer sees in
   the serving tables); a lake with no events of the interval itself fails the run, naming the
   folder and the interval (Airflow retries; the streaming job may be behind). The last
   ``holdout`` of the interval is held out;
2. a **candidate** detector per sensor and metric learns the training part; the **production**
   model's detectors (when there is one) are brought up to the same point from their own state;
3. both score the held-out windows as a stream (one-step forecasts before each point). The
   measure is the mean absolute scaled error of those forecasts (MASE: error over the mean
   absolute step of the series, so sensors of different scales weigh alike), with the share of
   windows flagged (score >= 0.9) alongside it;
4. the candidate, with the held-out windows learnt too, is saved and registered; it is promoted
   only if its MASE beats production's (or nothing is in production).

Production is only ever compared with, and replaced by, a newer model: when it was trained up to
the interval's end or later (a rerun of an older day, a backfill), the candidate is registered as
``candidate`` with a note and production is left alone; when it learnt part of the held-out period
it cannot be scored fairly there, so nothing is promoted either (promote by hand:
``cityos anomaly promote``). Statuses of other versions never change except by a promotion.

The version name (:func:`model_version`) identifies the training: the interval, the look-back,
the held-out period, the detector configuration and a digest of the windows learnt. A rerun or
retry of the identical training finds its version registered and changes nothing (no files, no
status, no promotion time); one with different inputs (another look-back, late events that
reached the lake since) is a new version, compared as above. A version's folder is written under a
hidden name and renamed into place, never rewritten. The look-back plus the held-out period and a
day must fit in the lake's retention (``lake_retention_days``), else the run is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from cityos.anomaly.detector import Detector, DetectorConfig, phase_for
from cityos.anomaly.registry import (
    SeedStates,
    find,
    production,
    register,
    save_model,
    set_status,
)
from cityos.db import connect
from cityos.streaming.lake_windows import LakeDataMissing, lake_serving
from cityos.topics import Topics

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

FAMILY = "anomaly"
FLAG_LEVEL = 0.9

# (serving table, metrics): the same metrics the streaming scorer keeps detectors for
SERIES = (
    ("traffic_5m", ("vehicle_count", "avg_speed_kmh", "occupancy", "congestion_index")),
    ("air_quality_1h", ("pm25", "pm10", "no2", "o3", "aqi")),
)

Series = dict[tuple[str, str], list[tuple[datetime, datetime, float]]]


@dataclass
class HoldoutScore:
    """Forecast error and flags of one model over the held-out windows."""

    abs_error: float = 0.0
    scale: float = 0.0  # sum over series of (mean absolute step) x points
    points: int = 0
    flagged: int = 0

    def add(self, errors: list[float], step_scale: float, flags: int) -> None:
        self.abs_error += sum(errors)
        self.scale += step_scale * len(errors)
        self.points += len(errors)
        self.flagged += flags

    @property
    def mase(self) -> float | None:
        return self.abs_error / self.scale if self.scale > 0 else None

    def summary(self) -> dict[str, Any]:
        return {
            "mase": self.mase,
            "points": self.points,
            "flag_rate": self.flagged / self.points if self.points else None,
        }


def read_series(conn: psycopg.Connection, start: datetime, end: datetime) -> Series:
    """Every sensor's closed windows with window_start in [start, end), per (sensor, metric),
    from the serving tables the connection sees (the lake's, inside :func:`lake_serving`)."""
    series: Series = defaultdict(list)
    for table, metrics in SERIES:
        query = sql.SQL(
            "SELECT sensor_id, window_start, window_end, {metrics} FROM {table}"
            " WHERE window_start >= %s AND window_start < %s ORDER BY sensor_id, window_start"
        ).format(
            metrics=sql.SQL(", ").join(map(sql.Identifier, metrics)),
            table=sql.Identifier(table),
        )
        for sensor, w_start, w_end, *values in conn.execute(query, (start, end)):
            for metric, value in zip(metrics, values, strict=True):
                if value is not None:
                    series[(sensor, metric)].append((w_start, w_end, float(value)))
    return dict(series)


def sensor_timezones(conn: psycopg.Connection) -> dict[str, str]:
    """Each sensor's city's time zone: the calendar of its detectors."""
    rows = conn.execute(
        "SELECT s.sensor_id, c.timezone FROM sensors s JOIN cities c ON c.city_id = s.city_id"
    ).fetchall()
    return {sensor: zone for sensor, zone in rows}


def read_lake_series(
    conn: psycopg.Connection,
    spark: SparkSession,
    settings: Any,
    start: datetime,
    end: datetime,
) -> tuple[Series, dict[str, Any]]:
    """:func:`read_series` of the windows computed from the lake's events of ``[start, end)``;
    with a summary of the read (files, windows per table, seconds)."""
    topics = Topics(settings.topic_prefix)
    with lake_serving(conn, spark, settings.lake_dir, topics, start, end) as read:
        began = time.monotonic()
        series = read_series(conn, start, end)
        read.seconds["query"] = time.monotonic() - began
    return series, read.summary()


def _spark(settings: Any) -> SparkSession:
    """The process's SparkSession (a running one is reused: tests, a scheduler's worker)."""
    from cityos.streaming.spark import spark_session

    return spark_session(settings, "cityos-retrain")


def bench_read(
    settings: Any, start: datetime, end: datetime, spark: SparkSession | None = None
) -> dict[str, Any]:
    """Seconds to read the training windows of ``[start, end)``: from the lake (Spark start
    apart) and from the serving tables, and whether both gave the same series."""
    began = time.monotonic()
    spark = spark or _spark(settings)
    spark_start = time.monotonic() - began
    url = settings.database_url.get_secret_value()
    with connect(url, settings.database_schema, autocommit=True) as conn:
        began = time.monotonic()
        serving = read_series(conn, start, end)
        pg_s = time.monotonic() - began
        began = time.monotonic()
        from_lake, read = read_lake_series(conn, spark, settings, start, end)
        lake_s = time.monotonic() - began
    same = serving.keys() == from_lake.keys() and all(
        len(a) == len(b)
        and all(
            (p[0], p[1]) == (q[0], q[1]) and math.isclose(p[2], q[2], rel_tol=1e-9, abs_tol=1e-9)
            for p, q in zip(a, b, strict=True)
        )
        for key in serving
        for a, b in [(serving[key], from_lake[key])]
    )
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "series": len(serving),
        "points": sum(map(len, serving.values())),
        "postgres_s": round(pg_s, 3),
        "lake_s": round(lake_s, 3),
        "spark_start_s": round(spark_start, 3),
        "lake": read,
        "same_series": same,
    }


def model_version(
    config: DetectorConfig,
    interval_start: datetime,
    interval_end: datetime,
    lookback: timedelta,
    holdout: timedelta,
    data: str,
) -> str:
    """``<end>-<definition>-<data>``: the interval's end, a digest of everything that defines the
    training (detector configuration, interval, look-back, held-out period) and the first
    characters of :func:`data_digest` of the windows it learns. A different training gets a
    different name; the identical one (a rerun, a retry) gets the same."""
    definition = {
        "config": asdict(config),
        "interval_start": interval_start.astimezone(UTC).isoformat(),
        "interval_end": interval_end.astimezone(UTC).isoformat(),
        "lookback_s": lookback.total_seconds(),
        "holdout_s": holdout.total_seconds(),
    }
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
    return f"{interval_end.astimezone(UTC).strftime('%Y%m%dT%H%MZ')}-{digest[:6]}-{data[:6]}"


def data_digest(series: Series) -> str:
    """SHA-256 of the windows, values to 12 significant digits (Spark's sums may differ in the
    last bit from one read of the same files to the next)."""
    digest = hashlib.sha256()
    for (sensor, metric), points in sorted(series.items()):
        digest.update(f"{sensor}\0{metric}\0{len(points)}\0".encode())
        for w_start, w_end, value in points:
            digest.update(f"{w_start.timestamp()},{w_end.timestamp()},{value:.12g};".encode())
    return digest.hexdigest()


def _learn(detector: Detector, points: list[tuple[datetime, datetime, float]]) -> None:
    for w_start, _, value in points:
        detector.update(w_start, value)


def _holdout(detector: Detector, points: list[tuple[datetime, datetime, float]]):
    """One-step forecast errors and flags over the points, learning as it goes (a stream).

    Points at or before the last one the detector learnt are refused (ValueError): it would
    stamp them as its latest point and forecast the wrong time, so the score would mean nothing.
    """
    if points and detector.last_ts is not None and points[0][0].timestamp() <= detector.last_ts:
        raise ValueError(
            f"held-out points from {points[0][0].isoformat()} are not after the detector's last"
            f" learnt point ({datetime.fromtimestamp(detector.last_ts, UTC).isoformat()})"
        )
    errors, flags = [], 0
    for w_start, _, value in points:
        if detector.count:
            errors.append(abs(detector.forecast(1).mean[0] - value))
        if detector.update(w_start, value) >= FLAG_LEVEL:
            flags += 1
    return errors, flags


def _step_scale(points: list[tuple[datetime, datetime, float]]) -> float:
    values = [p[2] for p in points]
    steps = [abs(b - a) for a, b in zip(values, values[1:], strict=False)]
    return sum(steps) / len(steps) if steps else 0.0


def retrain(
    settings: Any,
    interval_start: datetime,
    interval_end: datetime,
    *,
    holdout: timedelta | None = None,
    lookback: timedelta | None = None,
    config: DetectorConfig | None = None,
    spark: SparkSession | None = None,
) -> dict[str, Any]:
    """Train on the ``lookback`` up to the interval's end (the DAG's interval is a day; a
    detector wants weeks of a sensor's life), evaluate, register and maybe promote; returns a
    summary of what happened. ``lookback`` and ``holdout`` default to the settings
    (``retrain_lookback_days``, ``retrain_holdout_hours``). The windows come from the lake
    (``settings.lake_dir``); :class:`LakeDataMissing` when it holds none of
    ``[interval_start, interval_end)``."""
    config = config or DetectorConfig()
    if lookback is None:
        lookback = timedelta(days=settings.retrain_lookback_days)
    if holdout is None:
        holdout = timedelta(hours=settings.retrain_holdout_hours)
    data_start = min(interval_start, interval_end - lookback)
    if interval_end - data_start <= holdout:
        raise ValueError(
            f"the interval {data_start.isoformat()} .. {interval_end.isoformat()} is not "
            f"longer than the held-out {holdout}"
        )
    kept = timedelta(days=settings.lake_retention_days)
    if interval_end - data_start + holdout + timedelta(days=1) > kept:
        raise ValueError(
            f"the training data {data_start.isoformat()} .. {interval_end.isoformat()} (+ the"
            f" held-out {holdout} + 1 day) is longer than the lake keeps dates"
            f" (CITYOS_LAKE_RETENTION_DAYS={settings.lake_retention_days})"
        )
    split = interval_end - holdout
    url = settings.database_url.get_secret_value()
    began = time.monotonic()
    spark = spark or _spark(settings)
    with connect(url, settings.database_schema, autocommit=True) as conn:
        current = production(conn, FAMILY)
        current_end = current.data_end if current is not None else None
        # production trained up to this interval's end or later: not compared, not replaced
        newer = current_end is not None and interval_end <= current_end
        compare = current is not None and not newer
        # production's detectors catch up from the end of their own training data
        since = data_start
        if compare and current_end is not None and current_end < since:
            since = current_end
        everything, read = read_lake_series(conn, spark, settings, since, interval_end)
        if not any(p[0] >= interval_start for points in everything.values() for p in points):
            raise LakeDataMissing(
                f"the lake {settings.lake_dir} holds no events of the interval "
                f"{interval_start.isoformat()} .. {interval_end.isoformat()} (topics "
                f"{', '.join(Topics(settings.topic_prefix).sources())}): nothing to train on; "
                f"the streaming job may be behind, or the dates were expired"
            )
        series = _between(everything, data_start, interval_end)
        older = _between(everything, since, data_start)
        data = data_digest(series)
        version = model_version(config, interval_start, interval_end, lookback, holdout, data)
        known = find(conn, FAMILY, version)
        if known is not None:  # the identical training ran before: change nothing
            log.info("retrain %s: already registered (%s), nothing changed", version, known.status)
            return {
                **known.metrics,
                "version": version,
                "promoted": False,
                "status": known.status,
                "unchanged": True,
                "reason": f"the identical training is registered already ({known.status})",
                "wall_s": round(time.monotonic() - began, 2),
            }
        seeds = SeedStates.open(current) if compare and current is not None else None
        zones = sensor_timezones(conn)

        candidate_score, production_score = HoldoutScore(), HoldoutScore()
        trained: list[tuple[str, str, Detector, datetime]] = []
        train_seconds = 0.0
        seen_holdout = False  # production learnt part of the held-out period: no fair score
        for key, points in sorted(series.items()):
            sensor, metric = key
            train = [p for p in points if p[0] < split]
            test = [p for p in points if p[0] >= split]
            scale = _step_scale(train or points)
            t0 = time.process_time()
            zone = zones.get(sensor, "UTC")
            phase = phase_for(f"{sensor}/{metric}", config)
            detector = Detector(config, phase=phase, timezone=zone)
            _learn(detector, train)
            train_seconds += time.process_time() - t0
            errors, flags = _holdout(detector, test)
            candidate_score.add(errors, scale, flags)
            trained.append((sensor, metric, detector, points[-1][1]))
            if seeds is not None and not seen_holdout:
                seeded = seeds.get(sensor, metric)
                if seeded is not None:
                    incumbent, seen_until = seeded
                    if seen_until > split:
                        seen_holdout = True
                        continue
                    catch_up = [p for p in older.get(key, []) + train if p[1] > seen_until]
                    _learn(incumbent, catch_up)
                    p_errors, p_flags = _holdout(incumbent, test)
                else:  # a sensor production never saw: it would start from nothing
                    incumbent = Detector(config, timezone=zone)
                    p_errors, p_flags = _holdout(incumbent, test)
                production_score.add(p_errors, scale, p_flags)

        if current is None:
            status, reason = "production", "no model in production"
        elif newer:
            status = "candidate"
            reason = (
                f"not newer than production {current.version} (trained up to"
                f" {current_end}): registered, production left alone"
            )
        elif seen_holdout:
            status = "candidate"
            reason = (
                f"production {current.version} learnt part of the held-out period (from"
                f" {split.isoformat()}): it cannot be scored on it; registered, not promoted"
            )
        else:
            better, reason = _better(candidate_score, production_score, current)
            status = "production" if better else "rejected"
        sensors = len({k[0] for k in series})
        scored = compare and not seen_holdout
        metrics: dict[str, Any] = {
            "candidate": candidate_score.summary(),
            "production": production_score.summary() if scored else None,
            "production_version": current.version if current else None,
            "series": len(series),
            "sensors": sensors,
            "train_cpu_s": round(train_seconds, 3),
            "train_cpu_s_per_sensor": round(train_seconds / sensors, 4) if sensors else None,
            "lookback": str(lookback),
            "holdout": str(holdout),
            "first_window": min(p[0] for points in series.values() for p in points).isoformat(),
            "data_sha256": data,
            "read": read,
        }
        folder = settings.model_dir / FAMILY / version
        if folder.exists():  # this training's, whole, from a run that stopped before registering
            log.info("model folder %s exists: kept, registered now", folder)
        else:
            save_model(
                folder,
                version,
                config,
                trained,
                data_start=data_start,
                data_end=interval_end,
                metrics=metrics,
            )
        with conn.transaction():  # registered with its status, or not at all
            register(
                conn,
                FAMILY,
                version,
                folder,
                metrics,
                data_start=data_start,
                data_end=interval_end,
                note=reason,
            )
            if status != "candidate":
                set_status(conn, FAMILY, version, status, note=reason)
    summary = {
        "version": version,
        "promoted": status == "production",
        "status": status,
        "unchanged": False,
        "reason": reason,
        "wall_s": round(time.monotonic() - began, 2),
        **metrics,
    }
    log.info("retrain %s: %s (%s)", version, status, reason)
    return summary


def _between(series: Series, start: datetime, end: datetime) -> Series:
    """The points with ``start <= window_start < end``; series left empty are dropped."""
    kept = {k: [p for p in points if start <= p[0] < end] for k, points in series.items()}
    return {k: points for k, points in kept.items() if points}


def _better(candidate: HoldoutScore, incumbent: HoldoutScore, current: Any) -> tuple[bool, str]:
    if current is None:
        return True, "no model in production"
    mine, theirs = candidate.mase, incumbent.mase
    if mine is None:
        return False, "the held-out period has no windows to compare on"
    if theirs is None or math.isnan(theirs):
        return True, f"production {current.version} could not be scored on the held-out period"
    if mine < theirs:
        return True, f"held-out MASE {mine:.4f} < production {current.version}'s {theirs:.4f}"
    return False, f"held-out MASE {mine:.4f} >= production {current.version}'s {theirs:.4f}"
