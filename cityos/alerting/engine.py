"""The alert lifecycle: observations in, alerts (firing -> acknowledged -> resolved) out.

Every producer of alert conditions — the streaming job as windows close (thresholds, anomaly
scores, forecasts), the data-quality DAG (silent sensors) — hands the engine
:class:`Observation` s. Per (rule, subject) the engine keeps counters in ``alert_state``:

* an alert fires after ``fire_after`` consecutive breaches, once per episode: while it is open,
  further breaches only update its severity (de-duplication);
* it resolves after ``clear_after`` consecutive observations past the rule's clear level; values
  between the clear level and the threshold change nothing (hysteresis: no flapping);
* an operator may acknowledge it (it stays open) or resolve it; resolved by hand while the
  condition still holds, the rule is disarmed until the condition has cleared, so it does not
  fire again at the next window;
* observations at or before the newest one applied are replays and are ignored, and alert ids
  are derived from (rule, subject, first breach), so re-scoring a window is harmless.

Alerts are written to the contract's ``alerts`` table, and each transition to ``alert_outbox`` in
the same transaction; :class:`OutboxPublisher` moves the outbox to the Kafka ``alerts`` topic.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from cityos.alerting.events import ALERT_COLUMNS, Alert, AlertEvent, EventType
from cityos.alerting.rules import SEVERITIES, Rule, RuleError, Verdict, load_rules

log = logging.getLogger(__name__)

DictCursor = psycopg.Cursor[dict[str, Any]]  # cursors of a dict_row connection or cursor

OPEN = ("firing", "acknowledged")
DRAIN_LOCK = "cityos alert_outbox "  # + the schema: the advisory lock of whoever drains it
_INSERT_ALERT = sql.SQL(
    "INSERT INTO alerts ({}) VALUES ({}) ON CONFLICT (alert_id) DO NOTHING"
).format(
    sql.SQL(", ").join(map(sql.Identifier, ALERT_COLUMNS)),
    sql.SQL(", ").join(sql.Placeholder() * len(ALERT_COLUMNS)),
)


@dataclass(frozen=True)
class Observation:
    """One reading of one rule's metric for one subject (a sensor, else a zone or intersection).

    ``detail`` fills the rule's message (e.g. ``category`` for AQI, ``horizon`` for forecasts).
    """

    rule_id: str
    city_id: str
    value: float | None
    at: datetime
    sensor_id: str | None = None
    zone_id: str | None = None
    intersection_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        if self.sensor_id:
            return f"sensor:{self.sensor_id}"
        if self.intersection_id:
            return f"intersection:{self.intersection_id}"
        if self.zone_id:
            return f"zone:{self.zone_id}"
        raise ValueError(f"observation of {self.rule_id} names no sensor, intersection or zone")


@dataclass
class _State:
    rule_id: str
    subject: str
    breaches: int = 0
    clears: int = 0
    first_breach: datetime | None = None
    alert_id: str | None = None
    armed: bool = True
    last_at: datetime | None = None
    last_value: float | None = None


@dataclass(frozen=True)
class _Subject:
    """What the engine knows of an observation's subject: its kind, names and zone."""

    place: str
    sensor_kind: str | None = None
    zone_id: str | None = None


