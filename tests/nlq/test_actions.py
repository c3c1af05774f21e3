"""Control actions against the real PostgreSQL: validation, four eyes, expiry, effects, audit.

The phases and limits are the evaluation fixture's (cologne8): e.g. 32319828 (Neusser Str. /
Wilhelmstr.) has phase 0 through at 78 s of 5-90 s and phase 1 left turns at 6 s of 5-20 s, a
cycle of 90 s with 3 s intergreens.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cityos.alerting.events import AlertEvent
from cityos.db import connect
from cityos.nlq.actions import (
    Action,
    ActionConflict,
    ActionForbidden,
    ActionNotFound,
    ActionService,
    Applied,
)
from tests.nlq import service_tools
from tests.nlq.service_tools import alert_draft, rows, signal_draft

# the service's fixtures (tests/nlq/service_tools.py)
answerer, client, service_settings, tokens = (
    service_tools.answerer,
    service_tools.client,
    service_tools.service_settings,
    service_tools.tokens,
)

pytestmark = pytest.mark.integration

NEUSSER_WILHELM = "32319828"  # phases: 0 through 78 s (5-90), 1 left turns 6 s (5-20)
FRIEDRICH_KARL = "247379907"  # 4 phases, cycle 90 s
NIEHLER_BLUECHER = "62426694"  # phase 1: left turns, max 20 s


class Clock:
    """The service's clock, moved by the test (expiry without waiting)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class RecordingActuator:
    """A controller at the edge of what runs here: records what it was asked to apply."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.applied: list[Action] = []

    def apply(self, action: Action) -> Applied:
        if self.fail:
            raise ConnectionError("controller unreachable")
        self.applied.append(action)
        return Applied(before={"program": "0"}, after={"program": "1", **action.params})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_service(service_settings, database_url, pg_schema, clock):
    def make(actuator=None, **settings_overrides) -> ActionService:
        settings = service_settings.model_copy(update=settings_overrides)
        return ActionService(lambda: connect(database_url, pg_schema), settings, actuator, clock)

    return make


@pytest.fixture
def service(make_service) -> ActionService:
    return make_service()


@pytest.fixture
def people(tokens):
    """Two operators, a viewer and an admin-less setup: four eyes apply."""
    for role, name in [("operator", "alice"), ("operator", "bob"), ("viewer", "vic")]:
        tokens.new(role, name)
    return tokens.principals


def trail(service: ActionService, action_id: str) -> list[tuple[str, str, str | None, str]]:
    return [
        (s["step"], s["actor"], s["status_before"], s["status_after"])
        for s in service.audit_trail(action_id)
    ]


def alert_row(database_url, schema, alert_id):
    return rows(
        database_url,
        schema,
        "SELECT status, updated_at, resolved_at FROM alerts WHERE alert_id = %s",
        alert_id,
    )[0]


def test_a_green_outside_the_phase_limits_is_rejected_with_the_reason(service, people):
    alice = people["alice"]
    above = service.propose(signal_draft(FRIEDRICH_KARL, 0, 120), alice)
    assert above.status == "rejected"
    assert "green 120 s is above the maximum 90 s of phase 0" in above.reason
    below = service.propose(signal_draft(NIEHLER_BLUECHER, 1, 3), alice)
    assert below.status == "rejected" and "green 3 s is below the minimum 5 s" in below.reason
    left_turn = service.propose(signal_draft(NIEHLER_BLUECHER, 1, 25), alice)
    assert left_turn.status == "rejected" and "above the maximum 20 s" in left_turn.reason
    at_the_limit = service.propose(signal_draft(FRIEDRICH_KARL, 0, 90), alice)
    assert at_the_limit.status == "proposed"
    assert at_the_limit.reason.endswith("green 33 s -> 90 s, cycle 90 s -> 147 s")
    assert trail(service, above.action_id) == [("reject_invalid", "alice", None, "rejected")]
    assert trail(service, at_the_limit.action_id) == [("propose", "alice", None, "proposed")]
    (proposal,) = service.audit_trail(at_the_limit.action_id)
    assert proposal["before"] == {"phase_index": 0, "green_s": 33.0, "cycle_s": 90.0}
    assert proposal["after"] == {"phase_index": 0, "green_s": 90.0, "cycle_s": 147.0}


@pytest.mark.parametrize(
    ("draft", "reason"),
    [
        (signal_draft(NEUSSER_WILHELM, 5, 30), "has no phase 5 (its phases: 0, 1)"),
        (signal_draft("no-such-signal", 0, 30), "no intersection 'no-such-signal'"),
        (signal_draft(NEUSSER_WILHELM, 0, 30, intergreen_s=1), "intergreen) are never changed"),
        (signal_draft(NEUSSER_WILHELM, 0, 30, yellow_s=2), "intergreen) are never changed"),
        (signal_draft(NEUSSER_WILHELM, 0, "lots"), "needs a phase number and a new green time"),
        (signal_draft(NEUSSER_WILHELM, True, 30), "needs a phase number and a new green time"),
        (signal_draft(NEUSSER_WILHELM, 0, float("inf")), "needs a phase number"),
    ],
)
def test_an_unknown_phase_or_a_changed_intergreen_is_rejected(service, people, draft, reason):
    action = service.propose(draft, people["alice"])
    assert action.status == "rejected" and reason in action.reason


def test_the_cycle_after_the_change_must_lie_within_the_configured_bounds(make_service, people):
    tight = make_service(nlq_min_cycle_s=60, nlq_max_cycle_s=100)
    longer = tight.propose(signal_draft(NEUSSER_WILHELM, 0, 90), people["alice"])  # 90 -> 102 s
    assert longer.status == "rejected"
    assert "cycle at Neusser Str. / Wilhelmstr. would be 102 s, outside the allowed 60-100 s" in (
        longer.reason
    )
    shorter = tight.propose(signal_draft("252017285", 0, 10), people["alice"])  # 72 -> 49 s
    assert shorter.status == "rejected" and "would be 49 s" in shorter.reason
    fine = tight.propose(signal_draft(NEUSSER_WILHELM, 0, 85), people["alice"])  # 97 s
    assert fine.status == "proposed"


def test_one_pending_change_per_intersection(service, people):
    alice, bob = people["alice"], people["bob"]
    first = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), alice)
    invalid = service.propose(signal_draft(NEUSSER_WILHELM, 0, 500), bob)
    assert invalid.status == "rejected"
    assert service.get(first.action_id).status == "proposed"  # an invalid one replaces nothing

    second = service.propose(signal_draft(NEUSSER_WILHELM, 1, 10), bob)
    assert second.status == "proposed"
    replaced = service.get(first.action_id)
    assert replaced.status == "superseded" and second.action_id in (replaced.note or "")
    steps = [row["step"] for row in service.audit_trail(first.action_id)]
    assert steps == ["propose", "supersede"]
    with pytest.raises(ActionConflict):
        service.approve(first.action_id, bob)
    elsewhere = service.propose(signal_draft(FRIEDRICH_KARL, 0, 40), bob)
    assert elsewhere.status == "proposed"

    service.approve(second.action_id, alice)  # approved, not applied (no actuator): still pending
    again = service.propose(signal_draft(NEUSSER_WILHELM, 0, 50), bob)
    assert again.status == "rejected" and "(approved) is already pending" in again.reason

    service.reject(second.action_id, alice, "changed my mind")
    after = service.propose(signal_draft(NEUSSER_WILHELM, 1, 10), bob)
    assert after.status == "proposed"


def test_four_eyes_the_proposer_cannot_approve_when_two_operators_exist(service, people):
    alice, bob = people["alice"], people["bob"]
    action = service.propose(alert_draft("acknowledge", alert_id="AL-0004"), alice)
    with pytest.raises(ActionForbidden, match="four eyes"):
        service.approve(action.action_id, alice)
    assert service.get(action.action_id).status == "proposed"
    assert service.approve(action.action_id, bob).status == "applied"


def test_a_sole_operator_may_approve_their_own_proposal(service, tokens):
    tokens.new("operator", "solo")
    tokens.new("viewer", "vic")  # viewers do not count
    solo = tokens.principals["solo"]
    action = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), solo)
    assert service.approve(action.action_id, solo).status == "approved"


def test_viewers_can_neither_propose_nor_approve_nor_reject(service, people):
    vic, alice = people["vic"], people["alice"]
    with pytest.raises(ActionForbidden):
        service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), vic)
    action = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), alice)
    with pytest.raises(ActionForbidden):
        service.approve(action.action_id, vic)
    with pytest.raises(ActionForbidden):
        service.reject(action.action_id, vic)
    assert trail(service, action.action_id) == [("propose", "alice", None, "proposed")]


def test_a_proposal_expires_after_its_ttl(make_service, people, clock):
    service = make_service(nlq_action_ttl_s=900)
    action = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    clock.advance(899)
    assert service.get(action.action_id).status == "proposed"
    clock.advance(1)
    with pytest.raises(ActionConflict, match="expired"):
        service.approve(action.action_id, people["bob"])
    assert service.get(action.action_id).status == "expired"
    assert trail(service, action.action_id) == [
        ("propose", "alice", None, "proposed"),
        ("expire", "system", "proposed", "expired"),
    ]
    # an expired proposal no longer holds the intersection
    assert service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["bob"]).status == "proposed"


def test_an_approved_acknowledge_is_applied_to_the_alerts_table(
    service, people, clock, database_url, pg_schema
):
    before = alert_row(database_url, pg_schema, "AL-0004")
    action = service.propose(alert_draft("acknowledge", alert_id="AL-0004"), people["alice"])
    assert action.status == "proposed"
    assert action.reason.startswith("acknowledge alert AL-0004 (") and "firing -> acknowledged" in (
        action.reason
    )
    assert alert_row(database_url, pg_schema, "AL-0004") == before  # nothing until approved

    clock.advance(60)
    approved = service.approve(action.action_id, people["bob"])
    assert approved.status == "applied" and approved.decided_by == "bob"
    assert approved.applied_at == clock.now
    assert alert_row(database_url, pg_schema, "AL-0004") == ("acknowledged", clock.now, None)
    with connect(database_url, pg_schema) as conn:  # queued for the alerts topic
        (payload,) = conn.execute(
            "SELECT payload FROM alert_outbox WHERE alert_id = 'AL-0004'"
        ).fetchone()
    event = AlertEvent.from_json(bytes(payload))
    assert (event.type, event.alert.status, event.at) == ("acknowledged", "acknowledged", clock.now)

    steps = service.audit_trail(action.action_id)
    assert [(s["step"], s["actor"], s["status_before"], s["status_after"]) for s in steps] == [
        ("propose", "alice", None, "proposed"),
        ("approve", "bob", "proposed", "approved"),
        ("apply", "bob", "approved", "applied"),
    ]
    assert steps[2]["before"]["status"] == "firing"
    assert steps[2]["after"]["status"] == "acknowledged"
    assert steps[2]["after"]["updated_at"] == clock.now.isoformat().replace("+00:00", "Z")
    assert all(s["at"] is not None for s in steps)


def test_alert_operations_follow_the_alert_status(service, people, clock, database_url, pg_schema):
    alice, bob = people["alice"], people["bob"]
    not_firing = service.propose(alert_draft("acknowledge", alert_id="AL-0012"), alice)
    assert not_firing.status == "rejected"
    assert "AL-0012 is acknowledged; acknowledge applies to firing alerts" in not_firing.reason
    already = service.propose(alert_draft("resolve", alert_id="AL-0018"), alice)
    assert already.status == "rejected" and "firing or acknowledged" in already.reason
    missing = service.propose(alert_draft("resolve", alert_id="AL-9999"), alice)
    assert missing.status == "rejected" and "no alert 'AL-9999'" in missing.reason
    odd = service.propose(alert_draft("delete", alert_id="AL-0004"), alice)
    assert odd.status == "rejected" and "unknown alert operation 'delete'" in odd.reason

    resolve = service.propose(alert_draft("resolve", alert_id="AL-0012"), alice)
    assert service.approve(resolve.action_id, bob).status == "applied"
    assert alert_row(database_url, pg_schema, "AL-0012") == ("resolved", clock.now, clock.now)


def test_raising_an_alert_needs_a_zone_a_severity_and_a_message(
    service, people, database_url, pg_schema
):
    alice, bob = people["alice"], people["bob"]
    no_zone = service.propose(
        alert_draft("raise", zone_id="atlantis", severity="info", message="x"), alice
    )
    assert no_zone.status == "rejected" and "no zone 'atlantis'" in no_zone.reason
    bad = service.propose(alert_draft("raise", zone_id="cologne-stb-5", severity="urgent"), alice)
    assert bad.status == "rejected"
    assert "severity 'urgent' is not one of info, warning, critical" in bad.reason
    assert "needs a message" in bad.reason

    message = "Water main burst on Neusser Str."
    good = alert_draft("raise", zone_id="cologne-stb-5", severity="warning", message=message)
    action = service.propose(good, alice)
    assert action.status == "proposed" and action.target == {"zone_id": "cologne-stb-5"}
    assert service.approve(action.action_id, bob).status == "applied"
    raised = rows(
        database_url,
        pg_schema,
        "SELECT kind, severity, status, city_id, zone_id FROM alerts WHERE message = %s",
        message,
    )
    assert raised == [("manual", "warning", "firing", "cologne", "cologne-stb-5")]


def test_an_alert_changed_since_the_proposal_fails_on_approval(
    service, people, database_url, pg_schema
):
    alice, bob = people["alice"], people["bob"]
    acknowledge = service.propose(alert_draft("acknowledge", alert_id="AL-0019"), alice)
    resolve = service.propose(alert_draft("resolve", alert_id="AL-0019"), alice)
    service.approve(resolve.action_id, bob)
    failed = service.approve(acknowledge.action_id, bob)
    assert failed.status == "failed" and "AL-0019 is resolved" in failed.note
    assert alert_row(database_url, pg_schema, "AL-0019")[0] == "resolved"
    assert [step for step, *_ in trail(service, acknowledge.action_id)] == [
        "propose",
        "approve",
        "fail",
    ]


def test_a_signal_change_without_an_actuator_stays_approved_with_a_note(
    service, people, database_url, pg_schema
):
    action = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    approved = service.approve(action.action_id, people["bob"])
    assert approved.status == "approved" and "no actuator" in approved.note
    phases = rows(
        database_url,
        pg_schema,
        "SELECT green_s FROM signal_phases WHERE intersection_id = %s AND phase_index = 0",
        NEUSSER_WILHELM,
    )
    assert phases == [(78.0,)]  # the plan in force is untouched
    assert trail(service, action.action_id) == [
        ("propose", "alice", None, "proposed"),
        ("approve", "bob", "proposed", "approved"),
    ]
    with pytest.raises(ActionConflict, match="only a proposed action can be approved"):
        service.approve(action.action_id, people["bob"])


def test_the_actuator_applies_an_approved_change_and_its_failure_is_recorded(make_service, people):
    actuator = RecordingActuator()
    service = make_service(actuator)
    action = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    applied = service.approve(action.action_id, people["bob"])
    assert applied.status == "applied" and [a.action_id for a in actuator.applied] == [
        action.action_id
    ]
    apply_step = service.audit_trail(action.action_id)[-1]
    assert apply_step["step"] == "apply"
    assert apply_step["before"] == {"program": "0"}
    assert apply_step["after"] == {"program": "1", "phase_index": 0, "green_s": 60.0}

    broken = make_service(RecordingActuator(fail=True))
    other = broken.propose(signal_draft(FRIEDRICH_KARL, 0, 40), people["alice"])
    failed = broken.approve(other.action_id, people["bob"])
    assert failed.status == "failed" and "controller unreachable" in failed.note
    assert [step for step, *_ in trail(broken, other.action_id)] == ["propose", "approve", "fail"]


def test_a_rejected_proposal_cannot_be_approved_and_unknown_ids_are_not_found(service, people):
    action = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    rejected = service.reject(action.action_id, people["alice"], "wrong phase")
    assert rejected.status == "rejected" and rejected.note == "wrong phase"
    with pytest.raises(ActionConflict):
        service.approve(action.action_id, people["bob"])
    with pytest.raises(ActionConflict):
        service.reject(action.action_id, people["bob"])
    with pytest.raises(ActionNotFound):
        service.approve("act_000000000000", people["bob"])
    assert trail(service, action.action_id) == [
        ("propose", "alice", None, "proposed"),
        ("reject", "alice", "proposed", "rejected"),
    ]


def test_propose_and_approve_over_http(client, tokens, answerer, database_url, pg_schema):
    answerer.replies["Acknowledge alert AL-0004."] = alert_draft("acknowledge", alert_id="AL-0004")
    alice, bob = tokens.header("operator", "alice"), tokens.header("operator", "bob")
    vic = tokens.header("viewer", "vic")
    asked = client.post(
        "/api/v1/ask", json={"question": "Acknowledge alert AL-0004."}, headers=alice
    )
    action = asked.json()["action"]
    assert action["status"] == "proposed" and action["target"] == {"alert_id": "AL-0004"}
    assert action["params"] == {"operation": "acknowledge"}
    action_id = action["action_id"]

    listed = client.get("/api/v1/actions?status=proposed", headers=bob).json()["actions"]
    assert [a["action_id"] for a in listed] == [action_id] and listed[0]["proposed_by"] == "alice"
    assert client.get("/api/v1/actions?status=applied", headers=bob).json()["actions"] == []

    assert client.post(f"/api/v1/actions/{action_id}/approve", headers=vic).status_code == 403
    own = client.post(f"/api/v1/actions/{action_id}/approve", headers=alice)
    assert own.status_code == 403 and "four eyes" in own.json()["detail"]
    approved = client.post(f"/api/v1/actions/{action_id}/approve", headers=bob)
    assert approved.status_code == 200 and approved.json()["status"] == "applied"
    assert approved.json()["decided_by"] == "bob"
    again = client.post(f"/api/v1/actions/{action_id}/reject", headers=bob)
    assert again.status_code == 409
    assert client.get("/api/v1/actions/act_000000000000", headers=bob).status_code == 404
    assert alert_row(database_url, pg_schema, "AL-0004")[0] == "acknowledged"
    steps = rows(
        database_url,
        pg_schema,
        "SELECT step, actor, actor_role FROM action_audit WHERE action_id = %s ORDER BY audit_id",
        action_id,
    )
    assert steps == [
        ("propose", "alice", "operator"),
        ("approve", "bob", "operator"),
        ("apply", "bob", "operator"),
    ]


def test_reject_over_http_takes_a_note(client, tokens, answerer):
    answerer.replies["Set phase 0 to 60 s"] = signal_draft(NEUSSER_WILHELM, 0, 60)
    alice, bob = tokens.header("operator", "alice"), tokens.header("operator", "bob")
    action_id = client.post(
        "/api/v1/ask", json={"question": "Set phase 0 to 60 s"}, headers=alice
    ).json()["action"]["action_id"]
    rejected = client.post(
        f"/api/v1/actions/{action_id}/reject", json={"note": "rush hour"}, headers=bob
    )
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected" and rejected.json()["note"] == "rush hour"
    plain = client.post("/api/v1/ask", json={"question": "Set phase 0 to 60 s"}, headers=alice)
    plain_id = plain.json()["action"]["action_id"]
    assert client.post(f"/api/v1/actions/{plain_id}/reject", headers=bob).status_code == 200
