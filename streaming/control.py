"""The controller side of control actions: approved signal changes from Kafka into the twin.

The NL-query service publishes every approved signal-timing change to the control topic
(``cityos.nlq.actuator.KafkaActuator``, keyed by intersection id). Next to the SUMO twin a
:class:`ControlLoop` polls that topic between simulation steps and, for each change:

1. locks the action's row and checks it still awaits this step (``sent``/``approved`` for an
   apply, ``applied`` for a rollback) and that the message is exactly what was approved;
   anything else is skipped, so a message delivered again after a restart changes nothing;
2. locks the phase's row of ``signal_phases`` (the plan in force): a rollback is refused unless
   the phase still runs the green its action set (a later change would be undone);
3. has the :class:`SignalController` apply it, which reads the plan back from the controller;
4. in the same PostgreSQL transaction updates ``signal_phases.green_s``, the action (``applied``
   or ``rolled_back``) and writes an ``action_audit`` row (step ``apply`` or ``rollback``, actor
   ``actuator:sumo``) with the green before (the plan in force the transaction locked, not the
   controller's read-back: a change set again after its record failed still records the green
   it replaced) and after; or, when the controller refused, marks the action ``failed`` (a
   refused rollback leaves it ``applied``) with the reason and leaves the plan alone;
5. commits the message's offset only after that transaction committed; when the database
   failed, the message is read and applied again (setting an absolute green twice is harmless).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cityos import metrics
from cityos.errors import CityOSError

log = logging.getLogger(__name__)

Kind = Literal["apply", "rollback"]
KINDS = ("apply", "rollback")
AWAITING: dict[str, tuple[str, ...]] = {  # the action statuses a message may act on
    "apply": ("approved", "sent"),
    "rollback": ("applied",),
}
STATUS_AFTER = {"apply": "applied", "rollback": "rolled_back"}
CONSUMER_GROUP = "cityos-control"


class ControlError(CityOSError):
    """A change could not be applied or confirmed; the message says why."""


class ControlRefused(ControlError):
    """The controller refused the change (unknown signal or phase, green outside its limits)."""


class BadControlMessage(ControlError):
    """A control-topic message that is not a change (kept out of the loop, logged)."""


@dataclass(frozen=True)
class ControlChange:
    """One message of the control topic."""

    action_id: str
    intersection_id: str
    phase_index: int
    green_s: float
    kind: Kind = "apply"

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @property
    def key(self) -> bytes:
        return self.intersection_id.encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> ControlChange:
        try:
            data = json.loads(raw or b"")
            change = cls(
                action_id=str(data["action_id"]),
                intersection_id=str(data["intersection_id"]),
                phase_index=data["phase_index"],
                green_s=float(data["green_s"]),
                kind=data.get("kind", "apply"),
            )
        except (ValueError, TypeError, KeyError) as err:
            raise BadControlMessage(f"not a control change: {err}") from err
        if isinstance(change.phase_index, bool) or not isinstance(change.phase_index, int):
            raise BadControlMessage(f"phase_index {change.phase_index!r} is not an integer")
        if change.kind not in KINDS:
            raise BadControlMessage(f"kind {change.kind!r} is not one of {', '.join(KINDS)}")
        return change


@dataclass(frozen=True)
class ConfirmedPlan:
    """A phase's green as read back from the controller before and after a change (the loop
    records the plan in force as the green before)."""

    intersection_id: str
    phase_index: int
    green_before_s: float
    green_after_s: float
    program_id: str | None = None

    def before(self) -> dict[str, Any]:
        return {"phase_index": self.phase_index, "green_s": self.green_before_s}

    def after(self) -> dict[str, Any]:
        return {
            "phase_index": self.phase_index,
            "green_s": self.green_after_s,
            "program_id": self.program_id,
        }


class SignalController(Protocol):
    """A traffic signal controller that changes one green phase and confirms it by reading back.

    Here: :class:`SumoController` (the twin, through TraCI/libsumo). A real controller would sit
    behind the same call through an NTCIP 1202 (Actuated Signal Controller) adapter, which we
    cannot run here: the green maps to the phase's timing objects (``phaseMinimumGreen``,
    ``phaseMaximum1``/``phaseMaximum2`` of ``phaseTable``; in a coordinated plan the split of
    ``splitTable`` for the active ``patternTable`` entry and its ``patternCycleTime``), written
    with SNMP SET, preferably into a new pattern/timing plan activated by
    ``timebaseAscPatternSync`` or a pattern command at the cycle's end, and confirmed by reading
    the objects back (GET) and ``unitControlStatus``. ``apply`` refuses (``ControlRefused``) what
    the controller's own limits do not allow, whatever the database said, and raises
    ``ControlError`` when it could not confirm the change.
    """

    actor: str  # who the audit trail names, e.g. 'actuator:sumo'

    def green(self, intersection_id: str, phase_index: int) -> tuple[float, str]:
        """The green the controller runs on the phase now, and its program's id."""
        ...

    def apply(self, change: ControlChange) -> ConfirmedPlan: ...