class AlertEngine:
    """Applies observations to ``alert_state`` and ``alerts``; see the module docstring."""

    def __init__(self, rules: Mapping[str, Rule]) -> None:
        self.rules = dict(rules)

    @classmethod
    def from_settings(cls, settings: Any) -> AlertEngine:
        path: Path | None = getattr(settings, "alert_rules_file", None)
        return cls(load_rules(path))

    def observe(
        self, conn: psycopg.Connection, observations: Sequence[Observation], now: datetime
    ) -> list[AlertEvent]:
        """Apply the observations (any order; applied in time order per rule and subject) in
        one transaction; the transitions they caused, also queued in ``alert_outbox``."""
        usable = [o for o in observations if o.value is not None]
        for obs in usable:
            if obs.rule_id not in self.rules:
                raise RuleError(f"observation of unknown rule {obs.rule_id!r}")
        if not usable:
            return []
        usable.sort(key=lambda o: (o.rule_id, o.subject, o.at))
        events: list[AlertEvent] = []
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            subjects = _subjects(cur, usable)
            states = _load_states(cur, {(o.rule_id, o.subject) for o in usable})
            open_alerts = _load_alerts(cur, [s.alert_id for s in states.values() if s.alert_id])
            for obs in usable:
                key = (obs.rule_id, obs.subject)
                state = states.setdefault(key, _State(obs.rule_id, obs.subject))
                event = self._step(
                    cur, self.rules[obs.rule_id], state, obs, subjects[obs.subject], open_alerts
                )
                if event is not None:
                    open_alerts[event.alert.alert_id] = event.alert
                    record(cur, event)
                    events.append(event)
            _save_states(cur, states.values())
        for event in events:
            log.info("alert %s %s: %s", event.alert.alert_id, event.type, event.alert.message)
        return events

    # ------------------------------------------------------------------ one observation
    def _step(
        self,
        cur: DictCursor,
        rule: Rule,
        state: _State,
        obs: Observation,
        subject: _Subject,
        alerts: dict[str, Alert],
    ) -> AlertEvent | None:
        if state.last_at is not None and obs.at <= state.last_at:
            return None  # a replay of something already applied
        value = float(obs.value)  # type: ignore[arg-type]
        state.last_at, state.last_value = obs.at, value
        verdict = rule.judge(value, subject.sensor_kind)
        if verdict is Verdict.BREACH:
            state.breaches += 1
            state.clears = 0
            state.first_breach = state.first_breach or obs.at
        else:
            state.breaches, state.first_breach = 0, None
            state.clears = state.clears + 1 if verdict is Verdict.CLEAR else 0

        current = alerts.get(state.alert_id) if state.alert_id else None
        if state.alert_id and (current is None or current.status not in OPEN):
            # resolved by an operator (or removed): disarm while the condition still holds
            state.alert_id = None
            state.armed = verdict is Verdict.CLEAR
            current = None
        if current is not None:
            if verdict is Verdict.BREACH:
                severity = rule.severity_of(value, subject.sensor_kind)
                # escalate only: an open alert keeps its highest severity until it resolves, so
                # a reading hovering at the critical level does not flap it hour by hour; the
                # reading that raised it is the news
                if SEVERITIES.index(severity) > SEVERITIES.index(current.severity):
                    threshold = rule.levels_for(subject.sensor_kind).threshold
                    return _update(
                        cur,
                        current,
                        "updated",
                        obs.at,
                        severity=severity,
                        value=value,
                        message=_message(rule, subject, value, threshold, obs.detail),
                    )
            elif state.clears >= rule.clear_after:
                state.alert_id = None
                return _update(
                    cur, current, "resolved", obs.at, status="resolved", resolved_at=obs.at
                )
            return None
        if not state.armed:
            if state.clears >= rule.clear_after:
                state.armed = True
            return None
        if verdict is Verdict.BREACH and state.breaches >= rule.fire_after:
            alert = _fire(cur, rule, state, obs, subject, value)
            state.alert_id = alert.alert_id
            return AlertEvent("firing", alert, obs.at)
        return None


# ----------------------------------------------------------------------------- writes
def _fire(
    cur: DictCursor,
    rule: Rule,
    state: _State,
    obs: Observation,
    subject: _Subject,
    value: float,
) -> Alert:
    started = state.first_breach or obs.at
    levels = rule.levels_for(subject.sensor_kind)
    alert = Alert(
        alert_id=f"{rule.id}:{obs.subject}:{started.strftime('%Y%m%dT%H%M%SZ')}",
        kind=rule.kind,
        severity=rule.severity_of(value, subject.sensor_kind),
        status="firing",
        city_id=obs.city_id,
        zone_id=obs.zone_id or subject.zone_id,
        sensor_id=obs.sensor_id,
        intersection_id=obs.intersection_id,
        metric=rule.metric,
        value=value,
        threshold=levels.threshold,
        message=_message(rule, subject, value, levels.threshold, obs.detail),
        started_at=started,
        updated_at=obs.at,
    )
    cur.execute(_INSERT_ALERT, [getattr(alert, name) for name in ALERT_COLUMNS])
    return alert


def _update(
    cur: DictCursor, alert: Alert, kind: EventType, at: datetime, **changes: Any
) -> AlertEvent:
    changed = replace(alert, updated_at=at, **changes)
    assignments = ", ".join(f"{name} = %s" for name in (*changes, "updated_at"))
    cur.execute(
        f"UPDATE alerts SET {assignments} WHERE alert_id = %s",  # noqa: S608 - names are ours
        [*changes.values(), at, alert.alert_id],
    )
    return AlertEvent(kind, changed, at)


