"""Data-quality checks of the serving tables, per sensor and data interval (the `data_quality` DAG).

For every registered sensor and an interval ``[start, end)`` of window starts:

* **freshness** - minutes from the end of the sensor's newest window to ``end``;
* **completeness** - windows present / windows expected (12 an hour in ``traffic_5m``, 1 an hour
  in ``air_quality_1h``);
* **out_of_range** - windows with a reading outside its plausible range (:data:`KINDS` lists the
  ranges, as data);
* **silent** - minutes the sensor has been silent at ``end``: 0 while its newest window ends
  within one window length of ``end`` (that window may still be filling), else the minutes since
  that window's end. A sensor that never reported has no value and raises no alert (a city's
  registry lists sensors long before a source streams them).

Results are upserted into ``data_quality_checks`` keyed by (check, sensor, interval), so a re-run
or a backfill replaces exactly its own rows. :func:`offline_observations` turns each sensor's
silence at every window boundary of the interval (each 5 minutes for a loop, each hour for a
station) into ``sensor_offline`` observations for the alert engine (value 0 resolves the alert),
so an outage inside the hour fires when it reaches the rule's threshold and resolves when data
returns, both stamped at the moment they happened, not at the hour mark.

Everything is a function of the interval, never of the wall clock: a backfill of last week
gives the rows a live run would have given then, as far as the data has not changed since.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg import sql

from cityos.alerting.engine import AlertEngine, Observation
from cityos.errors import CityOSError

if TYPE_CHECKING:
    from cityos.settings import Settings

log = logging.getLogger(__name__)

CHECKS = ("freshness", "completeness", "out_of_range", "silent")
OFFLINE_RULE = "sensor_offline"


class QualityError(CityOSError):
    """A data-quality run that cannot be done as asked (e.g. an empty interval)."""


@dataclass(frozen=True)
class Range:
    """Plausible values of one column; a NULL reading is missing, never out of range."""

    column: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Kind:
    """How one kind of sensor is checked: its serving table, window and thresholds."""

    table: str
    window: timedelta
    max_lag: timedelta  # freshness fails beyond this
    ranges: tuple[Range, ...]
    min_completeness: float = 0.9

    def expected(self, start: datetime, end: datetime) -> int:
        return int((end - start) / self.window)


MAX_SPEED_KMH = 200.0  # beyond any urban or freeway detector's plausible 5-minute mean
KINDS: dict[str, Kind] = {
    "traffic": Kind(
        table="traffic_5m",
        window=timedelta(minutes=5),
        max_lag=timedelta(minutes=15),
        ranges=(
            Range("vehicle_count", 0, None),
            Range("avg_speed_kmh", 0, MAX_SPEED_KMH),
            Range("occupancy", 0, 1),
            Range("congestion_index", 0, 1),
        ),
    ),
    "air_quality": Kind(
        table="air_quality_1h",
        window=timedelta(hours=1),
        max_lag=timedelta(hours=2),
        ranges=(
            *(Range(p, 0, 5000) for p in ("pm25", "pm10", "no2", "o3", "so2")),
            Range("co", 0, 100_000),  # µg/m³; Beijing's worst hours stay below 10 000
            Range("temperature_c", -60, 60),
            Range("relative_humidity", 0, 1),
            Range("wind_speed_ms", 0, 75),
            Range("aqi", 0, 1000),
        ),
    ),
}


@dataclass(frozen=True)
class SensorStats:
    """What the serving table says about one sensor over an interval."""

    sensor_id: str
    city_id: str
    kind: str
    zone_id: str | None
    windows: int  # windows starting in the interval
    last_end: datetime | None  # end of the newest window starting before the interval end
    out_of_range: dict[str, int] = field(default_factory=dict)  # column -> windows outside


@dataclass(frozen=True)
class CheckResult:
    check_name: str
    sensor_id: str
    passed: bool
    value: float | None
    threshold: float | None
    details: dict[str, Any] = field(default_factory=dict)


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60.0


def silent_minutes(stats: SensorStats, end: datetime) -> float | None:
    """Minutes the sensor has been silent at ``end``; 0 within one window; None: never reported."""
    return _silence(KINDS[stats.kind], stats.last_end, end)


def _silence(kind: Kind, last_end: datetime | None, moment: datetime) -> float | None:
    if last_end is None:
        return None
    lag = moment - last_end
    return 0.0 if lag <= kind.window else _minutes(lag)


@dataclass(frozen=True)
class SensorWindows:
    """One sensor's windows of an interval, with the end of its newest window before it."""

    sensor_id: str
    city_id: str
    kind: str
    zone_id: str | None
    before: datetime | None  # end of the newest window starting before the interval
    windows: tuple[tuple[datetime, datetime], ...]  # (start, end) starting in it, in order


