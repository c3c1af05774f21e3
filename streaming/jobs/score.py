"""The score stage of the streaming job: closed windows -> anomaly scores, forecasts, alerts.

    closed_windows -> detectors (per sensor and metric) -> anomaly_scores, forecasts
                   -> zone_forecasts (the sensors' forecasts combined per zone)
                   -> observations (thresholds, anomaly score, forecasts of sensors and zones)
                   -> AlertEngine -> alerts

A window is closed once its sensor's watermark (newest merged event time minus the allowed
lateness) has passed its end: no later event can change it, since later ones go to the
dead-letter topic as late. After each merged micro-batch the job scores the windows closed since
the last time (``scoring_progress``), oldest first, in one transaction with their alerts, so a
crash replays at most a batch of scoring, and replays are harmless (scores and forecasts are
upserts, the alert engine ignores observations it has applied).

A zone's forecast of a target window is the mean of its sensors' newest forecasts of that window
(its sensors: those whose zone is it or one of its sub-zones); its interval is the mean of their
bounds, which is the interval of the mean when the sensors' errors move together and wider than
it otherwise (neighbouring sensors share weather and traffic: a conservative choice). The zone
rules (``*_forecast_zone``) judge the highest zone forecast over the horizon, for zones with at
least the rule's ``min_sensors`` sensors (a zone of one sensor would repeat its sensor's alert).

Detectors are online (``anomaly/detector.py``): their state lives in memory and is checkpointed
to ``detector_state`` every ``checkpoint_s``; after a restart a sensor's state is reloaded and the
windows it missed are replayed into it from the serving table. The model registry's production
version of the ``anomaly`` family, when there is one, seeds the states (trained by the
``retrain_anomaly_models`` DAG on the lake); a newly promoted version is picked up at the next
batch, without a restart.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from cityos.alerting.engine import AlertEngine, Observation
from cityos.anomaly.detector import Detector, DetectorConfig, DetectorError, phase_for
from cityos.anomaly.registry import ModelVersion, SeedStates, production

log = logging.getLogger(__name__)

FAMILY = "anomaly"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # before any window: "replay the whole history"


@dataclass(frozen=True)
class WindowTable:
    """A serving table of closed windows and what is scored in it."""

    stream: str  # key in scoring_progress
    table: str
    sensor_kind: str  # sensors.kind of its sensors
    width: timedelta
    metrics: tuple[str, ...]  # one detector per sensor and metric
    forecast_metric: str
    forecast_rule: str
    zone_forecast_rule: str
    threshold_rules: tuple[tuple[str, str], ...]  # (rule id, column of the window row)
    extra_columns: str = ""


TRAFFIC = WindowTable(
    stream="traffic",
    table="traffic_5m",
    sensor_kind="traffic",
    width=timedelta(minutes=5),
    metrics=("vehicle_count", "avg_speed_kmh", "occupancy", "congestion_index"),
    forecast_metric="congestion_index",
    forecast_rule="congestion_forecast",
    zone_forecast_rule="congestion_forecast_zone",
    threshold_rules=(("congestion", "congestion_index"), ("speed_drop", "speed_ratio")),
    extra_columns=", t.avg_speed_kmh / coalesce(l.speed_limit_kmh, 50.0) AS speed_ratio",
)
AIR = WindowTable(
    stream="air",
    table="air_quality_1h",
    sensor_kind="air_quality",
    width=timedelta(hours=1),
    metrics=("pm25", "pm10", "no2", "o3", "aqi"),
    forecast_metric="pm25",
    forecast_rule="pm25_forecast",
    zone_forecast_rule="pm25_forecast_zone",
    threshold_rules=(("aqi", "aqi"),),
    extra_columns=", t.aqi_category",
)
LABELS = {
    "vehicle_count": "traffic volume",
    "avg_speed_kmh": "speed",
    "occupancy": "occupancy",
    "congestion_index": "congestion",
    "pm25": "PM2.5",
    "pm10": "PM10",
    "no2": "NO2",
    "o3": "O3",
    "aqi": "AQI",
}


@dataclass
class ScoreSummary:
    windows: int = 0
    scores: int = 0
    forecasts: int = 0
    zone_forecasts: int = 0
    alert_events: int = 0


@functools.cache  # a frozen configuration; asked once per score written
def online_version(config: DetectorConfig) -> str:
    """The version name of detectors that learn online from nothing (no registered model)."""
    import hashlib
    import json
    from dataclasses import asdict

    digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()
    return f"online-{digest[:8]}"


@dataclass
class Scorer:
    """Scores one topic's closed windows; one instance per streaming query, kept across batches."""

    query_name: str
    lateness: timedelta
    tables: tuple[WindowTable, ...]
    engine: AlertEngine
    config: DetectorConfig = field(default_factory=DetectorConfig)
    forecast_minutes: int = 60
    checkpoint_s: float = 60.0
    max_windows: int = 20000  # per call; a long backlog is caught up over several batches
    registry_check_s: float = 30.0
    _detectors: dict[tuple[str, str], Detector] = field(default_factory=dict)
    _seen_until: dict[tuple[str, str], datetime] = field(default_factory=dict)
    # series dropped after a failed call that had no saved state: relearn their whole history
    _relearn: set[tuple[str, str]] = field(default_factory=set)
    _version: str | None = None
    _seeds: SeedStates | None = None
    _checked_at: float = float("-inf")
    _saved_at: float = field(default_factory=time.monotonic)

    # ------------------------------------------------------------------ the batch
    def score(self, conn: psycopg.Connection, now: datetime) -> ScoreSummary:
        """Score every window closed since the last call; returns what was written.

        ``conn`` must be in autocommit mode: each table's scores, forecasts, alerts and progress
        are one explicit transaction. When it fails, the detectors forget what they learnt in
        memory (they had already been fed the windows): the next call reloads their saved
        states and replays the committed windows, then scores the same windows again."""
        if not conn.autocommit:
            raise ValueError("Scorer.score needs an autocommit connection")
        self._follow_registry(conn)
        summary = ScoreSummary()
        try:
            for table in self.tables:
                self._score_table(conn, table, now, summary)
        except BaseException:
            self._relearn.update(self._detectors)
            self._detectors.clear()
            self._seen_until.clear()
            raise
        if time.monotonic() - self._saved_at >= self.checkpoint_s:
            self.checkpoint(conn)
        return summary

    def _score_table(
        self, conn: psycopg.Connection, table: WindowTable, now: datetime, summary: ScoreSummary
    ) -> None:
        rows = self._closed(conn, table)
        if not rows:
            return
        summary.windows += len(rows)
        scores, forecasts, observations, progress = self._run(conn, table, rows)
        with conn.transaction(), conn.cursor() as cur:
            _write_scores(cur, scores)
            _write_forecasts(cur, forecasts)
            zones = _zones(cur, table.sensor_kind) if forecasts else {}
            zone_rows = _write_zone_forecasts(cur, table, zones, forecasts)
            observations += self._zone_observations(cur, table, zones, forecasts)
            events = self.engine.observe(conn, observations, now)
            cur.executemany(
                "INSERT INTO scoring_progress (stream, sensor_id, scored_until)"
                " VALUES (%s, %s, %s) ON CONFLICT (stream, sensor_id) DO UPDATE"
                " SET scored_until = GREATEST(scoring_progress.scored_until,"
                " excluded.scored_until)",
                [(table.stream, sensor, until) for sensor, until in progress.items()],
            )
        summary.scores += len(scores)
        summary.forecasts += len(forecasts)
        summary.zone_forecasts += zone_rows
        summary.alert_events += len(events)

    def _closed(self, conn: psycopg.Connection, table: WindowTable) -> list[dict[str, Any]]:
        query = sql.SQL(
            "SELECT t.sensor_id, s.city_id, c.timezone, s.zone_id, t.window_start, t.window_end,"
            " {metrics}{extra} FROM {table} t"
            " JOIN sensor_watermarks w ON w.query_name = %(query)s AND w.sensor_id = t.sensor_id"
            " JOIN sensors s ON s.sensor_id = t.sensor_id"
            " JOIN cities c ON c.city_id = s.city_id"
            " LEFT JOIN sensor_speed_limits l ON l.sensor_id = t.sensor_id"
            " LEFT JOIN scoring_progress p ON p.stream = %(stream)s AND p.sensor_id = t.sensor_id"
            " WHERE t.window_end <= w.max_event_time - %(lateness)s"
            " AND (p.scored_until IS NULL OR t.window_end > p.scored_until)"
            " ORDER BY t.window_end, t.sensor_id LIMIT %(limit)s"
        ).format(
            metrics=sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(m) for m in table.metrics),
            extra=sql.SQL(table.extra_columns),
            table=sql.Identifier(table.table),
        )
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                query,
                {
                    "query": self.query_name,
                    "stream": table.stream,
                    "lateness": self.lateness,
                    "limit": self.max_windows,
                },
            )
            return cur.fetchall()

    def _run(
        self, conn: psycopg.Connection, table: WindowTable, rows: list[dict[str, Any]]
    ) -> tuple[list[tuple], list[tuple], list[Observation], dict[str, datetime]]:
        scores: list[tuple] = []
        observations: list[Observation] = []
        progress: dict[str, datetime] = {}
        last_row: dict[str, dict[str, Any]] = {}
        for row in rows:
            sensor, end = row["sensor_id"], row["window_end"]
            place = {"city_id": row["city_id"], "sensor_id": sensor}
            for rule_id, column in table.threshold_rules:
                if row.get(column) is not None:
                    detail = {"category": row["aqi_category"]} if rule_id == "aqi" else {}
                    observations.append(
                        Observation(
                            rule_id, value=float(row[column]), at=end, detail=detail, **place
                        )
                    )
            worst: tuple[float, str] | None = None
            for metric in table.metrics:
                value = row.get(metric)
                if value is None:
                    continue
                detector = self._detector(conn, table, sensor, metric, end, row["timezone"])
                if (sensor, metric) in self._seen_until and self._seen_until[
                    (sensor, metric)
                ] >= end:
                    continue  # already in the state it was loaded with
                expected = detector.forecast(1) if detector.count else None
                score = detector.update(row["window_start"], float(value))
                self._seen_until[(sensor, metric)] = end
                scores.append(
                    (
                        sensor,
                        metric,
                        row["window_start"],
                        float(value),
                        expected.mean[0] if expected else None,
                        expected.lower[0] if expected else None,
                        expected.upper[0] if expected else None,
                        score,
                        self.version,
                    )
                )
                if worst is None or score > worst[0]:
                    worst = (score, metric)
            if worst is not None:
                observations.append(
                    Observation(
                        "anomaly",
                        value=worst[0],
                        at=end,
                        detail={"category": LABELS.get(worst[1], worst[1])},
                        **place,
                    )
                )
            progress[sensor] = max(progress.get(sensor, end), end)
            if row.get(table.forecast_metric) is not None:
                last_row[sensor] = row  # the forecast runs on from the last window it has seen
        forecasts: list[tuple] = []
        steps = max(1, int(timedelta(minutes=self.forecast_minutes) / table.width))
        for sensor, row in last_row.items():
            detector = self._detectors.get((sensor, table.forecast_metric))
            if detector is None or detector.count < self.config.warmup:
                continue  # too young to say where it is heading
            ahead = detector.forecast(steps)
            starts = [row["window_start"] + table.width * k for k in range(1, steps + 1)]
            forecasts += [
                (
                    sensor,
                    table.forecast_metric,
                    row["window_end"],
                    start,
                    mean,
                    low,
                    high,
                    self.version,
                )
                for start, mean, low, high in zip(
                    starts, ahead.mean, ahead.lower, ahead.upper, strict=True
                )
            ]
            observations.append(
                Observation(
                    table.forecast_rule,
                    value=max(ahead.mean),
                    at=row["window_end"],
                    city_id=row["city_id"],
                    sensor_id=sensor,
                    detail={"horizon": _horizon(steps * table.width)},
                )
            )
        return scores, forecasts, observations, progress

    def _zone_observations(
        self,
        cur: psycopg.Cursor,
        table: WindowTable,
        zones: dict[str, Zone],
        forecasts: Sequence[tuple],
    ) -> list[Observation]:
        """The zone rule's observations: per zone with a sensor that forecast in this batch,
        the highest zone forecast over the horizon from that sensor's newest forecast on."""
        rule = self.engine.rules.get(table.zone_forecast_rule)
        if rule is None or not forecasts:
            return []  # a rules file without zone rules: zone forecasts are kept, not alerted
        issued: dict[str, datetime] = {}
        for sensor, _, issued_at, *_ in forecasts:
            issued[sensor] = max(issued.get(sensor, issued_at), issued_at)
        since: dict[str, datetime] = {}
        for zone_id, zone in zones.items():
            ats = [issued[s] for s in zone.sensors if s in issued]
            if ats and len(zone.sensors) >= rule.min_sensors:
                since[zone_id] = max(ats)
        if not since:
            return []
        steps = max(1, int(timedelta(minutes=self.forecast_minutes) / table.width))
        cur.execute(
            "SELECT DISTINCT ON (a.zone_id) a.zone_id, a.at, z.expected, z.sensors"
            " FROM unnest(%s::text[], %s::timestamptz[]) AS a(zone_id, at)"
            " JOIN zone_forecasts z ON z.zone_id = a.zone_id AND z.metric = %s"
            " AND z.target_start >= a.at AND z.target_start < a.at + %s"
            " ORDER BY a.zone_id, z.expected DESC, z.target_start",
            (list(since), list(since.values()), table.forecast_metric, steps * table.width),
        )
        return [
            Observation(
                rule.id,
                value=expected,
                at=at,
                city_id=zones[zone_id].city_id,
                zone_id=zone_id,
                detail={
                    "horizon": _horizon(steps * table.width),
                    "sensors": f"{sensors} sensor{'s' if sensors != 1 else ''}",
                    "level": zones[zone_id].level,
                },
            )
            for zone_id, at, expected, sensors in cur.fetchall()
        ]

    # ------------------------------------------------------------------ detector states
    @property
    def version(self) -> str:
        return self._version or online_version(self.config)

    def _detector(
        self,
        conn: psycopg.Connection,
        table: WindowTable,
        sensor: str,
        metric: str,
        end: datetime,
        timezone: str,
    ) -> Detector:
        key = (sensor, metric)
        detector = self._detectors.get(key)
        if detector is not None:
            return detector
        detector, seen_until = self._load(conn, sensor, metric, timezone)
        self._detectors[key] = detector
        if seen_until is not None:
            self._seen_until[key] = seen_until
            self._replay(conn, table, detector, sensor, metric, seen_until, end)
        elif key in self._relearn:  # learnt in memory only, then dropped: learn it again
            self._replay(conn, table, detector, sensor, metric, EPOCH, end)
        self._relearn.discard(key)
        return detector

    def _load(
        self, conn: psycopg.Connection, sensor: str, metric: str, timezone: str
    ) -> tuple[Detector, datetime | None]:
        """The saved state of this version, else the registry's seed, else a fresh detector;
        whichever it is keeps its calendar in the sensor's city's time zone (a state kept in
        another zone is not used: its hours would be the wrong ones)."""
        row = conn.execute(
            "SELECT state, scored_until FROM detector_state"
            " WHERE sensor_id = %s AND metric = %s AND model_version = %s",
            (sensor, metric, self.version),
        ).fetchone()

        def found() -> Iterator[tuple[str, tuple[Detector, datetime | None] | None]]:
            if row is not None:
                try:
                    yield "saved", (Detector.from_bytes(bytes(row[0])), row[1])
                except DetectorError as err:  # saved by an older detector: start from the seed
                    log.warning("%s/%s: saved detector state not usable (%s)", sensor, metric, err)
            if self._seeds is not None:
                yield "seed", self._seeds.get(sensor, metric)

        for what, state in found():
            if state is None:
                continue
            if state[0].timezone == timezone:
                return state
            log.warning(
                "%s/%s: %s detector state keeps time zone %s, the city's is %s: not used",
                sensor,
                metric,
                what,
                state[0].timezone,
                timezone,
            )
        phase = phase_for(f"{sensor}/{metric}", self.config)
        return Detector(self.config, phase=phase, timezone=timezone), None

    def _replay(
        self,
        conn: psycopg.Connection,
        table: WindowTable,
        detector: Detector,
        sensor: str,
        metric: str,
        after: datetime,
        before: datetime,
    ) -> None:
        """Feed the windows a loaded state has not seen (scored while it was not in memory)."""
        query = sql.SQL(
            "SELECT window_start, window_end, {metric} FROM {table} WHERE sensor_id = %s"
            " AND window_end > %s AND window_end < %s AND {metric} IS NOT NULL"
            " ORDER BY window_start"
        ).format(metric=sql.Identifier(metric), table=sql.Identifier(table.table))
        rows = conn.execute(query, (sensor, after, before)).fetchall()
        for start, end, value in rows:
            detector.update(start, float(value))
            self._seen_until[(sensor, metric)] = end
        if rows:
            log.info(
                "detector %s/%s: replayed %d windows after %s",
                sensor,
                metric,
                len(rows),
                after.isoformat(),
            )

    def checkpoint(self, conn: psycopg.Connection) -> int:
        """Save every detector's state (with the newest window it has seen)."""
        rows = [
            (sensor, metric, self.version, detector.to_bytes(), self._seen_until[(sensor, metric)])
            for (sensor, metric), detector in self._detectors.items()
            if (sensor, metric) in self._seen_until
        ]
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO detector_state (sensor_id, metric, model_version, state,"
                " scored_until, updated_at) VALUES (%s, %s, %s, %s, %s, now())"
                " ON CONFLICT (sensor_id, metric) DO UPDATE SET model_version ="
                " excluded.model_version, state = excluded.state,"
                " scored_until = excluded.scored_until, updated_at = now()",
                rows,
            )
        self._saved_at = time.monotonic()
        return len(rows)

    def _follow_registry(self, conn: psycopg.Connection) -> None:
        """Switch to the production model when a new one was promoted (checked every so often)."""
        if time.monotonic() - self._checked_at < self.registry_check_s:
            return
        self._checked_at = time.monotonic()
        current: ModelVersion | None = production(conn, FAMILY)
        version = current.version if current else None
        if version == self._version:
            return
        if self._detectors:
            self.checkpoint(conn)
        log.info("anomaly model: %s -> %s", self.version, version or online_version(self.config))
        self._version = version
        self._seeds = SeedStates.open(current) if current else None
        self._detectors.clear()
        self._seen_until.clear()


