"""The controller side of control actions: approved signal changes from Kafka into the twin.

The NL-query service publishes every approved signal-timing change to the control topic
(``cityos.nlq.actuator.KafkaActuator``, keyed by intersection id). Next to the SUMO twin a
:class:`ControlLoop` polls that topic between simulation steps and, for each change:

1. locks the action's row and checks it still awaits this step (``sent``/``approved`` for an
   apply, ``applied`` for a rollback) and that the message is exactly what was approved (its
   intersection, phase and green; for a rollback, also that the action's latest audit step is a
   person's rollback request, which the service commits with the message under the action's
   row lock); anything else is skipped and logged, never held against the
   action, so a message delivered again after a restart changes nothing and a stray message
   cannot fail an approved change. A replay skipped because its action was decided meanwhile
   puts the phase back to the plan in force, should the controller run something else;
2. locks the intersection's rows of ``signal_phases`` (the plan in force) and refuses what must
   not run now: a rollback unless the phase still runs the green its action set (a later change
   would be undone), any change that puts the cycle Σ(green + intergreen) outside
   ``CITYOS_NLQ_MIN_CYCLE_S..CITYOS_NLQ_MAX_CYCLE_S`` (the same bounds the service checks when
   it proposes, re-checked here because other changes may have been applied since), and an
   apply approved more than ``CITYOS_CONTROL_MAX_DELAY_S`` ago (an approval is a decision about
   the traffic of its time, not of whenever the controller comes back);
3. has the :class:`SignalController` apply it, which reads the plan back from the controller
   (SUMO keeps durations in whole milliseconds: the green is set rounded to
   ``GREEN_DECIMALS`` and the read-back compared within half of that);
4. in the same PostgreSQL transaction updates ``signal_phases.green_s`` to the green the
   controller read back, the action (``applied`` or ``rolled_back``) and writes an
   ``action_audit`` row (step ``apply`` or ``rollback``, actor ``actuator:sumo``) with the green
   before (the plan in force the transaction locked, not the controller's read-back: a change
   set again after its record failed still records the green it replaced) and after; or, when
   it was refused, marks the action ``failed`` (a refused rollback leaves it ``applied``) with
   the reason, leaves the plan alone and records the green the controller runs;
5. commits the message's offset only after that transaction committed; when the database is
   away (``psycopg.OperationalError``) the message is read and applied again (setting an
   absolute green twice is harmless). Any other failure (a message the database cannot take, a
   controller error) puts the controller back to the plan in force, fails the action when it can
   still be recorded, and skips the message: it is logged as ``topic[partition] offset=N``,
   counted as bad and committed, so one message never stops the twin.
"""

from __future__ import annotations

import json
import logging
import math
import re
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
GREEN_DECIMALS = 3  # the controller's resolution: SUMO keeps phase durations in whole ms
ACTION_ID = re.compile(r"act_[0-9a-f]{12}")  # as cityos.nlq.actions makes them
MAX_ID_CHARS = 128  # an intersection id longer than this is not one


def round_green(green_s: float) -> float:
    """A green as the controller can run it, rounded to its resolution (7.3333 s -> 7.333 s;
    6.3 + 0.1 -> 6.4 s): the service rounds at proposal so that what is approved is what runs."""
    return round(green_s, GREEN_DECIMALS)


