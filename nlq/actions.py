"""Control actions: validated when proposed, applied only after a person approves them.

``ActionService.propose`` stores every draft the pipeline hands over, as ``proposed`` when it
keeps the rules below and as ``rejected`` with the reason when it breaks one:

- signal_timing: the intersection and the phase exist; the new green, rounded to the
  controller's resolution (``cityos.streaming.control.GREEN_DECIMALS``, SUMO's milliseconds:
  what is approved is what runs), lies within the phase's ``[min_green_s, max_green_s]``; the
  cycle Σ(green_s + intergreen_s) after the change lies within the configured bounds;
  intergreens (yellow + all-red) are never changed; at most one pending change per intersection
  (proposed; approved or sent and not yet applied; or applied with a rollback sent and not yet
  confirmed: each would change the plan the proposal is checked against).
- alert: acknowledge needs a firing alert, resolve a firing or acknowledged one; raise needs a
  zone that exists, a severity (info | warning | critical) and a message.

Approval needs an operator (or admin) other than the proposer whenever more than one person
holds such a token (four eyes), before the proposal expires. An approved alert operation is
applied to ``alerts`` at once; an approved signal change goes to the configured ``Actuator``
(none: it stays ``approved`` with a note). A synchronous actuator confirms at once (``applied``);
an asynchronous one (``cityos.nlq.actuator.KafkaActuator``) only hands the change on: the action
is ``sent`` until the controller (``cityos.streaming.control``) confirms it as ``applied`` or
``failed``. ``rollback`` restores the green in force before an applied change, the same way;
it is refused while another change (or rollback) of the intersection is pending (the controller
would apply that one first, and the rollback would then undo it or be checked against a plan
about to change), and when the restored green would break the phase's limits or the cycle
bounds with the other phases as they run now.
Every step lands in ``action_audit`` with who, when, and the target's state before and after.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import psycopg
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from cityos.alerting.engine import record_change
from cityos.nlq.audit import iso_utc, storable
from cityos.nlq.auth import Principal
from cityos.nlq.errors import NLQError
from cityos.nlq.reply import ActionDraft
from cityos.settings import Settings
from cityos.streaming.control import GREEN_DECIMALS, round_green, same_green

log = logging.getLogger(__name__)

Connect = Callable[[], AbstractContextManager[psycopg.Connection]]

PENDING = ("proposed", "approved", "sent")  # the statuses that hold an intersection
ROLLBACK_SENT = "rollback sent"  # an applied action whose rollback the controller has not confirmed
APPLIED_STEP = ("apply", "applied")  # the audit step, and status after it, that applied a change
SEVERITIES = ("info", "warning", "critical")
MAX_MESSAGE_CHARS = 500
SIGNAL_PARAMS = {"phase_index", "green_s"}
INTERGREEN_PARAMS = {"intergreen_s", "yellow_s", "all_red_s", "red_s"}


@dataclass(frozen=True)
class AlertOperation:
    applies_to: tuple[str, ...]  # alert statuses it may act on
    status_after: Literal["acknowledged", "resolved"]


ALERT_OPERATIONS = {
    "acknowledge": AlertOperation(applies_to=("firing",), status_after="acknowledged"),
    "resolve": AlertOperation(applies_to=("firing", "acknowledged"), status_after="resolved"),
}


class ActionError(NLQError):
    """An action request the service cannot carry out; the API turns these into error replies
    (4xx; ``ActuatorUnavailable`` 503)."""


class ActionNotFound(ActionError):
    def __init__(self, action_id: str) -> None:
        self.action_id = action_id
        super().__init__(f"no action {action_id!r}")


class ActionConflict(ActionError):
    """The action's status does not allow the step (already decided, expired)."""


class ActionForbidden(ActionError):
    """The caller may not take this step (role too low, or the four-eyes rule)."""


class ActuatorUnavailable(ActionError):
    """The actuator did not take the step (the control topic did not take the message, the
    controller could not be reached); nothing was changed or recorded, it may be tried again."""