def record(cur: psycopg.Cursor[Any], event: AlertEvent) -> None:
    """Queue a transition for the ``alerts`` topic, in the caller's transaction."""
    cur.execute(
        "INSERT INTO alert_outbox (event_id, alert_id, payload) VALUES (%s, %s, %s)"
        " ON CONFLICT (event_id) DO NOTHING",
        (event.event_id, event.alert.alert_id, event.to_json()),
    )


def record_change(cur: psycopg.Cursor[Any], alert_id: str, kind: EventType, at: datetime) -> None:
    """Queue the current row of an alert changed outside the engine (an operator's action)."""
    cur.execute(
        f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE alert_id = %s",  # noqa: S608
        (alert_id,),
    )
    row = cur.fetchone()
    if row is not None:
        values = row if isinstance(row, dict) else dict(zip(ALERT_COLUMNS, row, strict=True))
        record(cur, AlertEvent(kind, Alert.from_row(values), at))


def resolve_open(cur: psycopg.Cursor[Any], prefix: str, at: datetime) -> list[AlertEvent]:
    """Resolve every open alert whose id starts with ``prefix``, as the engine resolves one: the
    row updated and the transition queued for the alerts topic, in the caller's transaction.
    For alerts raised outside the rules (the supervisor's ``pipeline_failing:``)."""
    cur.execute(
        f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts"  # noqa: S608 - names are ours
        " WHERE starts_with(alert_id, %s) AND status = ANY(%s) ORDER BY alert_id FOR UPDATE",
        (prefix, list(OPEN)),
    )
    rows = cur.fetchall()
    events = []
    for row in rows:
        values = row if isinstance(row, dict) else dict(zip(ALERT_COLUMNS, row, strict=True))
        event = _update(
            cur, Alert.from_row(values), "resolved", at, status="resolved", resolved_at=at
        )
        record(cur, event)
        events.append(event)
    return events


def _message(
    rule: Rule, subject: _Subject, value: float, threshold: float, detail: Mapping[str, Any]
) -> str:
    fields = {
        "place": subject.place,
        "value": value,
        "threshold": threshold,
        "category": rule.metric.replace("_", " "),
        "horizon": "the hour",
        "unit": "",
        **detail,
    }
    try:
        return rule.message.format_map(fields)
    except (KeyError, ValueError, IndexError) as err:
        raise RuleError(f"rule {rule.id!r}: message cannot be formatted ({err})") from err


# ----------------------------------------------------------------------------- reads
def _subjects(cur: DictCursor, observations: Iterable[Observation]) -> dict[str, _Subject]:
    sensors = sorted({o.sensor_id for o in observations if o.sensor_id})
    crossings = sorted({o.intersection_id for o in observations if o.intersection_id})
    zones = sorted({o.zone_id for o in observations if o.zone_id})
    found: dict[str, _Subject] = {}
    if sensors:
        cur.execute(
            "SELECT sensor_id, kind, name, zone_id FROM sensors WHERE sensor_id = ANY(%s)",
            (sensors,),
        )
        for r in cur.fetchall():
            found[f"sensor:{r['sensor_id']}"] = _Subject(r["name"], r["kind"], r["zone_id"])
    if crossings:
        cur.execute(
            "SELECT intersection_id, name, zone_id FROM intersections"
            " WHERE intersection_id = ANY(%s)",
            (crossings,),
        )
        for r in cur.fetchall():
            found[f"intersection:{r['intersection_id']}"] = _Subject(r["name"], None, r["zone_id"])
    if zones:
        cur.execute("SELECT zone_id, name FROM zones WHERE zone_id = ANY(%s)", (zones,))
        for r in cur.fetchall():
            found.setdefault(f"zone:{r['zone_id']}", _Subject(r["name"], None, r["zone_id"]))
    for obs in observations:  # unknown to the tables: named by its id, still alerted on
        found.setdefault(obs.subject, _Subject(obs.subject.partition(":")[2]))
    return found


