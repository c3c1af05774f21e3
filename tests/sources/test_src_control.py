"""Control-topic messages: what the service publishes is what the controller reads, and a
message that is not a change is refused with the reason (the loop logs and skips it)."""

from __future__ import annotations

import pytest

from cityos.streaming.control import BadControlMessage, ConfirmedPlan, ControlChange


def test_a_change_round_trips_and_is_keyed_by_its_intersection():
    change = ControlChange("act_0123456789ab", "32319828", 1, 12.5, "rollback")
    assert ControlChange.decode(change.encode()) == change
    assert change.key == b"32319828"
    plain = ControlChange.decode(
        b'{"action_id":"a","intersection_id":"i","phase_index":0,"green_s":30}'
    )
    assert plain.kind == "apply" and plain.green_s == 30.0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not a control change"),
        (None, "not a control change"),
        (b'{"action_id":"a","intersection_id":"i","phase_index":0}', "not a control change"),
        (
            b'{"action_id":"a","intersection_id":"i","phase_index":"0","green_s":30}',
            "is not an integer",
        ),
        (
            b'{"action_id":"a","intersection_id":"i","phase_index":true,"green_s":30}',
            "is not an integer",
        ),
        (
            b'{"action_id":"a","intersection_id":"i","phase_index":0,"green_s":"x"}',
            "not a control change",
        ),
        (
            b'{"action_id":"a","intersection_id":"i","phase_index":0,"green_s":30,"kind":"drop"}',
            "is not one of apply, rollback",
        ),
    ],
)
def test_a_message_that_is_not_a_change_is_refused_with_the_reason(raw, reason):
    with pytest.raises(BadControlMessage, match=reason):
        ControlChange.decode(raw)


def test_a_confirmed_plan_gives_the_audit_trail_the_green_before_and_after():
    plan = ConfirmedPlan("32319828", 0, 78.0, 60.0, "0")
    assert plan.before() == {"phase_index": 0, "green_s": 78.0}
    assert plan.after() == {"phase_index": 0, "green_s": 60.0, "program_id": "0"}