def silence_timeline(
    sensor: SensorWindows, start: datetime, end: datetime
) -> list[tuple[datetime, float]]:
    """``(moment, minutes silent)`` at each window boundary in ``(start, end]`` (and ``end``),
    as :func:`silent_minutes` would say at that moment; none while the sensor never reported."""
    kind = KINDS[sensor.kind]
    moments = []
    moment = start + kind.window
    while moment < end:
        moments.append(moment)
        moment += kind.window
    moments.append(end)
    timeline: list[tuple[datetime, float]] = []
    last_end, i = sensor.before, 0
    for moment in moments:
        while i < len(sensor.windows) and sensor.windows[i][0] < moment:
            last_end, i = sensor.windows[i][1], i + 1
        minutes = _silence(kind, last_end, moment)
        if minutes is not None:
            timeline.append((moment, minutes))
    return timeline


def evaluate(stats: SensorStats, start: datetime, end: datetime) -> list[CheckResult]:
    """The four checks of one sensor over ``[start, end)`` (pure: no I/O)."""
    kind = KINDS[stats.kind]
    expected = kind.expected(start, end)
    lag = None if stats.last_end is None else max(0.0, _minutes(end - stats.last_end))
    max_lag = _minutes(kind.max_lag)
    completeness = stats.windows / expected if expected else 1.0
    bad = {column: n for column, n in stats.out_of_range.items() if n}
    silent = silent_minutes(stats, end)
    return [
        CheckResult("freshness", stats.sensor_id, lag is not None and lag <= max_lag, lag, max_lag),
        CheckResult(
            "completeness",
            stats.sensor_id,
            completeness >= kind.min_completeness,
            completeness,
            kind.min_completeness,
            {"windows": stats.windows, "expected": expected},
        ),
        CheckResult("out_of_range", stats.sensor_id, not bad, float(sum(bad.values())), 0.0, bad),
        CheckResult(
            "silent",
            stats.sensor_id,
            silent == 0.0,
            silent,
            None,
            {"never_reported": True} if silent is None else {},
        ),
    ]


# ----------------------------------------------------------------------------- PostgreSQL
def _stats_query(kind: Kind) -> sql.Composed:
    table = sql.Identifier(kind.table)
    outside = [
        sql.SQL("count(*) FILTER (WHERE {c} < {lo} OR {c} > {hi}) AS {c}").format(
            c=sql.Identifier(r.column),
            lo=sql.Literal(r.low if r.low is not None else float("-inf")),
            hi=sql.Literal(r.high if r.high is not None else float("inf")),
        )
        for r in kind.ranges
    ]
    return sql.SQL(
        "SELECT s.sensor_id, s.city_id, s.zone_id, coalesce(w.windows, 0),"
        " (SELECT t.window_end FROM {table} t WHERE t.sensor_id = s.sensor_id"
        "  AND t.window_start < %(end)s ORDER BY t.window_start DESC LIMIT 1), {columns}"
        " FROM sensors s LEFT JOIN ("
        "  SELECT sensor_id, count(*) AS windows, {outside} FROM {table}"
        "  WHERE window_start >= %(start)s AND window_start < %(end)s GROUP BY sensor_id"
        " ) w USING (sensor_id)"
        " WHERE s.kind = %(kind)s ORDER BY s.sensor_id"
    ).format(
        table=table,
        outside=sql.SQL(", ").join(outside),
        columns=sql.SQL(", ").join(
            sql.SQL("coalesce(w.{}, 0)").format(sql.Identifier(r.column)) for r in kind.ranges
        ),
    )


def sensor_stats(conn: psycopg.Connection, start: datetime, end: datetime) -> list[SensorStats]:
    """Per registered sensor, what its serving table holds for ``[start, end)``."""
    found: list[SensorStats] = []
    for name, kind in KINDS.items():
        rows = conn.execute(_stats_query(kind), {"start": start, "end": end, "kind": name})
        for sensor_id, city_id, zone_id, windows, last_end, *outside in rows:
            found.append(
                SensorStats(
                    sensor_id,
                    city_id,
                    name,
                    zone_id,
                    windows,
                    last_end,
                    {r.column: n for r, n in zip(kind.ranges, outside, strict=True)},
                )
            )
    return found


def _windows_query(kind: Kind) -> sql.Composed:
    return sql.SQL(
        "SELECT s.sensor_id, s.city_id, s.zone_id,"
        " (SELECT t.window_end FROM {table} t WHERE t.sensor_id = s.sensor_id"
        "  AND t.window_start < %(start)s ORDER BY t.window_start DESC LIMIT 1),"
        " ARRAY(SELECT t.window_start FROM {table} t WHERE t.sensor_id = s.sensor_id"
        "  AND t.window_start >= %(start)s AND t.window_start < %(end)s ORDER BY t.window_start),"
        " ARRAY(SELECT t.window_end FROM {table} t WHERE t.sensor_id = s.sensor_id"
        "  AND t.window_start >= %(start)s AND t.window_start < %(end)s ORDER BY t.window_start)"
        " FROM sensors s WHERE s.kind = %(kind)s ORDER BY s.sensor_id"
    ).format(table=sql.Identifier(kind.table))


def sensor_windows(conn: psycopg.Connection, start: datetime, end: datetime) -> list[SensorWindows]:
    """Per registered sensor, its windows starting in ``[start, end)`` and the newest before."""
    found: list[SensorWindows] = []
    for name, kind in KINDS.items():
        rows = conn.execute(_windows_query(kind), {"start": start, "end": end, "kind": name})
        for sensor_id, city_id, zone_id, before, starts, ends in rows:
            windows = tuple(zip(starts, ends, strict=True))
            found.append(SensorWindows(sensor_id, city_id, name, zone_id, before, windows))
    return found