def _load_states(cur: DictCursor, keys: set[tuple[str, str]]) -> dict[tuple[str, str], _State]:
    rules = sorted({k[0] for k in keys})
    subjects = sorted({k[1] for k in keys})
    cur.execute(
        "SELECT * FROM alert_state WHERE rule_id = ANY(%s) AND subject = ANY(%s)"
        " ORDER BY rule_id, subject FOR UPDATE",
        (rules, subjects),
    )
    return {(r["rule_id"], r["subject"]): _State(**r) for r in cur.fetchall()}


def _load_alerts(cur: DictCursor, alert_ids: list[str]) -> dict[str, Alert]:
    if not alert_ids:
        return {}
    cur.execute(
        f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE alert_id = ANY(%s)",  # noqa: S608
        (alert_ids,),
    )
    return {r["alert_id"]: Alert.from_row(r) for r in cur.fetchall()}


def _save_states(cur: DictCursor, states: Iterable[_State]) -> None:
    rows = [
        (
            s.rule_id,
            s.subject,
            s.breaches,
            s.clears,
            s.first_breach,
            s.alert_id,
            s.armed,
            s.last_at,
            s.last_value,
        )
        for s in states
        if s.last_at is not None
    ]
    cur.executemany(
        "INSERT INTO alert_state (rule_id, subject, breaches, clears, first_breach, alert_id,"
        " armed, last_at, last_value) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (rule_id, subject) DO UPDATE SET breaches = excluded.breaches,"
        " clears = excluded.clears, first_breach = excluded.first_breach,"
        " alert_id = excluded.alert_id, armed = excluded.armed, last_at = excluded.last_at,"
        " last_value = excluded.last_value",
        rows,
    )


# ----------------------------------------------------------------------------- Kafka
class OutboxPublisher:
    """Publishes ``alert_outbox`` to the Kafka ``alerts`` topic in the order it was queued
    (``seq``), keyed by alert, so one alert's events reach its partition in order.

    Rows are marked published only after the broker acknowledged them; a failure leaves them for
    the next call (at least once: consumers de-duplicate by ``event_id``). One publisher drains a
    schema's outbox at a time (a transaction-level advisory lock): a call that finds another one
    at work returns 0 and leaves the rows to it, rather than send later events of an alert while
    the other still holds its earlier ones.
    """

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 15.0) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self._timeout_s = timeout_s
        self._producer: Producer | None = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": "cityos-alerts",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": int(timeout_s * 1000),
                "logger": logging.getLogger("kafka.librdkafka"),  # not raw to stderr
            }
        )

    def publish_pending(self, conn: psycopg.Connection, limit: int = 1000) -> int:
        """Publish up to ``limit`` pending events; the number published."""
        producer = self._producer
        if producer is None:
            raise RuntimeError(f"the publisher to {self.topic} is closed")
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "SELECT pg_try_advisory_xact_lock(hashtextextended(%s || current_schema(), 0))",
                (DRAIN_LOCK,),
            )
            locked = cur.fetchone()
            if locked is None or not locked[0]:
                log.debug("another publisher drains the outbox to %s", self.topic)
                return 0
            cur.execute(
                "SELECT event_id, alert_id, payload FROM alert_outbox WHERE published_at IS NULL"
                " ORDER BY seq LIMIT %s FOR UPDATE",
                (limit,),
            )
            rows = cur.fetchall()
            if not rows:
                return 0
            delivered: list[str] = []
            failures: list[str] = []

            def on_delivery(err: Any, msg: Any, event_id: str) -> None:
                if err is None:
                    delivered.append(event_id)
                else:
                    failures.append(f"{event_id}: {err}")

            for event_id, alert_id, payload in rows:
                producer.produce(
                    self.topic,
                    key=alert_id.encode(),
                    value=bytes(payload),
                    on_delivery=functools.partial(on_delivery, event_id=event_id),
                )
            producer.flush(self._timeout_s)
            if failures:
                log.error(
                    "%d alert events not published to %s (kept for retry): %s",
                    len(failures),
                    self.topic,
                    failures[:3],
                )
            cur.execute(
                "UPDATE alert_outbox SET published_at = now() WHERE event_id = ANY(%s)",
                (delivered,),
            )
        return len(delivered)

    def close(self) -> None:
        """Deliver what is queued, then drop the client (its connections close with it)."""
        if self._producer is not None:
            self._producer.flush(self._timeout_s)
            self._producer = None