@dataclass(frozen=True)
class Action:
    """A stored action, as the table ``actions`` holds it."""

    action_id: str
    kind: str
    status: str
    target: dict[str, Any]
    params: dict[str, Any]
    reason: str
    summary: str | None
    question: str | None
    intersection_id: str | None
    proposed_by: str
    proposed_at: datetime
    expires_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    applied_at: datetime | None = None
    note: str | None = None
    what_if: dict[str, Any] | None = None  # the twin's predicted effect (migration 0006)

    def contract_json(self) -> dict[str, Any]:
        """The fields of the ``action`` in an ``/ask`` reply (nlq-api.md)."""
        return {
            "action_id": self.action_id,
            "kind": self.kind,
            "status": self.status,
            "target": self.target,
            "params": self.params,
            "reason": self.reason,
        }

    def to_json(self) -> dict[str, Any]:
        """Everything about the action, for the actions routes."""
        return {
            **self.contract_json(),
            "summary": self.summary,
            "question": self.question,
            "proposed_by": self.proposed_by,
            "proposed_at": iso_utc(self.proposed_at),
            "expires_at": iso_utc(self.expires_at),
            "decided_by": self.decided_by,
            "decided_at": iso_utc(self.decided_at),
            "applied_at": iso_utc(self.applied_at),
            "note": self.note,
            "what_if": self.what_if,
        }


@dataclass(frozen=True)
class Applied:
    """The target's state before and after an action took effect."""

    before: dict[str, Any]
    after: dict[str, Any]


class Actuator(Protocol):
    """Puts an approved signal-timing change into effect on a controller.

    ``apply`` returns the plan before and after once the controller has confirmed the change, or
    None when it only handed the change on and the confirmation comes later from the controller
    (``KafkaActuator``: the control topic, read by ``cityos.streaming.control.ControlLoop`` next
    to the SUMO twin, or by the adapter of a real NTCIP-style controller). It raises when the
    change could not be made or handed on. ``rollback`` does the same for a return to
    ``green_s``, the green in force before the applied ``action``.
    """

    def apply(self, action: Action) -> Applied | None: ...

    def rollback(self, action: Action, green_s: float) -> Applied | None: ...


@dataclass(frozen=True)
class Assessment:
    """What validating a draft found: the problems (none: it may be proposed) and the change."""

    change: str  # what it would change, in words
    target: dict[str, Any]
    params: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    before: dict[str, Any] | None = None  # the target's state now
    after: dict[str, Any] | None = None  # and as the action would leave it

    @classmethod
    def invalid(cls, problem: str, target: dict[str, Any], params: dict[str, Any]) -> Assessment:
        return cls(change="", target=target, params=params, problems=[problem])

    @property
    def problem(self) -> str | None:
        return "; ".join(self.problems) or None