class SumoController:
    """The twin as controller: ``Twin.set_green``, confirmed from SUMO's live program."""

    actor = "actuator:sumo"

    def __init__(self, twin: Any) -> None:
        self.twin = twin  # cityos.streaming.sources.twin.Twin, started

    def green(self, intersection_id: str, phase_index: int) -> tuple[float, str]:
        """The green SUMO's running program gives the phase now, and the program's id."""
        state = self.twin.signal_state().get(intersection_id)
        if state is None:
            raise ControlRefused(f"the twin has no signal {intersection_id!r}")
        if not 0 <= phase_index < len(state.phases):
            raise ControlRefused(
                f"{intersection_id} has green phases 0..{len(state.phases) - 1}, not {phase_index}"
            )
        return state.phases[phase_index].green_s, state.program_id

    def apply(self, change: ControlChange) -> ConfirmedPlan:
        before, _ = self.green(change.intersection_id, change.phase_index)
        try:
            self.twin.set_green(change.intersection_id, change.phase_index, change.green_s)
        except ValueError as err:
            raise ControlRefused(str(err)) from err
        after, program = self.green(change.intersection_id, change.phase_index)
        if after != change.green_s:
            raise ControlError(
                f"SUMO runs {after:g} s on {change.intersection_id} phase {change.phase_index} "
                f"after setting {change.green_s:g} s"
            )
        return ConfirmedPlan(change.intersection_id, change.phase_index, before, after, program)


Connect = Callable[[], AbstractContextManager[psycopg.Connection]]


@dataclass
class LoopStats:
    applied: int = 0
    rolled_back: int = 0
    failed: int = 0
    skipped: int = 0
    bad: int = 0