def same_green(a: float, b: float) -> bool:
    """Whether two greens are the same to the controller (within half its resolution)."""
    return abs(a - b) < 0.5 * 10.0**-GREEN_DECIMALS


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
        """The change a message carries; BadControlMessage, with the reason, for anything that
        is not one (the ids as the service makes them, a finite positive green in seconds)."""
        try:
            data = json.loads(raw or b"")
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            change = cls(
                action_id=data["action_id"],
                intersection_id=data["intersection_id"],
                phase_index=data["phase_index"],
                green_s=data["green_s"],
                kind=data.get("kind", "apply"),
            )
        except (ValueError, TypeError, KeyError) as err:
            raise BadControlMessage(f"not a control change: {err!r}") from err
        problems = change._problems()
        if problems:
            raise BadControlMessage("; ".join(problems))
        return replace(change, green_s=float(change.green_s))  # a JSON 30 is 30.0 s

    def _problems(self) -> list[str]:
        problems = []
        if not isinstance(self.action_id, str) or not ACTION_ID.fullmatch(self.action_id):
            problems.append(f"action_id {self.action_id!r} is not an action id (act_ + 12 hex)")
        if (
            not isinstance(self.intersection_id, str)
            or not 0 < len(self.intersection_id) <= MAX_ID_CHARS
            or not self.intersection_id.isprintable()
        ):
            problems.append(
                f"intersection_id {self.intersection_id!r} is not 1-{MAX_ID_CHARS} printable "
                "characters"
            )
        if (
            isinstance(self.phase_index, bool)
            or not isinstance(self.phase_index, int)
            or self.phase_index < 0
        ):
            problems.append(f"phase_index {self.phase_index!r} is not an integer >= 0")
        if (
            isinstance(self.green_s, bool)
            or not isinstance(self.green_s, int | float)
            or not math.isfinite(self.green_s)
            or self.green_s <= 0
        ):
            problems.append(f"green_s {self.green_s!r} is not a finite number of seconds > 0")
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        return problems


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
        green_s = round_green(change.green_s)  # what SUMO can run; it keeps whole milliseconds
        try:
            self.twin.set_green(change.intersection_id, change.phase_index, green_s)
        except ValueError as err:
            raise ControlRefused(str(err)) from err
        after, program = self.green(change.intersection_id, change.phase_index)
        if not same_green(after, green_s):  # SUMO runs neither: put back what ran
            self.twin.set_green(change.intersection_id, change.phase_index, before)
            raise ControlError(
                f"SUMO ran {after:g} s on {change.intersection_id} phase {change.phase_index} "
                f"after setting {green_s:g} s; set back to {before:g} s"
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


def _all(conn: psycopg.Connection, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall()


def _seconds(value: Any) -> float | None:
    """A stored green as float; None when it is not a number (booleans are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class ControlLoop:
    """Applies the control topic's changes through a controller and records them in PostgreSQL.

    ``poll()`` never blocks: it handles what the consumer already fetched (at most
    ``max_messages``) and returns; the twin calls it between simulation steps. ``cycle_bounds``
    are the (min, max) cycle in seconds a change may leave its intersection with, and
    ``max_delay_s`` how long after its approval an apply may still run (``from_settings``:
    ``CITYOS_NLQ_MIN_CYCLE_S``, ``CITYOS_NLQ_MAX_CYCLE_S``, ``CITYOS_CONTROL_MAX_DELAY_S``).
    """

    def __init__(
        self,
        controller: SignalController,
        connect: Connect,
        consumer: Any = None,
        *,
        cycle_bounds: tuple[float, float],
        max_delay_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_messages: int = 10,
    ) -> None:
        self.controller = controller
        self._connect = connect
        self._consumer = consumer  # confluent_kafka.Consumer, assigned, no auto commit
        self.cycle_bounds = cycle_bounds
        self.max_delay_s = max_delay_s
        self._clock = clock
        self.max_messages = max_messages
        self.stats = LoopStats()
        self._approved_at: datetime | None = None

    @classmethod
    def from_settings(cls, controller: SignalController, settings: Any) -> ControlLoop:
        """Consumer on ``Topics(settings.topic_prefix).control``; database, cycle bounds and
        maximum delay of the settings."""
        from cityos.db import connect
        from cityos.topics import Topics

        url, schema = settings.database_url.get_secret_value(), settings.database_schema
        consumer = control_consumer(
            settings.kafka_bootstrap, Topics(settings.topic_prefix).control, settings.topic_prefix
        )
        return cls(
            controller,
            lambda: connect(url, schema),
            consumer,
            cycle_bounds=(settings.nlq_min_cycle_s, settings.nlq_max_cycle_s),
            max_delay_s=settings.control_max_delay_s,
        )

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
            if not same_green(running, green_s):
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
        """Handle the messages waiting now; returns how many were handled.

        Only a database that is away keeps a message for a later poll; one that cannot be
        handled for any other reason is logged, counted as bad and committed (skipped), so that
        one message never stops the twin nor comes back after every restart."""
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
                except Exception as err:  # any other error is this message's: skip it
                    log.exception(
                        "%s skipped: %s of %s failed", where, change.kind, change.action_id
                    )
                    self.stats.bad += 1
                    self._give_up(change, err)
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
        undo: float | None = None  # the plan in force, once the controller may run the change
        try:
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
                    if action is not None:
                        self._reconcile(conn, change, action)
                    self.stats.skipped += 1
                    return "skipped"
                unlike = self._unlike(conn, change, action)
                if unlike is not None:  # a stray or forged message: it does not fail the action
                    log.warning("%s of %s skipped: %s", change.kind, change.action_id, unlike)
                    self.stats.skipped += 1
                    return "skipped"
                phases = _all(  # the plan in force, locked until the change is recorded
                    conn,
                    "SELECT phase_index, green_s, intergreen_s FROM signal_phases"
                    " WHERE intersection_id = %s ORDER BY phase_index FOR UPDATE",
                    (change.intersection_id,),
                )
                in_force = next(
                    (p["green_s"] for p in phases if p["phase_index"] == change.phase_index), None
                )
                refusal = self._refusal(change, action, phases, in_force)
                if refusal is None:
                    assert in_force is not None
                    undo = in_force
                    try:  # the green before is the recorded one, whatever the controller runs now
                        plan = replace(self.controller.apply(change), green_before_s=in_force)
                    except ControlError as err:
                        refusal = str(err)
                if refusal is not None:
                    self._fail(conn, change, action["status"], refusal, in_force)
                    return "failed"
                self._record(conn, change, action["status"], plan)
        except psycopg.OperationalError:
            raise  # the database is away: the message is read and applied again
        except Exception:
            if undo is not None:  # nothing will record the change: it must not keep running
                self._put_back(change, undo)
            raise
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

    def _unlike(
        self, conn: psycopg.Connection, change: ControlChange, action: dict[str, Any]
    ) -> str | None:
        """Why the message is not the approved change (or its rollback); None when it is."""
        params = action["params"]
        where = (action["intersection_id"], params.get("phase_index"))
        if action["kind"] != "signal_timing" or where != (
            change.intersection_id,
            change.phase_index,
        ):
            return (
                f"the message ({change.intersection_id} phase {change.phase_index}) does not "
                f"match action {change.action_id}"
            )
        if change.kind == "apply":
            expected = _seconds(params.get("green_s"))
        else:  # back to the green the apply step found, and only when a person asked for it
            latest = _one(
                conn,
                "SELECT step, status_after, actor FROM action_audit WHERE action_id = %s"
                " ORDER BY audit_id DESC LIMIT 1",
                (change.action_id,),
            )
            if latest is None or (latest["step"], latest["status_after"]) != (
                "rollback",
                "applied",
            ):
                last = "nothing" if latest is None else f"{latest['step']} by {latest['actor']}"
                return (
                    f"no rollback of {change.action_id} was requested (its last audit step is "
                    f"{last}): the service records the request before the controller acts"
                )
            applied = _one(
                conn,
                "SELECT before FROM action_audit WHERE action_id = %s AND step = 'apply'"
                " AND status_after = 'applied' ORDER BY audit_id DESC LIMIT 1",
                (change.action_id,),
            )
            expected = _seconds(((applied or {}).get("before") or {}).get("green_s"))
        if expected is None or not same_green(expected, change.green_s):
            return f"the message's green {change.green_s:g} s is not the one of {change.action_id}"
        return None

    def _refusal(
        self,
        change: ControlChange,
        action: dict[str, Any],
        phases: list[dict[str, Any]],
        in_force: float | None,
    ) -> str | None:
        """Why the change (or rollback) must not be carried out now; None when it may."""
        where = f"{change.intersection_id} phase {change.phase_index}"
        if in_force is None:
            return f"{where} is not in the plan in force"
        approved_at = action["decided_at"]
        if change.kind == "apply" and approved_at is not None:
            age_s = (self._clock() - approved_at).total_seconds()
            if age_s > self.max_delay_s:
                return (
                    f"approved at {approved_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}, not applied "
                    f"within {self.max_delay_s:g} s (CITYOS_CONTROL_MAX_DELAY_S): the traffic it "
                    "was approved for has changed; propose it again"
                )
        set_s = _seconds(action["params"].get("green_s"))  # a rollback: the phase must still run it
        if change.kind == "rollback" and (set_s is None or not same_green(in_force, set_s)):
            return (
                f"{where} runs {in_force:g} s, not the {set_s} s {change.action_id} set: a later "
                "change stands, and restoring would undo it"
            )
        cycle = sum(p["green_s"] + p["intergreen_s"] for p in phases)
        new_cycle = round(cycle - in_force + round_green(change.green_s), GREEN_DECIMALS)
        low, high = self.cycle_bounds
        if not low <= new_cycle <= high:
            return (
                f"the cycle at {change.intersection_id} would be {new_cycle:g} s, outside the "
                f"allowed {low:g}-{high:g} s (CITYOS_NLQ_MIN_CYCLE_S, CITYOS_NLQ_MAX_CYCLE_S)"
            )
        return None

    def _reconcile(
        self, conn: psycopg.Connection, change: ControlChange, action: dict[str, Any]
    ) -> None:
        """A replay of an action decided meanwhile: the controller runs the plan in force on the
        message's phase. (A change set before its record was lost, e.g. the database dropped the
        connection, and then rejected while ``sent``, would otherwise keep running unrecorded.)"""
        if self._unlike(conn, change, action) is not None:
            return
        row = _one(
            conn,
            "SELECT green_s FROM signal_phases WHERE intersection_id = %s AND phase_index = %s"
            " FOR UPDATE",
            (change.intersection_id, change.phase_index),
        )
        if row is None:
            return
        try:
            running, _ = self.controller.green(change.intersection_id, change.phase_index)
            if same_green(running, row["green_s"]):
                return
            self.controller.apply(replace(change, green_s=row["green_s"], kind="apply"))
        except ControlError as err:
            log.error(
                "%s phase %d: could not set the plan in force again: %s",
                change.intersection_id,
                change.phase_index,
                err,
            )
            return
        log.warning(
            "%s phase %d ran %g s, not the %g s of the plan in force (a change of %s, now %s,"
            " whose record was lost): set back to the plan in force",
            change.intersection_id,
            change.phase_index,
            running,
            row["green_s"],
            change.action_id,
            action["status"],
        )

    def _put_back(self, change: ControlChange, green_s: float) -> None:
        """The controller runs ``green_s`` (the plan in force) again: the change it was given
        could not be recorded, and an unrecorded change must not keep running."""
        try:
            self.controller.apply(replace(change, green_s=green_s, kind="apply"))
        except Exception as err:  # the error being raised is the one to report; this is logged
            log.error(
                "%s phase %d: could not set the plan in force (%g s) again after %s of %s: %s",
                change.intersection_id,
                change.phase_index,
                green_s,
                change.kind,
                change.action_id,
                err,
            )
        else:
            log.warning(
                "%s phase %d: %s of %s not recorded; the plan in force (%g s) runs again",
                change.intersection_id,
                change.phase_index,
                change.kind,
                change.action_id,
                green_s,
            )

    def _give_up(self, change: ControlChange, error: Exception) -> None:
        """Record that a message of the action could not be handled (it is skipped): an apply
        fails, a rollback leaves the action applied, noted. Best effort: the database that
        refused the change may refuse this too, and then the log holds it."""
        try:
            with self._connect() as conn, conn.transaction():
                action = _one(
                    conn,
                    "SELECT status, kind, intersection_id, params FROM actions"
                    " WHERE action_id = %s FOR UPDATE",
                    (change.action_id,),
                )
                if action is None or action["status"] not in AWAITING[change.kind]:
                    return
                if self._unlike(conn, change, action) is not None:
                    return
                in_force = _one(
                    conn,
                    "SELECT green_s FROM signal_phases WHERE intersection_id = %s"
                    " AND phase_index = %s",
                    (change.intersection_id, change.phase_index),
                )
                self._fail(
                    conn,
                    change,
                    action["status"],
                    f"the controller side failed ({type(error).__name__}: {error})",
                    in_force["green_s"] if in_force else None,
                    refused=False,
                )
        except Exception as err:  # best effort, already on an error's path: logged, not raised
            log.error(
                "%s of %s: the failure could not be recorded either: %s",
                change.kind,
                change.action_id,
                err,
            )

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
        self._audit(
            conn, change, change.kind, now, status, status_after, plan.before(), plan.after(), note
        )
        if change.kind == "apply":
            self.stats.applied += 1
        else:
            self.stats.rolled_back += 1

    def _fail(
        self,
        conn: psycopg.Connection,
        change: ControlChange,
        status: str,
        why: str,
        in_force: float | None,
        *,
        refused: bool = True,
    ) -> None:
        """A refused (or, ``refused=False``, failed) apply fails the action; a rollback leaves it
        applied, noted. The audit row holds the plan in force before and the green the
        controller runs after."""
        now = self._clock()
        log.warning("%s of %s not carried out: %s", change.kind, change.action_id, why)
        if change.kind == "apply":
            status_after = "failed"
            note = f"the controller refused: {why}" if refused else f"not applied: {why}"
        else:
            status_after = status
            note = (
                f"rollback refused by the controller: {why}"
                if refused
                else f"rollback not applied: {why}"
            )
        conn.execute(
            "UPDATE actions SET status = %s, note = %s WHERE action_id = %s",
            (status_after, note, change.action_id),
        )
        before = (
            None if in_force is None else {"phase_index": change.phase_index, "green_s": in_force}
        )
        self._audit(
            conn, change, "fail", now, status, status_after, before, self._running(change), note
        )
        self.stats.failed += 1

    def _running(self, change: ControlChange) -> dict[str, Any] | None:
        """The green the controller runs on the message's phase now, for the audit trail."""
        try:
            green_s, program = self.controller.green(change.intersection_id, change.phase_index)
        except ControlError:
            return None
        return {"phase_index": change.phase_index, "green_s": green_s, "program_id": program}

    def _audit(
        self,
        conn: psycopg.Connection,
        change: ControlChange,
        step: str,
        at: datetime,
        status_before: str,
        status_after: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
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
                None if before is None else Jsonb(before),
                None if after is None else Jsonb(after),
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
