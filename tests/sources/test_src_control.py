"""Control-topic messages: what the service publishes is what the controller reads, and a
message that is not a change is refused with the reason (the loop logs and skips it)."""

from __future__ import annotations

import json

import pytest

from cityos.streaming.control import BadControlMessage, ConfirmedPlan, ControlChange


def test_a_change_round_trips_and_is_keyed_by_its_intersection():
    change = ControlChange("act_0123456789ab", "32319828", 1, 12.5, "rollback")
    assert ControlChange.decode(change.encode()) == change
    assert change.key == b"32319828"
    plain = ControlChange.decode(
        b'{"action_id":"act_0123456789ab","intersection_id":"i","phase_index":0,"green_s":30}'
    )
    assert plain.kind == "apply" and plain.green_s == 30.0 and isinstance(plain.green_s, float)


def change(**fields: object) -> bytes:
    """A control message: a valid change with ``fields`` replaced, as JSON (NaN as JSON's NaN)."""
    data = {"action_id": "act_0123456789ab", "intersection_id": "32319828", "phase_index": 0}
    return json.dumps({**data, "green_s": 30, **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not a control change"),
        (None, "not a control change"),
        (b"[1, 2]", "not a control change"),
        (b'{"action_id":"act_0123456789ab","intersection_id":"i","phase_index":0}', "green_s"),
        (change(phase_index="0"), "phase_index '0' is not an integer"),
        (change(phase_index=True), "phase_index True is not an integer"),
        (change(phase_index=-1), "phase_index -1 is not an integer >= 0"),
        (change(green_s="x"), "green_s 'x' is not a finite number"),
        (change(green_s="60"), "green_s '60' is not a finite number"),  # a number, not text
        (change(green_s=float("nan")), "green_s nan is not a finite number"),
        (change(green_s=float("inf")), "green_s inf is not a finite number"),
        (change(green_s=-5), "green_s -5 is not a finite number of seconds > 0"),
        (change(green_s=0), "green_s 0 is not a finite number of seconds > 0"),
        (change(green_s=True), "green_s True is not a finite number"),
        (change(kind="drop"), "kind 'drop' is not one of apply, rollback"),
        # ids the database cannot take (psycopg refuses a NUL and a lone surrogate) or the
        # service never makes: refused here, before they reach a query
        (change(action_id="act_\u0000"), "is not an action id"),
        (
            b'{"action_id":"act_\\ud800","intersection_id":"i","phase_index":0,"green_s":30}',
            "is not an action id",
        ),
        (change(action_id="a"), "action_id 'a' is not an action id"),
        (change(action_id=7), "action_id 7 is not an action id"),
        (change(intersection_id="3231\u00009828"), "intersection_id .* is not 1-128 printable"),
        (
            b'{"action_id":"act_0123456789ab","intersection_id":"\\ud800","phase_index":0,'
            b'"green_s":30}',
            "is not 1-128 printable",
        ),
        (change(intersection_id=""), "is not 1-128 printable"),
        (change(intersection_id="x" * 129), "is not 1-128 printable"),
        (change(intersection_id=32319828), "is not 1-128 printable"),
    ],
)
def test_a_message_that_is_not_a_change_is_refused_with_the_reason(raw, reason):
    with pytest.raises(BadControlMessage, match=reason):
        ControlChange.decode(raw)


def test_a_confirmed_plan_gives_the_audit_trail_the_green_before_and_after():
    plan = ConfirmedPlan("32319828", 0, 78.0, 60.0, "0")
    assert plan.before() == {"phase_index": 0, "green_s": 78.0}
    assert plan.after() == {"phase_index": 0, "green_s": 60.0, "program_id": "0"}