def _one(conn: psycopg.Connection, query: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchone()


class ControlLoop:
    """Applies the control topic's changes through a controller and records them in PostgreSQL.

    ``poll()`` never blocks: it handles what the consumer already fetched (at most
    ``max_messages``) and returns; the twin calls it between simulation steps.
    """

    def __init__(
        self,
        controller: SignalController,
        connect: Connect,
        consumer: Any = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_messages: int = 10,
    ) -> None:
        self.controller = controller
        self._connect = connect
        self._consumer = consumer  # confluent_kafka.Consumer, assigned, no auto commit
        self._clock = clock
        self.max_messages = max_messages
        self.stats = LoopStats()
        self._approved_at: datetime | None = None

    @classmethod
    def from_settings(cls, controller: SignalController, settings: Any) -> ControlLoop:
        """Consumer on ``Topics(settings.topic_prefix).control``; database of the settings."""
        from cityos.db import connect
        from cityos.topics import Topics

        url, schema = settings.database_url.get_secret_value(), settings.database_schema
        consumer = control_consumer(
            settings.kafka_bootstrap, Topics(settings.topic_prefix).control, settings.topic_prefix
        )
        return cls(controller, lambda: connect(url, schema), consumer)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def restore(self) -> list[ConfirmedPlan]:
        """Make the controller run the plan in force (``signal_phases``), e.g. after the twin
        restarted from its scenario's original program while applied changes stand. Each phase
        that differs is set and read back; returns what was changed."""
        with self._connect() as conn:
            plan = conn.execute(
                "SELECT intersection_id, phase_index, green_s FROM signal_phases"
                " ORDER BY intersection_id, phase_index"
            ).fetchall()
        restored = []
        for intersection_id, phase_index, green_s in plan:
            try:
                running, _ = self.controller.green(intersection_id, phase_index)
            except ControlRefused:
                continue  # a signal of another city or network
            if running != green_s:
                change = ControlChange(
                    action_id="restore",
                    intersection_id=intersection_id,
                    phase_index=phase_index,
                    green_s=green_s,
                    kind="apply",
                )
                restored.append(self.controller.apply(change))
        for plan_ in restored:
            log.info(
                "restored the plan in force on %s phase %d: %g s (the program ran %g s)",
                plan_.intersection_id,
                plan_.phase_index,
                plan_.green_after_s,
                plan_.green_before_s,
            )
        return restored

    def poll(self) -> int:
        """Handle the messages waiting now; returns how many were handled."""
        from confluent_kafka import KafkaException, TopicPartition

        assert self._consumer is not None
        handled = 0
        while handled < self.max_messages:
            message = self._consumer.poll(0)
            if message is None:
                break
            if message.error():
                log.warning("control topic: %s", message.error())
                continue
            where = f"{message.topic()}[{message.partition()}] offset={message.offset()}"
            try:
                change = ControlChange.decode(message.value())
            except BadControlMessage as err:
                log.error("%s skipped: %s", where, err)
                self.stats.bad += 1
            else:
                try:
                    self.handle(change)
                except psycopg.OperationalError as err:  # the database is away: retry later
                    log.error("%s not handled, retried on a later poll: %s", where, err)
                    self._consumer.seek(
                        TopicPartition(message.topic(), message.partition(), message.offset())
                    )
                    break
            try:
                self._consumer.commit(message=message, asynchronous=False)
            except KafkaException as err:  # the database holds what was done: a replay is skipped
                log.warning("%s handled, offset not committed: %s", where, err)
            handled += 1
        return handled

    def handle(self, change: ControlChange) -> str:
        """Apply one change and record it: 'applied', 'rolled_back', 'failed' or 'skipped'."""
        result = self._handle(change)
        metrics.record_confirmation(change.kind, result, self._approved_at)  # issue 6
        return result

    def _handle(self, change: ControlChange) -> str:
        self._approved_at = None  # issue 6: for the approval -> confirmation histogram
        with self._connect() as conn, conn.transaction():
            action = _one(
                conn,
                "SELECT status, kind, intersection_id, params, decided_at FROM actions"
                " WHERE action_id = %s FOR UPDATE",
                (change.action_id,),
            )
            self._approved_at = action["decided_at"] if action else None
            if action is None or action["status"] not in AWAITING[change.kind]:
                status = action["status"] if action else "unknown"
                log.info(
                    "%s of %s skipped: the action is %s", change.kind, change.action_id, status
                )
                self.stats.skipped += 1
                return "skipped"
            in_force = _one(  # the plan in force, locked until the change is recorded
                conn,
                "SELECT green_s FROM signal_phases WHERE intersection_id = %s"
                " AND phase_index = %s FOR UPDATE",
                (change.intersection_id, change.phase_index),
            )
            mismatch = self._mismatch(conn, change, action, in_force)
            if mismatch is None:
                assert in_force is not None
                try:  # the green before is the recorded one, whatever the controller runs now
                    plan = replace(
                        self.controller.apply(change), green_before_s=in_force["green_s"]
                    )
                except ControlError as err:
                    mismatch = str(err)
            if mismatch is not None:
                self._fail(conn, change, action["status"], mismatch)
                return "failed"
            self._record(conn, change, action["status"], plan)
        log.info(
            "%s %s: %s phase %d green %g -> %g s",
            change.kind,
            change.action_id,
            change.intersection_id,
            change.phase_index,
            plan.green_before_s,
            plan.green_after_s,
        )
        return STATUS_AFTER[change.kind]

    def _mismatch(
        self,
        conn: psycopg.Connection,
        change: ControlChange,
        action: dict[str, Any],
        in_force: dict[str, Any] | None,
    ) -> str | None:
        """Why the message is not the approved change (or its rollback), or why it must not be
        carried out now; None when it may."""
        params = action["params"]
        where = (action["intersection_id"], params.get("phase_index"))
        if action["kind"] != "signal_timing" or where != (
            change.intersection_id,
            change.phase_index,
        ):
            return f"the message does not match action {change.action_id}"
        if change.kind == "apply":
            expected = params.get("green_s")
        else:  # back to the green the apply step found
            applied = _one(
                conn,
                "SELECT before FROM action_audit WHERE action_id = %s AND step = 'apply'"
                " AND status_after = 'applied' ORDER BY audit_id DESC LIMIT 1",
                (change.action_id,),
            )
            expected = ((applied or {}).get("before") or {}).get("green_s")
        if expected is None or float(expected) != change.green_s:
            return f"the message's green {change.green_s:g} s is not the one of {change.action_id}"
        if in_force is None:
            return (
                f"{change.intersection_id} phase {change.phase_index} is not in the plan in force"
            )
        set_s = params.get("green_s")  # a rollback: the phase must still run what it set
        if change.kind == "rollback" and (set_s is None or in_force["green_s"] != float(set_s)):
            return (
                f"{change.intersection_id} phase {change.phase_index} runs "
                f"{in_force['green_s']:g} s, not the {set_s} s {change.action_id} set: a later "
                "change stands, and restoring would undo it"
            )
        return None

    def _record(
        self, conn: psycopg.Connection, change: ControlChange, status: str, plan: ConfirmedPlan
    ) -> None:
        now = self._clock()
        status_after = STATUS_AFTER[change.kind]
        conn.execute(
            "UPDATE signal_phases SET green_s = %s WHERE intersection_id = %s AND phase_index = %s",
            (plan.green_after_s, plan.intersection_id, plan.phase_index),
        )
        note = (
            "confirmed by the controller"
            if change.kind == "apply"
            else f"rolled back to {plan.green_after_s:g} s, confirmed by the controller"
        )
        conn.execute(
            "UPDATE actions SET status = %s, applied_at = CASE WHEN %s THEN %s ELSE applied_at END,"
            " note = %s WHERE action_id = %s",
            (status_after, change.kind == "apply", now, note, change.action_id),
        )
        self._audit(conn, change, change.kind, now, status, status_after, plan, note)
        if change.kind == "apply":
            self.stats.applied += 1
        else:
            self.stats.rolled_back += 1

    def _fail(self, conn: psycopg.Connection, change: ControlChange, status: str, why: str) -> None:
        """A refused apply fails the action; a refused rollback leaves it applied, noted."""
        now = self._clock()
        log.warning("%s of %s refused: %s", change.kind, change.action_id, why)
        if change.kind == "apply":
            status_after, note = "failed", f"the controller refused: {why}"
        else:
            status_after, note = status, f"rollback refused by the controller: {why}"
        conn.execute(
            "UPDATE actions SET status = %s, note = %s WHERE action_id = %s",
            (status_after, note, change.action_id),
        )
        self._audit(conn, change, "fail", now, status, status_after, None, note)
        self.stats.failed += 1

    def _audit(
        self,
        conn: psycopg.Connection,
        change: ControlChange,
        step: str,
        at: datetime,
        status_before: str,
        status_after: str,
        plan: ConfirmedPlan | None,
        note: str,
    ) -> None:
        conn.execute(
            "INSERT INTO action_audit (action_id, step, actor, actor_role, at, status_before,"
            " status_after, before, after, note) VALUES (%s, %s, %s, 'actuator', %s, %s, %s,"
            " %s, %s, %s)",
            (
                change.action_id,
                step,
                self.controller.actor,
                at,
                status_before,
                status_after,
                None if plan is None else Jsonb(plan.before()),
                None if plan is None else Jsonb(plan.after()),
                note,
            ),
        )


def control_consumer(bootstrap: str, topic: str, group_prefix: str = "") -> Any:
    """A confluent-kafka consumer assigned every partition of ``topic`` (no group rebalancing:
    one controller per topic), resuming at the group's committed offsets, else the earliest."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_prefix + CONSUMER_GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "client.id": "cityos-control",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
    except KafkaException as err:
        consumer.close()
        raise ControlError(f"cannot reach Kafka at {bootstrap}: {err}") from err
    partitions = metadata.topics[topic].partitions if topic in metadata.topics else {}
    if not partitions or metadata.topics[topic].error is not None:
        consumer.close()
        raise ControlError(f"the control topic {topic} does not exist (`cityos up` creates it)")
    consumer.assign(
        _start_offsets(consumer, [TopicPartition(topic, p) for p in sorted(partitions)])
    )
    return consumer


def _start_offsets(consumer: Any, partitions: list[Any], wait_s: float = 30.0) -> list[Any]:
    """Where to start reading: the group's committed offsets, else the beginning.

    Asked explicitly (with retries) rather than left to the assignment: a fresh broker may need a
    while to elect the group coordinator, and a failed implicit fetch would leave the partitions
    unread. Starting at the beginning is safe: a change already recorded is skipped.
    """
    import time

    from confluent_kafka import OFFSET_BEGINNING, KafkaException

    deadline = time.monotonic() + wait_s
    while True:
        try:
            committed = consumer.committed(partitions, timeout=10)
            break
        except KafkaException as err:
            if time.monotonic() > deadline:
                log.warning("control topic: no committed offsets (%s); reading from the start", err)
                committed = partitions
                break
            time.sleep(1.0)
    for tp in committed:
        if tp.offset < 0:  # nothing committed yet (or unknown): from the beginning
            tp.offset = OFFSET_BEGINNING
    return list(committed)