@dataclass(frozen=True)
class Zone:
    """A zone and the sensors (of one kind) in it or in its sub-zones."""

    city_id: str
    level: str
    sensors: frozenset[str]


def _zones(cur: psycopg.Cursor, sensor_kind: str) -> dict[str, Zone]:
    """Every zone with sensors of this kind: a sensor is in its zone and that zone's ancestors."""
    cur.execute(
        "WITH RECURSIVE up (sensor_id, zone_id) AS ("
        " SELECT sensor_id, zone_id FROM sensors WHERE kind = %s AND zone_id IS NOT NULL"
        " UNION"  # not UNION ALL: a cycle of parents ends instead of looping
        " SELECT up.sensor_id, z.parent_zone_id FROM up JOIN zones z ON z.zone_id = up.zone_id"
        " WHERE z.parent_zone_id IS NOT NULL)"
        " SELECT z.zone_id, z.city_id, z.level, array_agg(up.sensor_id)"
        " FROM up JOIN zones z ON z.zone_id = up.zone_id GROUP BY z.zone_id, z.city_id, z.level",
        (sensor_kind,),
    )
    return {
        zone_id: Zone(city_id, level, frozenset(sensors))
        for zone_id, city_id, level, sensors in cur.fetchall()
    }


def _write_zone_forecasts(
    cur: psycopg.Cursor, table: WindowTable, zones: dict[str, Zone], forecasts: Sequence[tuple]
) -> int:
    """Recompute, from ``forecasts``, the zone forecasts of the targets this batch forecast in
    the zones of the sensors that forecast them; the number of zone rows written."""
    sensors = {row[0] for row in forecasts}
    members = [
        (zone_id, sensor)
        for zone_id, zone in zones.items()
        if zone.sensors & sensors
        for sensor in sorted(zone.sensors)
    ]
    if not members:
        return 0
    zone_ids, sensor_ids = zip(*members, strict=True)
    cur.execute(
        "INSERT INTO zone_forecasts (zone_id, metric, target_start, issued_at, expected, lower,"
        " upper, sensors, model_version)"
        " SELECT m.zone_id, f.metric, f.target_start, max(f.issued_at), avg(f.expected),"
        " avg(f.lower), avg(f.upper), count(*),"
        " string_agg(DISTINCT f.model_version, ',' ORDER BY f.model_version)"
        " FROM unnest(%s::text[], %s::text[]) AS m(zone_id, sensor_id)"
        " JOIN forecasts f ON f.sensor_id = m.sensor_id"
        " WHERE f.metric = %s AND f.target_start = ANY(%s)"
        " GROUP BY m.zone_id, f.metric, f.target_start"
        " ON CONFLICT (zone_id, metric, target_start) DO UPDATE SET"
        " issued_at = excluded.issued_at, expected = excluded.expected,"
        " lower = excluded.lower, upper = excluded.upper, sensors = excluded.sensors,"
        " model_version = excluded.model_version",
        (
            list(zone_ids),
            list(sensor_ids),
            table.forecast_metric,
            sorted({row[3] for row in forecasts}),
        ),
    )
    return cur.rowcount