def record(
    conn: psycopg.Connection,
    start: datetime,
    end: datetime,
    results: Sequence[CheckResult],
    checked_at: datetime,
) -> int:
    """Upsert results keyed by (check, sensor, interval); returns the rows written."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO data_quality_checks (check_name, sensor_id, interval_start, interval_end,"
            " passed, value, threshold, details, checked_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)"
            " ON CONFLICT (check_name, sensor_id, interval_start, interval_end) DO UPDATE SET"
            " passed = excluded.passed, value = excluded.value, threshold = excluded.threshold,"
            " details = excluded.details, checked_at = excluded.checked_at",
            [
                (
                    r.check_name,
                    r.sensor_id,
                    start,
                    end,
                    r.passed,
                    r.value,
                    r.threshold,
                    orjson.dumps(r.details).decode(),
                    checked_at,
                )
                for r in results
            ],
        )
    return len(results)


def utc(moment: datetime) -> datetime:
    """A plain UTC ``datetime`` (Airflow hands tasks pendulum DateTimes, which mix badly)."""
    if moment.tzinfo is None:
        raise QualityError(f"interval bounds must be timezone-aware: {moment!r}")
    m = moment.astimezone(UTC)
    return datetime(m.year, m.month, m.day, m.hour, m.minute, m.second, m.microsecond, tzinfo=UTC)


def _check_interval(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    start, end = utc(start), utc(end)
    if end <= start:
        raise QualityError(f"empty interval [{start.isoformat()}, {end.isoformat()})")
    return start, end


@dataclass(frozen=True)
class QualityRun:
    """One interval's checks: the per-sensor stats and their results."""

    start: datetime
    end: datetime
    stats: list[SensorStats]
    results: list[CheckResult]

    def summary(self) -> dict[str, Any]:
        failed = {
            c: sum(1 for r in self.results if r.check_name == c and not r.passed) for c in CHECKS
        }
        return {
            "interval_start": self.start.isoformat(),
            "interval_end": self.end.isoformat(),
            "sensors": len(self.stats),
            "rows": len(self.results),
            "failed": failed,
        }


def run_checks(
    conn: psycopg.Connection, start: datetime, end: datetime, checked_at: datetime | None = None
) -> QualityRun:
    """Check every sensor over ``[start, end)`` and record the results (idempotent)."""
    start, end = _check_interval(start, end)
    stats = sensor_stats(conn, start, end)
    results = [r for s in stats for r in evaluate(s, start, end)]
    record(conn, start, end, results, checked_at or datetime.now(UTC))
    run = QualityRun(start, end, stats, results)
    log.info("data quality [%s, %s): %s", start.isoformat(), end.isoformat(), run.summary())
    return run


# ----------------------------------------------------------------------------- alerts
def offline_observations(
    sensors: Sequence[SensorWindows], start: datetime, end: datetime
) -> list[Observation]:
    """``sensor_offline`` observations at each window boundary of ``(start, end]``: minutes
    silent then (0 = reporting, resolves). The engine applies them in time order.

    Sensors that never reported are left out: no reading, no alert.
    """
    return [
        Observation(
            rule_id=OFFLINE_RULE,
            city_id=s.city_id,
            value=minutes,
            at=moment,
            sensor_id=s.sensor_id,
            zone_id=s.zone_id,
        )
        for s in sensors
        for moment, minutes in silence_timeline(s, start, end)
    ]


# ----------------------------------------------------------------------------- DAG entry points
def _connect(settings: Settings) -> psycopg.Connection:
    from cityos.db import connect

    return connect(settings.database_url.get_secret_value(), settings.database_schema)


def check_interval(settings: Settings, start: datetime, end: datetime) -> dict[str, Any]:
    """The `data_quality` DAG's first task: check and record ``[start, end)``; a summary."""
    with _connect(settings) as conn:
        return run_checks(conn, start, end).summary()


def alert_offline(settings: Settings, start: datetime, end: datetime) -> dict[str, Any]:
    """The DAG's second task: each sensor's silence at each window boundary of the interval to
    the alert engine.

    The observations are stamped in the data's time, so a backfill dates its alerts then; the
    engine ignores one older than the last it applied, so the intervals must come in order.
    """
    start, end = _check_interval(start, end)
    with _connect(settings) as conn:
        observations = offline_observations(sensor_windows(conn, start, end), start, end)
        events = AlertEngine.from_settings(settings).observe(conn, observations, now=end)
        conn.commit()
    silent = sorted(o.sensor_id for o in observations if o.value and o.at == end and o.sensor_id)
    return {
        "interval_end": end.isoformat(),
        "observations": len(observations),
        "sensors": len({o.sensor_id for o in observations}),
        "silent_sensors": silent,  # at the interval's end
        "silent_during": sorted({o.sensor_id for o in observations if o.value and o.sensor_id}),
        "alert_events": len(events),
    }