def _one(conn: psycopg.Connection, query: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchone()


def _all(conn: psycopg.Connection, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall()


def _number(value: Any) -> float | None:
    """A finite JSON number as float (booleans are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _phase_index(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number.is_integer() else None


def _seconds(value: float) -> str:
    return f"{value:g} s"


class WhatIfSubmitter(Protocol):
    """Runs the what-if of a proposed signal change and stores it in ``actions.what_if``."""

    def submit(self, action_id: str, target: dict[str, Any], params: dict[str, Any]) -> None: ...


class ActionService:
    """Proposes, approves, rejects and expires actions in the tables of migration 0005."""

    def __init__(
        self,
        connect: Connect,
        settings: Settings,
        actuator: Actuator | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        whatif: WhatIfSubmitter | None = None,
    ) -> None:
        self._connect = connect
        self._settings = settings
        self._actuator = actuator
        self._clock = clock
        self._whatif = whatif  # simulates each proposed signal change on the twin (background)

    # ---- the steps ------------------------------------------------------------------------

    def propose(self, draft: ActionDraft, principal: Principal) -> Action:
        """Validate and store a draft: ``proposed``, or ``rejected`` with the reason."""
        if not principal.has_role("operator"):
            raise ActionForbidden("proposing control actions needs the operator role")
        now = self._clock()
        self.expire_due()
        target, params = storable(dict(draft.target)), storable(dict(draft.params))
        intersection_id = target.get("intersection_id") if draft.kind == "signal_timing" else None
        with self._connect() as conn:
            if isinstance(intersection_id, str):  # one proposal at a time per intersection
                _lock_intersection(conn, intersection_id)
            assessment = self._assess(conn, draft.kind, target, params)
            problem = assessment.problem
            action = Action(
                action_id="act_" + secrets.token_hex(6),
                kind=draft.kind,
                status="rejected" if problem else "proposed",
                target=assessment.target,
                params=assessment.params,
                reason=problem or assessment.change,
                summary=storable(draft.summary),
                question=storable(draft.question),
                intersection_id=intersection_id if isinstance(intersection_id, str) else None,
                proposed_by=principal.name,
                proposed_at=now,
                expires_at=now + timedelta(seconds=self._settings.nlq_action_ttl_s),
                decided_at=now if problem else None,
            )
            if action.status == "proposed" and action.intersection_id is not None:
                self._supersede(conn, action, principal)
            self._insert(conn, action)
            self._audit(
                conn,
                action,
                "reject_invalid" if problem else "propose",
                principal,
                None,
                assessment.before,
                assessment.after,
                problem,
            )
        log.info(
            "action %s %s by %s: %s", action.action_id, action.status, principal.name, action.reason
        )
        if self._whatif is not None and action.status == "proposed":  # committed: the row exists
            if action.kind == "signal_timing":
                self._whatif.submit(action.action_id, action.target, action.params)
        return action

    def approve(self, action_id: str, principal: Principal) -> Action:
        """Approve a proposal: an alert operation takes effect now, a signal change goes to the
        actuator."""
        self._require_operator(principal, "approve")
        self.expire_due()
        now = self._clock()
        with self._connect() as conn:
            action = self._load_locked(conn, action_id)
            if action.status != "proposed":
                raise ActionConflict(
                    f"action {action_id} is {action.status}; only a proposed action can be approved"
                )
            if action.expires_at <= now:
                raise ActionConflict(f"action {action_id} expired at {iso_utc(action.expires_at)}")
            if principal.name == action.proposed_by and self._approvers(conn) > 1:
                raise ActionForbidden(
                    f"four eyes: {principal.name} proposed action {action_id}; another operator "
                    "must approve it"
                )
            approved = replace(action, status="approved", decided_by=principal.name, decided_at=now)
            current = self._assess(conn, action.kind, action.target, action.params, action_id)
            self._audit(
                conn, approved, "approve", principal, action.status, current.before, current.after
            )
            if current.problem:  # the world changed since it was proposed
                return self._finish(conn, approved, principal, failed=current.problem)
            if action.kind == "alert":
                applied = self._apply_alert(conn, action, now)
                if applied is None:
                    return self._finish(
                        conn, approved, principal, failed="the alert changed meanwhile"
                    )
                return self._finish(conn, approved, principal, applied=applied)
            if self._actuator is None:
                note = "approved; no actuator is configured, so no controller was changed"
                return self._finish(conn, approved, principal, note=note)
            self._save(conn, approved)
            # still holding the row lock: a controller confirming the change waits for 'sent'
            return self._actuate(conn, approved, principal, current)

    def rollback(self, action_id: str, principal: Principal) -> Action:
        """Restore the green in force before an applied signal change.

        Only the latest change of its phase can be rolled back (the phase must still run the
        green it set), not while another change of the intersection is approved or sent (it
        would take effect first and the rollback would undo it), one rollback per intersection
        at a time, and only when the restored green keeps the phase's limits and the cycle
        bounds with the other phases as they run now (changes applied since may have moved the
        cycle: a rollback is a change like any other). A synchronous actuator confirms at once
        (``rolled_back``); through ``KafkaActuator`` the action stays ``applied`` until the
        controller confirms the rollback, and meanwhile holds its intersection like a pending
        change (``ROLLBACK_SENT``)."""
        self._require_operator(principal, "roll back")
        with self._connect() as conn:
            action = self._load_locked(conn, action_id)
            if action.kind != "signal_timing" or action.status != "applied":
                raise ActionConflict(
                    f"action {action_id} is a {action.status} {action.kind} action; only an "
                    "applied signal timing change can be rolled back"
                )
            if self._actuator is None:
                raise ActionConflict("no actuator is configured, so no controller can be changed")
            if action.intersection_id is None:
                raise ActionConflict(f"action {action_id} names no intersection")
            # the intersection's lock keeps another approval or rollback out meanwhile
            newer = _pending(conn, action.intersection_id, action_id)
            if newer is not None and newer["status"] == ROLLBACK_SENT:
                raise ActionConflict(
                    f"the rollback of action {newer['action_id']} is pending at "
                    f"{action.intersection_id}: the plan changes when the controller confirms it; "
                    f"roll back {action_id} after that"
                )
            if newer is not None:
                raise ActionConflict(
                    f"action {newer['action_id']} ({newer['status']}) is pending at "
                    f"{action.intersection_id}: the controller applies it first and the rollback "
                    f"of {action_id} would undo it; wait until it is applied (and roll it back "
                    "first) or reject it"
                )
            phase_index, green_s = action.params["phase_index"], float(action.params["green_s"])
            trail = _all(
                conn,
                "SELECT step, actor, status_after, before FROM action_audit WHERE action_id = %s"
                " ORDER BY audit_id",
                (action_id,),
            )
            applied = next(  # the step that applied it (a confirmed rollback is 'rollback')
                (s for s in reversed(trail) if (s["step"], s["status_after"]) == APPLIED_STEP),
                None,
            )
            previous = (applied or {}).get("before") or {}
            if _number(previous.get("green_s")) is None:
                raise ActionConflict(f"action {action_id} has no recorded green before it")
            if trail[-1]["step"] == "rollback":
                raise ActionConflict(f"a rollback of action {action_id} is already under way")
            phases = _all(  # the plan in force, every phase: the cycle depends on all of them
                conn,
                "SELECT phase_index, description, green_s, intergreen_s, min_green_s, max_green_s"
                " FROM signal_phases WHERE intersection_id = %s ORDER BY phase_index FOR UPDATE",
                (action.intersection_id,),
            )
            phase = next((p for p in phases if p["phase_index"] == phase_index), None)
            if phase is None or not same_green(phase["green_s"], green_s):
                now_s = "gone" if phase is None else _seconds(phase["green_s"])
                raise ActionConflict(
                    f"phase {phase_index} at {action.intersection_id} runs {now_s} now, not the "
                    f"{_seconds(green_s)} action {action_id} set; roll back the later change first"
                )
            before_s = float(previous["green_s"])
            cycle = _cycle(phases)
            new_cycle = round(cycle - phase["green_s"] + before_s, GREEN_DECIMALS)
            problems = self._timing_problems(
                _intersection_name(conn, action.intersection_id), phase, before_s, new_cycle
            )
            if problems:  # the other phases changed since: restoring would break the limits
                raise ActionConflict(
                    f"action {action_id} cannot be rolled back to {_seconds(before_s)}: "
                    f"{'; '.join(problems)}; change the other phases first or propose a new green"
                )
            before = {"phase_index": phase_index, "green_s": phase["green_s"], "cycle_s": cycle}
            after = {"phase_index": phase_index, "green_s": before_s, "cycle_s": new_cycle}
            try:
                confirmed = self._actuator.rollback(action, before_s)
            except Exception as err:
                log.exception("actuator failed to roll back action %s", action_id)
                raise ActuatorUnavailable(
                    f"the rollback of action {action_id} was not sent, nothing changed: {err}"
                ) from err
            if confirmed is None:
                note = f"rollback to {_seconds(before_s)} sent to the controller"
                self._audit(conn, action, "rollback", principal, action.status, before, after, note)
                done = replace(action, note=note)
                self._save(conn, done)
                return done
            done = replace(action, status="rolled_back", note=f"rolled back by {principal.name}")
            self._save(conn, done)
            self._audit(
                conn, done, "rollback", principal, action.status, confirmed.before, confirmed.after
            )
            return done

    def reject(self, action_id: str, principal: Principal, note: str | None = None) -> Action:
        """Discard a proposal (or an approved change that has not been applied yet)."""
        self._require_operator(principal, "reject")
        self.expire_due()
        now = self._clock()
        with self._connect() as conn:
            action = self._load(conn, action_id, for_update=True)
            if action.status not in PENDING:
                raise ActionConflict(
                    f"action {action_id} is {action.status}; only a pending action can be rejected"
                )
            rejected = replace(
                action,
                status="rejected",
                decided_by=principal.name,
                decided_at=now,
                note=storable(note) or f"rejected by {principal.name}",
            )
            self._save(conn, rejected)
            self._audit(
                conn, rejected, "reject", principal, action.status, None, None, rejected.note
            )
        return rejected

    def _supersede(self, conn: psycopg.Connection, newer: Action, principal: Principal) -> None:
        """One pending change per intersection: a valid new proposal replaces an unapproved one."""
        note = f"superseded by {newer.action_id} from {principal.name}"
        rows = _all(
            conn,
            "UPDATE actions SET status = 'superseded', decided_by = %s, decided_at = %s, note = %s"
            " WHERE intersection_id = %s AND status = 'proposed' RETURNING action_id",
            (principal.name, newer.proposed_at, note, newer.intersection_id),
        )
        for row in rows:
            conn.execute(
                "INSERT INTO action_audit (action_id, step, actor, at, status_before,"
                " status_after, note) VALUES (%s, 'supersede', %s, %s, 'proposed',"
                " 'superseded', %s)",
                (row["action_id"], principal.name, newer.proposed_at, note),
            )

    def expire_due(self) -> list[str]:
        """Mark every proposal past its expiry as expired; returns their ids."""
        now = self._clock()
        with self._connect() as conn:
            rows = _all(
                conn,
                "UPDATE actions SET status = 'expired', decided_at = %s,"
                " note = 'not approved before it expired'"
                " WHERE status = 'proposed' AND expires_at <= %s RETURNING action_id",
                (now, now),
            )
            for row in rows:
                conn.execute(
                    "INSERT INTO action_audit (action_id, step, actor, at, status_before,"
                    " status_after, note) VALUES (%s, 'expire', 'system', %s, 'proposed',"
                    " 'expired', 'not approved before it expired')",
                    (row["action_id"], now),
                )
        return [row["action_id"] for row in rows]

    # ---- reading --------------------------------------------------------------------------

    def get(self, action_id: str) -> Action:
        self.expire_due()
        with self._connect() as conn:
            return self._load(conn, action_id)

    def list_actions(self, status: str | None = None, limit: int = 50) -> list[Action]:
        """The latest actions, newest first, optionally of one status."""
        self.expire_due()
        with self._connect() as conn, conn.cursor(row_factory=class_row(Action)) as cur:
            cur.execute(
                "SELECT * FROM actions WHERE %(status)s::text IS NULL OR status = %(status)s"
                " ORDER BY proposed_at DESC, action_id LIMIT %(limit)s",
                {"status": status, "limit": limit},
            )
            return cur.fetchall()

    def audit_trail(self, action_id: str) -> list[dict[str, Any]]:
        """Every step of an action, in order."""
        with self._connect() as conn:
            return _all(
                conn,
                "SELECT step, actor, actor_role, at, status_before, status_after, before, after,"
                " note FROM action_audit WHERE action_id = %s ORDER BY audit_id",
                (action_id,),
            )

    # ---- validation -----------------------------------------------------------------------

    def _assess(
        self,
        conn: psycopg.Connection,
        kind: str,
        target: dict[str, Any],
        params: dict[str, Any],
        action_id: str | None = None,
    ) -> Assessment:
        if kind == "signal_timing":
            return self._assess_signal_timing(conn, target, params, action_id)
        if kind == "alert":
            return self._assess_alert(conn, target, params)
        return Assessment.invalid(f"unknown action kind {kind!r}", target, params)

    def _assess_signal_timing(
        self,
        conn: psycopg.Connection,
        target: dict[str, Any],
        params: dict[str, Any],
        action_id: str | None,
    ) -> Assessment:
        intersection_id = target.get("intersection_id")
        if not isinstance(intersection_id, str) or not intersection_id:
            return Assessment.invalid("no intersection named", target, params)
        if INTERGREEN_PARAMS & params.keys():
            return Assessment.invalid(
                "yellow and all-red intervals (intergreen) are never changed", target, params
            )
        if params.keys() - SIGNAL_PARAMS:
            extra = ", ".join(sorted(params.keys() - SIGNAL_PARAMS))
            return Assessment.invalid(f"unexpected parameters: {extra}", target, params)
        phase_index, requested_s = (
            _phase_index(params.get("phase_index")),
            _number(params.get("green_s")),
        )
        if phase_index is None or requested_s is None:
            return Assessment.invalid(
                "a signal timing change needs a phase number and a new green time in seconds",
                target,
                params,
            )
        green_s = round_green(requested_s)  # what the controller can run, so what is approved
        target, params = (
            {"intersection_id": intersection_id},
            {"phase_index": phase_index, "green_s": green_s},
        )

        intersection = _one(
            conn, "SELECT name FROM intersections WHERE intersection_id = %s", (intersection_id,)
        )
        if intersection is None:
            return Assessment.invalid(f"no intersection {intersection_id!r}", target, params)
        name = intersection["name"]
        phases = _all(
            conn,
            "SELECT phase_index, description, green_s, intergreen_s, min_green_s, max_green_s"
            " FROM signal_phases WHERE intersection_id = %s ORDER BY phase_index",
            (intersection_id,),
        )
        phase = next((p for p in phases if p["phase_index"] == phase_index), None)
        if phase is None:
            known = ", ".join(str(p["phase_index"]) for p in phases) or "none"
            return Assessment.invalid(
                f"{name} has no phase {phase_index} (its phases: {known})", target, params
            )

        cycle = _cycle(phases)
        new_cycle = round(cycle - phase["green_s"] + green_s, GREEN_DECIMALS)
        before = {"phase_index": phase_index, "green_s": phase["green_s"], "cycle_s": cycle}
        after = {"phase_index": phase_index, "green_s": green_s, "cycle_s": new_cycle}
        change = (
            f"phase {phase_index} ({phase['description']}) at {name}: green "
            f"{_seconds(phase['green_s'])} -> {_seconds(green_s)}, "
            f"cycle {_seconds(cycle)} -> {_seconds(new_cycle)}"
        )
        if _seconds(requested_s) != _seconds(green_s):
            resolution = 10.0**-GREEN_DECIMALS
            change += f" ({_seconds(requested_s)} rounded to the controller's {resolution:g} s)"
        problems = self._timing_problems(name, phase, green_s, new_cycle)
        # an unapproved proposal is superseded by a valid new one instead
        pending = _pending(conn, intersection_id, action_id)
        if pending is not None:
            wait = (
                "wait until the controller confirms it"
                if pending["status"] == ROLLBACK_SENT
                else "approve or reject it first"
            )
            problems.append(
                f"action {pending['action_id']} ({pending['status']}) is already pending at "
                f"{name}; {wait}"
            )
        return Assessment(change, target, params, problems, before, after)

    def _timing_problems(
        self, name: str, phase: dict[str, Any], green_s: float, new_cycle: float
    ) -> list[str]:
        """What a green on ``phase`` (a ``signal_phases`` row) breaks: the phase's limits, and
        the configured cycle bounds with the cycle it gives."""
        where = f"phase {phase['phase_index']} ({phase['description']}) at {name}"
        problems = []
        low, high = phase["min_green_s"], phase["max_green_s"]
        if green_s < low:
            problems.append(
                f"green {_seconds(green_s)} is below the minimum {_seconds(low)} of {where}"
            )
        if green_s > high:
            problems.append(
                f"green {_seconds(green_s)} is above the maximum {_seconds(high)} of {where}"
            )
        min_cycle, max_cycle = self._settings.nlq_min_cycle_s, self._settings.nlq_max_cycle_s
        if not min_cycle <= new_cycle <= max_cycle:
            problems.append(
                f"the cycle at {name} would be {_seconds(new_cycle)}, outside the allowed "
                f"{min_cycle:g}-{max_cycle:g} s"
            )
        return problems

    def _assess_alert(
        self, conn: psycopg.Connection, target: dict[str, Any], params: dict[str, Any]
    ) -> Assessment:
        operation = params.get("operation")
        if operation == "raise":
            return self._assess_raise(conn, target, params)
        if operation not in ALERT_OPERATIONS:
            return Assessment.invalid(
                f"unknown alert operation {operation!r}: acknowledge, resolve or raise",
                target,
                params,
            )
        alert_id = target.get("alert_id")
        if not isinstance(alert_id, str) or not alert_id:
            return Assessment.invalid(f"{operation} needs an alert", target, params)
        target, params = {"alert_id": alert_id}, {"operation": operation}
        alert = _one(
            conn,
            "SELECT status, updated_at, resolved_at, message FROM alerts WHERE alert_id = %s",
            (alert_id,),
        )
        if alert is None:
            return Assessment.invalid(f"no alert {alert_id!r}", target, params)
        rule = ALERT_OPERATIONS[operation]
        before = {"status": alert["status"]}
        after = {"status": rule.status_after}
        change = (
            f"{operation} alert {alert_id} ({alert['message']}): "
            f"{alert['status']} -> {rule.status_after}"
        )
        problems = []
        if alert["status"] not in rule.applies_to:
            problems.append(
                f"alert {alert_id} is {alert['status']}; {operation} applies to "
                f"{' or '.join(rule.applies_to)} alerts"
            )
        return Assessment(change, target, params, problems, before, after)

    def _assess_raise(
        self, conn: psycopg.Connection, target: dict[str, Any], params: dict[str, Any]
    ) -> Assessment:
        zone_id, severity, message = (
            target.get("zone_id"),
            params.get("severity"),
            params.get("message"),
        )
        if not isinstance(zone_id, str) or not zone_id:
            return Assessment.invalid("raising an alert needs a zone", target, params)
        zone = _one(conn, "SELECT name, city_id FROM zones WHERE zone_id = %s", (zone_id,))
        if zone is None:
            return Assessment.invalid(f"no zone {zone_id!r}", target, params)
        problems = []
        if severity not in SEVERITIES:
            problems.append(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
        if not isinstance(message, str) or not message.strip():
            problems.append("raising an alert needs a message")
        elif len(message) > MAX_MESSAGE_CHARS:
            problems.append(f"the message is longer than {MAX_MESSAGE_CHARS} characters")
        params = {"operation": "raise", "severity": severity, "message": message}
        after = {"status": "firing", "severity": severity, "zone_id": zone_id, "message": message}
        change = f"raise a {severity} alert in {zone['name']}: {message}"
        return Assessment(change, {"zone_id": zone_id}, params, problems, None, after)

    # ---- effects --------------------------------------------------------------------------

    def _apply_alert(
        self, conn: psycopg.Connection, action: Action, now: datetime
    ) -> Applied | None:
        """The alert operation on ``alerts``; None when the alert no longer allows it."""
        operation = action.params["operation"]
        if operation == "raise":
            alert_id = "AL-" + secrets.token_hex(4).upper()
            row = _one(
                conn,
                "INSERT INTO alerts (alert_id, kind, severity, status, city_id, zone_id, message,"
                " started_at, updated_at) SELECT %s, 'manual', %s, 'firing', city_id, zone_id, %s,"
                " %s, %s FROM zones WHERE zone_id = %s"
                " RETURNING alert_id, status, severity, zone_id, message, updated_at",
                (
                    alert_id,
                    action.params["severity"],
                    action.params["message"],
                    now,
                    now,
                    action.target["zone_id"],
                ),
            )
            if row is None:
                return None
            record_change(conn.cursor(), alert_id, "firing", now)  # for the alerts topic
            return Applied(before={}, after=_alert_state(row))
        rule = ALERT_OPERATIONS[operation]
        before = _one(
            conn,
            "SELECT alert_id, status, updated_at, resolved_at FROM alerts"
            " WHERE alert_id = %s AND status = ANY(%s) FOR UPDATE",
            (action.target["alert_id"], list(rule.applies_to)),
        )
        if before is None:
            return None
        resolved_at = now if rule.status_after == "resolved" else before["resolved_at"]
        after = _one(
            conn,
            "UPDATE alerts SET status = %s, updated_at = %s, resolved_at = %s WHERE alert_id = %s"
            " RETURNING alert_id, status, updated_at, resolved_at",
            (rule.status_after, now, resolved_at, action.target["alert_id"]),
        )
        assert after is not None
        record_change(conn.cursor(), after["alert_id"], rule.status_after, now)
        return Applied(before=_alert_state(before), after=_alert_state(after))

    def _actuate(
        self, conn: psycopg.Connection, action: Action, principal: Principal, change: Assessment
    ) -> Action:
        """Hand an approved signal change to the actuator and record what happened."""
        assert self._actuator is not None
        try:
            applied = self._actuator.apply(action)
        except Exception as err:
            log.exception("actuator failed on action %s", action.action_id)
            return self._finish(conn, action, principal, failed=f"the actuator failed: {err}")
        if applied is None:  # handed on; the controller confirms
            sent = replace(action, status="sent", note="sent to the controller")
            self._save(conn, sent)
            self._audit(
                conn, sent, "send", principal, action.status, change.before, change.after, sent.note
            )
            return sent
        return self._finish(conn, action, principal, applied=applied)

    def _finish(
        self,
        conn: psycopg.Connection,
        action: Action,
        principal: Principal,
        *,
        applied: Applied | None = None,
        failed: str | None = None,
        note: str | None = None,
    ) -> Action:
        """Record the end of an approval: applied (with before/after), failed, or only noted."""
        now = self._clock()
        if applied is not None:
            done = replace(action, status="applied", applied_at=now, note=note)
            self._save(conn, done)
            self._audit(
                conn, done, "apply", principal, action.status, applied.before, applied.after
            )
        elif failed is not None:
            done = replace(action, status="failed", note=failed)
            self._save(conn, done)
            self._audit(conn, done, "fail", principal, action.status, None, None, failed)
        else:
            done = replace(action, note=note)
            self._save(conn, done)
        return done

    # ---- storage --------------------------------------------------------------------------

    def _require_operator(self, principal: Principal, step: str) -> None:
        if not principal.has_role("operator"):
            raise ActionForbidden(
                f"only an operator may {step} actions; the token is {principal.role}"
            )

    def _approvers(self, conn: psycopg.Connection) -> int:
        """How many people hold a live operator or admin token."""
        row = conn.execute(
            "SELECT count(DISTINCT name) FROM api_tokens"
            " WHERE revoked_at IS NULL AND role IN ('operator', 'admin')"
        ).fetchone()
        return row[0] if row else 0

    def _load(self, conn: psycopg.Connection, action_id: str, for_update: bool = False) -> Action:
        with conn.cursor(row_factory=class_row(Action)) as cur:
            lock = " FOR UPDATE" if for_update else ""
            cur.execute(f"SELECT * FROM actions WHERE action_id = %s{lock}", (action_id,))  # noqa: S608
            action = cur.fetchone()
        if action is None:
            raise ActionNotFound(action_id)
        return action

    def _load_locked(self, conn: psycopg.Connection, action_id: str) -> Action:
        """The action with its row locked, after the lock of its intersection (as ``propose``
        takes it): approvals and rollbacks at one intersection take turns."""
        row = _one(conn, "SELECT intersection_id FROM actions WHERE action_id = %s", (action_id,))
        if row is None:
            raise ActionNotFound(action_id)
        if row["intersection_id"] is not None:
            _lock_intersection(conn, row["intersection_id"])
        return self._load(conn, action_id, for_update=True)

    def _insert(self, conn: psycopg.Connection, action: Action) -> None:
        conn.execute(
            "INSERT INTO actions (action_id, kind, status, target, params, reason, summary,"
            " question, intersection_id, proposed_by, proposed_at, expires_at, decided_by,"
            " decided_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                action.action_id,
                action.kind,
                action.status,
                Jsonb(action.target),
                Jsonb(action.params),
                action.reason,
                action.summary,
                action.question,
                action.intersection_id,
                action.proposed_by,
                action.proposed_at,
                action.expires_at,
                action.decided_by,
                action.decided_at,
            ),
        )

    def _save(self, conn: psycopg.Connection, action: Action) -> None:
        """Write the fields a decision changes."""
        conn.execute(
            "UPDATE actions SET status = %s, decided_by = %s, decided_at = %s, applied_at = %s,"
            " note = %s WHERE action_id = %s",
            (
                action.status,
                action.decided_by,
                action.decided_at,
                action.applied_at,
                action.note,
                action.action_id,
            ),
        )

    def _audit(
        self,
        conn: psycopg.Connection,
        action: Action,
        step: str,
        principal: Principal,
        status_before: str | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        note: str | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO action_audit (action_id, step, actor, actor_role, at, status_before,"
            " status_after, before, after, note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                action.action_id,
                step,
                principal.name,
                principal.role,
                self._clock(),
                status_before,
                action.status,
                None if before is None else Jsonb(before),
                None if after is None else Jsonb(after),
                note,
            ),
        )


def _cycle(phases: list[dict[str, Any]]) -> float:
    """The cycle of an intersection's ``signal_phases`` rows: Σ(green_s + intergreen_s)."""
    return round(sum(p["green_s"] + p["intergreen_s"] for p in phases), GREEN_DECIMALS)


def _intersection_name(conn: psycopg.Connection, intersection_id: str) -> str:
    row = _one(
        conn, "SELECT name FROM intersections WHERE intersection_id = %s", (intersection_id,)
    )
    return row["name"] if row else intersection_id


def _pending(
    conn: psycopg.Connection, intersection_id: str, action_id: str | None
) -> dict[str, Any] | None:
    """Another action that will change the intersection's plan before anything decided now
    (its id and status): approved or sent and not yet confirmed, or applied with a rollback
    sent and not yet confirmed or refused (its latest audit step is the request; status
    ``ROLLBACK_SENT`` here). None when there is none. Proposals are not counted: a valid new
    proposal supersedes an unapproved one."""
    return _one(
        conn,
        "SELECT a.action_id, CASE WHEN a.status = 'applied' THEN %s ELSE a.status END AS status"
        " FROM actions a WHERE a.intersection_id = %s AND a.action_id IS DISTINCT FROM %s"
        " AND (a.status IN ('approved', 'sent') OR (a.status = 'applied' AND 'rollback' = ("
        "SELECT s.step FROM action_audit s WHERE s.action_id = a.action_id"
        " ORDER BY s.audit_id DESC LIMIT 1)))"
        " ORDER BY a.proposed_at, a.action_id LIMIT 1",
        (ROLLBACK_SENT, intersection_id, action_id),
    )


def _lock_intersection(conn: psycopg.Connection, intersection_id: str) -> None:
    """The intersection's advisory lock, held until the transaction ends."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        ("cityos.actions:" + intersection_id,),
    )


def _alert_state(row: dict[str, Any]) -> dict[str, Any]:
    """An alert row as JSON for the audit trail."""
    return {k: iso_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}