def _horizon(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return "the hour" if minutes == 60 else f"{minutes} minutes"


def _write_scores(cur: psycopg.Cursor, rows: Sequence[tuple]) -> None:
    cur.executemany(
        "INSERT INTO anomaly_scores (sensor_id, metric, window_start, value, expected, lower,"
        " upper, score, model_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (sensor_id, metric, window_start) DO UPDATE SET value = excluded.value,"
        " expected = excluded.expected, lower = excluded.lower, upper = excluded.upper,"
        " score = excluded.score, model_version = excluded.model_version",
        rows,
    )


def _write_forecasts(cur: psycopg.Cursor, rows: Sequence[tuple]) -> None:
    cur.executemany(
        "INSERT INTO forecasts (sensor_id, metric, issued_at, target_start, expected, lower,"
        " upper, model_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (sensor_id, metric, target_start) DO UPDATE SET issued_at ="
        " excluded.issued_at, expected = excluded.expected, lower = excluded.lower,"
        " upper = excluded.upper, model_version = excluded.model_version",
        rows,
    )


def tables_for(event_types: Iterable[str]) -> tuple[WindowTable, ...]:
    from cityos import events

    found = []
    if events.TRAFFIC in event_types:
        found.append(TRAFFIC)
    if events.AIR in event_types:
        found.append(AIR)
    return tuple(found)
