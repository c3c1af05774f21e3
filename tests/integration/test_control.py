"""Approved signal changes into the SUMO twin: real Kafka, real PostgreSQL, real SUMO in-process.

The serving tables hold the cologne8 twin's own registration (``register_twin``, as
``cityos stream twin`` does it): 32319828 (Neusser Str. / Wilhelmstr.) runs phase 0 through at
78 s of 5-90 s and phase 1 left turns at 6 s of 5-20 s, a 90 s cycle.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import libsumo
import pytest

from cityos.db import connect
from cityos.nlq.actions import ActionConflict, ActionService, ActuatorUnavailable
from cityos.nlq.actuator import KafkaActuator
from cityos.settings import SHARED_DIR
from cityos.streaming.control import ControlChange, ControlLoop, SumoController
from cityos.streaming.sources import twin
from cityos.streaming.sources.registry import register_twin
from tests.nlq.service_tools import Tokens, rows, signal_draft

pytestmark = pytest.mark.integration

DATA = SHARED_DIR / "data"
NEUSSER_WILHELM = "32319828"
DEADLINE_S = 60.0  # only a bound for a broken loop; a healthy one confirms within a second


@pytest.fixture(scope="module")
def prepared():
    return twin.prepare("cologne8", DATA)


@pytest.fixture
def sim(prepared):
    with twin.Twin(prepared.scenario, prepared.layout, prepared.stations) as running:
        yield running


@pytest.fixture
def control_settings(settings, pg_schema, database_url, prepared):
    with connect(database_url, pg_schema, autocommit=True) as conn:
        register_twin(conn, prepared.city, prepared.layout, prepared.stations)
    return settings.model_copy(update={"database_schema": pg_schema})


@pytest.fixture
def people(database_url, pg_schema):
    tokens = Tokens(database_url, pg_schema)
    for name in ("alice", "bob"):  # two operators: four eyes
        tokens.new("operator", name)
    return tokens.principals


@pytest.fixture
def actuator(control_settings):
    kafka = KafkaActuator.connect(control_settings)
    yield kafka
    kafka.close()


@pytest.fixture
def service(control_settings, database_url, pg_schema, actuator):
    return ActionService(lambda: connect(database_url, pg_schema), control_settings, actuator)


@pytest.fixture
def loop(sim, control_settings):
    control = ControlLoop.from_settings(SumoController(sim), control_settings)
    yield control
    control.close()


def run_until(sim, loop, service, action_id, statuses):
    """Step the twin, polling the control topic between steps, until the action is in one of
    ``statuses``."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        sim.step()
        loop.poll()
        action = service.get(action_id)
        if action.status in statuses:
            return action
        time.sleep(0.01)
    raise AssertionError(f"{action_id} still {service.get(action_id).status} after {DEADLINE_S} s")


def sumo_green(sim, tls_id, phase_index):
    """The duration in SUMO's running program, read through TraCI (not through the twin)."""
    sumo_index = sim.layout.signal(tls_id).phases[phase_index].sumo_index
    program = libsumo.trafficlight.getProgram(tls_id)
    logic = next(
        lg for lg in libsumo.trafficlight.getAllProgramLogics(tls_id) if lg.programID == program
    )
    return logic.phases[sumo_index].duration


def sumo_cycle(sim, tls_id):
    """The cycle of SUMO's running program: every phase, greens and intergreens."""
    program = libsumo.trafficlight.getProgram(tls_id)
    logic = next(
        lg for lg in libsumo.trafficlight.getAllProgramLogics(tls_id) if lg.programID == program
    )
    return sum(phase.duration for phase in logic.phases)


def plan(database_url, schema, tls_id, phase_index):
    return rows(
        database_url,
        schema,
        "SELECT green_s FROM signal_phases WHERE intersection_id = %s AND phase_index = %s",
        tls_id,
        phase_index,
    )[0][0]


def trail(service, action_id):
    return [(s["step"], s["actor"], s["status_after"]) for s in service.audit_trail(action_id)]


def test_an_approved_change_reaches_sumo_and_a_rollback_restores_it_exactly(
    sim, loop, service, people, database_url, pg_schema
):
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 78.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 78.0
    proposed = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    assert proposed.status == "proposed"
    sent = service.approve(proposed.action_id, people["bob"])
    assert sent.status == "sent"
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 78.0  # nothing changed before the controller

    applied = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
    assert applied.status == "applied" and applied.applied_at is not None, applied.note
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 60.0
    assert sim.signal_state()[NEUSSER_WILHELM].phases[1].green_s == 6.0  # the other phase kept
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 60.0
    assert trail(service, proposed.action_id) == [
        ("propose", "alice", "proposed"),
        ("approve", "bob", "approved"),
        ("send", "bob", "sent"),
        ("apply", "actuator:sumo", "applied"),
    ]
    confirmed = service.audit_trail(proposed.action_id)[-1]
    assert confirmed["before"] == {"phase_index": 0, "green_s": 78.0}
    assert confirmed["after"]["green_s"] == 60.0

    rolling = service.rollback(proposed.action_id, people["alice"])
    assert rolling.status == "applied" and "rollback to 78 s sent" in rolling.note
    with pytest.raises(ActionConflict, match="already under way"):
        service.rollback(proposed.action_id, people["bob"])
    rolled = run_until(sim, loop, service, proposed.action_id, ("rolled_back",))
    assert rolled.status == "rolled_back"
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 78.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 78.0
    assert trail(service, proposed.action_id)[-2:] == [  # requested, then confirmed
        ("rollback", "alice", "applied"),
        ("rollback", "actuator:sumo", "rolled_back"),
    ]
    last = service.audit_trail(proposed.action_id)[-1]
    assert (last["actor"], last["status_before"], last["status_after"]) == (
        "actuator:sumo",
        "applied",
        "rolled_back",
    )
    assert last["before"]["green_s"] == 60.0 and last["after"]["green_s"] == 78.0
    with pytest.raises(ActionConflict, match="only an applied signal timing change"):
        service.rollback(proposed.action_id, people["bob"])


def test_a_change_outside_the_controllers_limits_is_refused_by_it(
    sim, loop, service, people, database_url, pg_schema
):
    # a database that somehow allows more than the controller: the controller's limits hold
    with connect(database_url, pg_schema, autocommit=True) as conn:
        conn.execute(
            "UPDATE signal_phases SET max_green_s = 60 WHERE intersection_id = %s"
            " AND phase_index = 1",
            (NEUSSER_WILHELM,),
        )
    proposed = service.propose(signal_draft(NEUSSER_WILHELM, 1, 45), people["alice"])
    assert proposed.status == "proposed", proposed.reason
    assert service.approve(proposed.action_id, people["bob"]).status == "sent"
    failed = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
    assert failed.status == "failed"
    assert "outside [5, 20] s" in failed.note
    assert sumo_green(sim, NEUSSER_WILHELM, 1) == 6.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 1) == 6.0
    assert trail(service, proposed.action_id)[-1] == ("fail", "actuator:sumo", "failed")
    with pytest.raises(ActionConflict):
        service.rollback(proposed.action_id, people["alice"])


def test_a_message_delivered_again_is_not_applied_twice(
    sim, loop, service, actuator, people, database_url, pg_schema
):
    first = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    service.approve(first.action_id, people["bob"])
    run_until(sim, loop, service, first.action_id, ("applied",))
    second = service.propose(signal_draft(NEUSSER_WILHELM, 0, 70), people["bob"])
    service.approve(second.action_id, people["alice"])
    run_until(sim, loop, service, second.action_id, ("applied",))
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 70.0

    # the first change once more, as after a restart before its offset was committed; and junk
    actuator.send(ControlChange(first.action_id, NEUSSER_WILHELM, 0, 60.0))
    actuator._producer.send(actuator.topic, key=b"x", value=b"not json").get(timeout=10)
    deadline = time.monotonic() + DEADLINE_S
    while (loop.stats.skipped, loop.stats.bad) != (1, 1) and time.monotonic() < deadline:
        sim.step()
        loop.poll()
        time.sleep(0.01)
    assert (loop.stats.skipped, loop.stats.bad) == (1, 1)
    assert (loop.stats.applied, loop.stats.failed) == (2, 0)
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 70.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 70.0
    assert [step for step, *_ in trail(service, first.action_id)].count("apply") == 1
    # the earlier change no longer runs: rolling it back would not restore anything
    with pytest.raises(ActionConflict, match="roll back the later change first"):
        service.rollback(first.action_id, people["alice"])


def test_cityos_actions_list_show_and_rollback(
    sim, loop, service, control_settings, database_url, pg_schema, monkeypatch
):
    import typer
    from typer.testing import CliRunner

    from cityos.cli import actions as actions_cli
    from cityos.settings import get_settings

    tokens = Tokens(database_url, pg_schema)
    alice, bob = tokens.new("operator", "alice"), tokens.new("operator", "bob")
    viewer = tokens.new("viewer", "vic")
    proposed = service.propose(signal_draft(NEUSSER_WILHELM, 0, 50), tokens.principals["alice"])
    service.approve(proposed.action_id, tokens.principals["bob"])
    run_until(sim, loop, service, proposed.action_id, ("applied",))

    app = typer.Typer()
    actions_cli.register(app)
    env = {
        "KAFKA_BOOTSTRAP": control_settings.kafka_bootstrap,
        "DATABASE_URL": database_url,
        "DATABASE_SCHEMA": pg_schema,
        "TOPIC_PREFIX": control_settings.topic_prefix,
        "STATE_DIR": str(control_settings.state_dir),
    }
    for name, value in env.items():
        monkeypatch.setenv("CITYOS_" + name, value)
    monkeypatch.delenv("CITYOS_TOKEN", raising=False)
    monkeypatch.setattr(actions_cli.console, "width", 400)  # one line per row
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        listed = runner.invoke(app, ["actions", "list", "--status", "applied"])
        assert listed.exit_code == 0, listed.output
        assert proposed.action_id in listed.output
        refused = runner.invoke(app, ["actions", "rollback", proposed.action_id, "--token", viewer])
        assert refused.exit_code == 2 and "only an operator may roll back" in refused.output
        assert runner.invoke(app, ["actions", "rollback", proposed.action_id]).exit_code == 2
        rolled = runner.invoke(app, ["actions", "rollback", proposed.action_id, "--token", alice])
        assert rolled.exit_code == 0, rolled.output
        assert "rollback to 78 s sent" in rolled.output
        run_until(sim, loop, service, proposed.action_id, ("rolled_back",))
        shown = runner.invoke(app, ["actions", "show", proposed.action_id])
        assert shown.exit_code == 0, shown.output
        for text in ("rolled_back", "propose", "send", "rollback", "actuator:sumo"):
            assert text in shown.output
        missing = runner.invoke(app, ["actions", "show", "act_000000000000"])
        assert missing.exit_code == 2 and "no action" in missing.output
    finally:
        get_settings.cache_clear()
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 78.0
    assert bob  # the second operator makes four eyes apply


def test_a_restarted_twin_runs_the_plan_in_force(
    prepared, control_settings, service, people, database_url, pg_schema
):
    with twin.Twin(prepared.scenario, prepared.layout, prepared.stations) as sim:
        loop = ControlLoop.from_settings(SumoController(sim), control_settings)
        try:
            proposed = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
            service.approve(proposed.action_id, people["bob"])
            applied = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
            assert applied.status == "applied", applied.note
        finally:
            loop.close()

    # the twin restarts: it registers again and SUMO loads the scenario's own program
    with connect(database_url, pg_schema, autocommit=True) as conn:
        register_twin(conn, prepared.city, prepared.layout, prepared.stations)
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 60.0  # the change stands
    with twin.Twin(prepared.scenario, prepared.layout, prepared.stations) as sim:
        assert sumo_green(sim, NEUSSER_WILHELM, 0) == 78.0
        loop = ControlLoop.from_settings(SumoController(sim), control_settings)
        try:
            restored = loop.restore()
        finally:
            loop.close()
        assert [
            (p.intersection_id, p.phase_index, p.green_before_s, p.green_after_s) for p in restored
        ] == [(NEUSSER_WILHELM, 0, 78.0, 60.0)]
        assert sumo_green(sim, NEUSSER_WILHELM, 0) == 60.0


def poll_until(sim, loop, done, what):
    """Step the twin, polling the control topic between steps, until ``done()``."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        sim.step()
        loop.poll()
        if done():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what}: not within {DEADLINE_S} s")


def applied_then_another_sent(sim, loop, service, people):
    """A change applied (phase 0: 78 -> 60 s), then a newer one (-> 70 s) sent, not yet handled."""
    first = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    service.approve(first.action_id, people["bob"])
    run_until(sim, loop, service, first.action_id, ("applied",))
    second = service.propose(signal_draft(NEUSSER_WILHELM, 0, 70), people["bob"])
    assert service.approve(second.action_id, people["alice"]).status == "sent"
    return first, second


def test_no_rollback_while_a_newer_change_of_the_intersection_is_in_flight(
    sim, loop, service, people, database_url, pg_schema
):
    first, second = applied_then_another_sent(sim, loop, service, people)
    # the phase still runs the first change's 60 s, but the second is on its way: refused
    with pytest.raises(ActionConflict, match=f"{second.action_id} \\(sent\\) is pending"):
        service.rollback(first.action_id, people["alice"])
    assert trail(service, first.action_id)[-1] == ("apply", "actuator:sumo", "applied")
    run_until(sim, loop, service, second.action_id, ("applied",))
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 70.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 70.0


def test_the_controller_refuses_a_rollback_that_would_undo_a_newer_change(
    sim, loop, service, actuator, people, database_url, pg_schema
):
    first, second = applied_then_another_sent(sim, loop, service, people)
    # a rollback of the first behind the second on the topic all the same (as a service without
    # the check above would send it): the controller applies the second, then refuses it
    request_rollback_unchecked(database_url, pg_schema, first.action_id)
    actuator.send(ControlChange(first.action_id, NEUSSER_WILHELM, 0, 78.0, "rollback"))
    poll_until(
        sim, loop, lambda: loop.stats.failed + loop.stats.rolled_back == 1, "the rollback handled"
    )
    assert (loop.stats.applied, loop.stats.rolled_back, loop.stats.failed) == (2, 0, 1)
    assert service.get(second.action_id).status == "applied"
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 70.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 70.0
    kept = service.get(first.action_id)
    assert kept.status == "applied" and "a later change stands" in (kept.note or "")
    assert trail(service, first.action_id)[-1] == ("fail", "actuator:sumo", "applied")


def request_rollback_unchecked(database_url, pg_schema, action_id):
    """The audit row of an operator's rollback request, as a service without its own checks
    would record it with the message."""
    with connect(database_url, pg_schema, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO action_audit (action_id, step, actor, actor_role, at, status_before,"
            " status_after, note) VALUES (%s, 'rollback', 'alice', 'operator', now(), 'applied',"
            " 'applied', 'rollback sent to the controller')",
            (action_id,),
        )


def test_a_rollback_nobody_requested_is_skipped_and_the_change_keeps_running(
    sim, loop, service, actuator, people, database_url, pg_schema
):
    """Anyone who can write to the control topic could send a rollback message; without a
    person's request in the audit trail the controller does not act on it."""
    done = applied_change(sim, loop, service, people, 0, 60)
    skipped = loop.stats.skipped
    actuator.send(ControlChange(done.action_id, NEUSSER_WILHELM, 0, 78.0, "rollback"))
    poll_until(sim, loop, lambda: loop.stats.skipped > skipped, "the forged rollback read")
    assert service.get(done.action_id).status == "applied"
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 60.0
    # the request through the service goes through; its message comes after the forged one on
    # the intersection's partition, so had the forged one rolled the change back, this would fail
    service.rollback(done.action_id, people["alice"])
    assert run_until(sim, loop, service, done.action_id, ("rolled_back",)).status == "rolled_back"
    assert trail(service, done.action_id)[-3:] == [
        ("apply", "actuator:sumo", "applied"),
        ("rollback", "alice", "applied"),
        ("rollback", "actuator:sumo", "rolled_back"),
    ]
    assert (loop.stats.rolled_back, sumo_green(sim, NEUSSER_WILHELM, 0)) == (1, 78.0)
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 78.0


@contextmanager
def a_change_whose_record_is_lost(sim, loop, service, people, database_url, pg_schema):
    """A 60 s change of phase 0, approved and run by SUMO, whose record the database lost: it
    drops the controller's connection when the change is recorded (until the block ends), and
    the loop reads the message again on its next poll. Yields the action, still 'sent'."""
    proposed = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    assert service.approve(proposed.action_id, people["bob"]).status == "sent"
    with connect(database_url, pg_schema, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION drop_connection() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5);"
            " RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER drop_connection BEFORE INSERT ON action_audit FOR EACH ROW"
            " WHEN (NEW.actor = 'actuator:sumo') EXECUTE FUNCTION drop_connection()"
        )
    try:
        poll_until(
            sim, loop, lambda: sumo_green(sim, NEUSSER_WILHELM, 0) == 60.0, "SUMO runs the change"
        )
        yield proposed
    finally:
        with connect(database_url, pg_schema, autocommit=True) as conn:
            conn.execute("DROP TRIGGER drop_connection ON action_audit")


def test_a_change_applied_again_after_a_database_error_records_the_green_it_replaced(
    sim, loop, service, people, database_url, pg_schema
):
    lost = a_change_whose_record_is_lost(sim, loop, service, people, database_url, pg_schema)
    with lost as proposed:
        assert service.get(proposed.action_id).status == "sent"
        assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 78.0

    applied = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
    assert applied.status == "applied", applied.note
    confirmed = service.audit_trail(proposed.action_id)[-1]
    assert confirmed["step"] == "apply"
    assert confirmed["before"] == {"phase_index": 0, "green_s": 78.0}  # not SUMO's 60 s by then
    service.rollback(proposed.action_id, people["alice"])
    run_until(sim, loop, service, proposed.action_id, ("rolled_back",))
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 78.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 78.0


def test_a_rollback_the_control_topic_does_not_take_raises_actuator_unavailable(
    sim, loop, service, control_settings, people, database_url, pg_schema
):
    from kafka import KafkaProducer

    proposed = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    service.approve(proposed.action_id, people["bob"])
    run_until(sim, loop, service, proposed.action_id, ("applied",))
    # the broker is up, but it has no such topic (nor creates one): the send times out
    producer = KafkaProducer(bootstrap_servers=control_settings.kafka_bootstrap, max_block_ms=1000)
    missing = KafkaActuator(
        control_settings.kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}.missing", producer
    )
    cut_off = ActionService(lambda: connect(database_url, pg_schema), control_settings, missing)
    try:
        with pytest.raises(ActuatorUnavailable, match="was not sent, nothing changed"):
            cut_off.rollback(proposed.action_id, people["alice"])
    finally:
        missing.close()
    assert trail(service, proposed.action_id)[-1] == ("apply", "actuator:sumo", "applied")
    rolling = service.rollback(proposed.action_id, people["alice"])  # nothing stands in its way
    assert rolling.status == "applied" and "rollback to 78 s sent" in (rolling.note or "")


@contextmanager
def forwarding(port: int, to: str) -> Iterator[None]:
    """Listen on ``port`` and pass every connection through to ``to`` (host:port), both ways,
    while the block runs: a broker address that answers only from now on."""
    host, target = to.rsplit(":", 1)
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.2)
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while chunk := a.recv(65536):
                b.sendall(chunk)
        except OSError:
            pass
        finally:
            b.close()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection((host, int(target)))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_a_broker_away_when_the_service_starts_fails_approvals_clearly_until_it_answers(
    control_settings, people, database_url, pg_schema
):
    """The broker cannot be reached when the service starts: an approval fails with the reason
    and leaves the intersection free; once the broker answers, the next one is sent, with no
    restart (it used to run with no actuator for its whole life: 'approved', never sent)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now; nothing listens on it until forwarding()
    away = control_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}"})
    actuator = KafkaActuator.connect(away)  # logs that it cannot reach Kafka; does not raise
    service = ActionService(lambda: connect(database_url, pg_schema), control_settings, actuator)
    try:
        first = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
        failed = service.approve(first.action_id, people["bob"])
        assert failed.status == "failed"
        assert f"cannot reach Kafka at 127.0.0.1:{port}" in (failed.note or "")
        assert trail(service, first.action_id)[-1][2] == "failed"

        second = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
        assert second.status == "proposed", second.reason  # nothing holds the intersection
        with forwarding(port, control_settings.kafka_bootstrap):
            sent = service.approve(second.action_id, people["bob"])
        assert sent.status == "sent", sent.note
    finally:
        actuator.close()


def applied_change(sim, loop, service, people, phase_index, green_s):
    """A change of NEUSSER_WILHELM proposed by alice, approved by bob and applied by the loop."""
    proposed = service.propose(signal_draft(NEUSSER_WILHELM, phase_index, green_s), people["alice"])
    assert proposed.status == "proposed", proposed.reason
    service.approve(proposed.action_id, people["bob"])
    done = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
    assert done.status == "applied", done.note
    return done


def test_a_rollback_that_would_take_the_cycle_below_its_minimum_is_refused(
    sim, loop, service, people, database_url, pg_schema
):
    assert sumo_cycle(sim, NEUSSER_WILHELM) == 90.0
    first = applied_change(sim, loop, service, people, 1, 20)  # cycle 78+3+20+3 = 104 s
    applied_change(sim, loop, service, people, 0, 10)  # cycle 10+3+20+3 = 36 s
    # restoring phase 1's 6 s now would give 10+3+6+3 = 22 s, below CITYOS_NLQ_MIN_CYCLE_S
    with pytest.raises(ActionConflict, match="the cycle at .* would be 22 s, outside the allowed"):
        service.rollback(first.action_id, people["alice"])
    assert trail(service, first.action_id)[-1] == ("apply", "actuator:sumo", "applied")
    assert sumo_green(sim, NEUSSER_WILHELM, 1) == 20.0
    assert sumo_cycle(sim, NEUSSER_WILHELM) == 36.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 1) == 20.0


def test_a_rollback_on_its_way_holds_the_intersection_like_a_pending_change(
    sim, loop, service, people, database_url, pg_schema
):
    first = applied_change(sim, loop, service, people, 1, 20)
    earlier = service.propose(signal_draft(NEUSSER_WILHELM, 0, 40), people["bob"])
    assert earlier.status == "proposed", earlier.reason
    rolling = service.rollback(first.action_id, people["alice"])  # on the topic, not yet read
    assert rolling.status == "applied"
    # checked against phase 1 at 20 s, 10 s would pass (36 s); with the rollback it is 22 s
    late = service.propose(signal_draft(NEUSSER_WILHELM, 0, 10), people["alice"])
    assert late.status == "rejected"
    assert f"action {first.action_id} (rollback sent) is already pending" in late.reason
    refused = service.approve(earlier.action_id, people["alice"])
    assert refused.status == "failed" and "(rollback sent) is already pending" in refused.note

    rolled = run_until(sim, loop, service, first.action_id, ("rolled_back",))
    assert rolled.status == "rolled_back"
    assert sumo_green(sim, NEUSSER_WILHELM, 1) == 6.0
    again = service.propose(signal_draft(NEUSSER_WILHELM, 0, 10), people["alice"])
    assert again.status == "rejected" and "would be 22 s, outside the allowed" in again.reason
    free = service.propose(signal_draft(NEUSSER_WILHELM, 0, 40), people["alice"])
    assert free.status == "proposed", free.reason


def test_the_controller_refuses_a_rollback_that_would_break_the_cycle_bounds(
    sim, loop, service, actuator, people, database_url, pg_schema
):
    first = applied_change(sim, loop, service, people, 1, 20)
    applied_change(sim, loop, service, people, 0, 10)
    # the rollback on the topic all the same (as a service without the check would send it)
    request_rollback_unchecked(database_url, pg_schema, first.action_id)
    actuator.send(ControlChange(first.action_id, NEUSSER_WILHELM, 1, 6.0, "rollback"))
    poll_until(
        sim, loop, lambda: loop.stats.failed + loop.stats.rolled_back == 1, "the rollback handled"
    )
    assert (loop.stats.applied, loop.stats.rolled_back, loop.stats.failed) == (2, 0, 1)
    kept = service.get(first.action_id)
    assert kept.status == "applied" and "would be 22 s, outside the allowed 30-180 s" in (
        kept.note or ""
    )
    assert sumo_green(sim, NEUSSER_WILHELM, 1) == 20.0
    assert sumo_cycle(sim, NEUSSER_WILHELM) == 36.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 1) == 20.0
    refusal = service.audit_trail(first.action_id)[-1]
    assert (refusal["step"], refusal["actor"], refusal["status_after"]) == (
        "fail",
        "actuator:sumo",
        "applied",
    )
    assert refusal["before"] == {"phase_index": 1, "green_s": 20.0}
    assert refusal["after"]["green_s"] == 20.0  # what the controller runs


def test_a_green_finer_than_the_controller_runs_is_rounded_when_proposed(
    sim, loop, service, people, database_url, pg_schema
):
    # SUMO keeps durations in whole milliseconds: 7.3333 s would run as 7.333 s
    proposed = service.propose(signal_draft(NEUSSER_WILHELM, 1, 7.3333), people["alice"])
    assert proposed.status == "proposed", proposed.reason
    assert proposed.params["green_s"] == 7.333
    assert "green 6 s -> 7.333 s" in proposed.reason
    assert "(7.3333 s rounded to the controller's 0.001 s)" in proposed.reason
    service.approve(proposed.action_id, people["bob"])
    applied = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
    assert applied.status == "applied", applied.note
    assert sumo_green(sim, NEUSSER_WILHELM, 1) == 7.333
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 1) == 7.333
    assert service.audit_trail(proposed.action_id)[-1]["after"]["green_s"] == 7.333

    # a relative change's arithmetic: 60.1 + 0.2 is 60.300000000000004
    relative = applied_change(sim, loop, service, people, 0, 60.1 + 0.2)
    assert relative.params["green_s"] == 60.3
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 60.3
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 60.3


def test_a_green_approved_unrounded_runs_and_is_recorded_as_the_controller_reads_it_back(
    sim, loop, service, people, database_url, pg_schema
):
    proposed = service.propose(signal_draft(NEUSSER_WILHELM, 1, 7), people["alice"])
    # as an action stored before proposals were rounded to the controller's milliseconds
    with connect(database_url, pg_schema, autocommit=True) as conn:
        conn.execute(
            "UPDATE actions SET params = jsonb_set(params, '{green_s}', '7.3333')"
            " WHERE action_id = %s",
            (proposed.action_id,),
        )
    assert service.approve(proposed.action_id, people["bob"]).status == "sent"
    applied = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
    assert applied.status == "applied", applied.note
    assert sumo_green(sim, NEUSSER_WILHELM, 1) == 7.333
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 1) == 7.333
    assert service.audit_trail(proposed.action_id)[-1]["after"]["green_s"] == 7.333

    service.rollback(proposed.action_id, people["alice"])  # the phase runs its 7.3333 s
    run_until(sim, loop, service, proposed.action_id, ("rolled_back",))
    assert sumo_green(sim, NEUSSER_WILHELM, 1) == 6.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 1) == 6.0


def test_a_change_whose_record_was_lost_and_that_was_rejected_then_stops_running(
    sim, loop, service, people, database_url, pg_schema
):
    lost = a_change_whose_record_is_lost(sim, loop, service, people, database_url, pg_schema)
    with lost as proposed:
        # the operator rejects what the record says was never applied
        assert service.reject(proposed.action_id, people["alice"]).status == "rejected"
    poll_until(sim, loop, lambda: loop.stats.skipped == 1, "the replay skipped")
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 78.0  # the plan in force again
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 78.0
    assert service.get(proposed.action_id).status == "rejected"


def test_messages_the_database_cannot_take_are_skipped_and_the_next_change_applies(
    sim, loop, service, actuator, people
):
    # a NUL and a lone surrogate: psycopg cannot send either, and neither is an action id
    for action_id in (b"act_\\u0000", b"act_\\ud800"):
        value = (
            b'{"action_id":"' + action_id + b'","intersection_id":"32319828","phase_index":0,'
            b'"green_s":60}'
        )
        actuator._producer.send(actuator.topic, key=b"32319828", value=value).get(timeout=10)
    proposed = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    service.approve(proposed.action_id, people["bob"])
    applied = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
    assert applied.status == "applied", applied.note
    assert (loop.stats.bad, loop.stats.applied) == (2, 1)
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 60.0


def test_a_change_that_cannot_be_recorded_is_put_back_failed_and_skipped(
    sim, loop, service, people, database_url, pg_schema
):
    proposed = service.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    assert service.approve(proposed.action_id, people["bob"]).status == "sent"
    # not a database that is away (that is retried) but one that refuses the record for good
    with connect(database_url, pg_schema, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_apply() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'no apply rows today'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_apply BEFORE INSERT ON action_audit FOR EACH ROW"
            " WHEN (NEW.actor = 'actuator:sumo' AND NEW.step = 'apply')"
            " EXECUTE FUNCTION refuse_apply()"
        )
    try:
        failed = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
    finally:
        with connect(database_url, pg_schema, autocommit=True) as conn:
            conn.execute("DROP TRIGGER refuse_apply ON action_audit")
    assert failed.status == "failed" and "no apply rows today" in (failed.note or "")
    assert (loop.stats.bad, loop.stats.applied) == (1, 0)
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 78.0  # put back: nothing recorded it
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 78.0
    last = service.audit_trail(proposed.action_id)[-1]
    assert (last["step"], last["actor"], last["status_after"]) == (
        "fail",
        "actuator:sumo",
        "failed",
    )
    assert last["after"]["green_s"] == 78.0
    # the message was committed (it does not come back) and the twin goes on
    applied_change(sim, loop, service, people, 0, 65)
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 65.0
    assert loop.stats.bad == 1


def test_a_message_that_does_not_match_its_action_is_skipped_not_held_against_it(
    sim, loop, actuator, control_settings, people, database_url, pg_schema
):
    # no actuator: the approved change waits (``approved``) until its message comes
    quiet = ActionService(lambda: connect(database_url, pg_schema), control_settings)
    proposed = quiet.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    assert quiet.approve(proposed.action_id, people["bob"]).status == "approved"
    action_id = proposed.action_id
    actuator.send(ControlChange(action_id, NEUSSER_WILHELM, 0, 61.0))  # another green
    actuator.send(ControlChange(action_id, NEUSSER_WILHELM, 1, 60.0))  # another phase
    nan = b'{"action_id":"%s","intersection_id":"32319828","phase_index":0,"green_s":NaN}'
    value = nan % action_id.encode()
    actuator._producer.send(actuator.topic, key=b"32319828", value=value).get(timeout=10)

    def handled():
        return loop.stats.skipped + loop.stats.bad + loop.stats.failed == 3

    poll_until(sim, loop, handled, "the strays handled")
    assert quiet.get(action_id).status == "approved"
    assert (loop.stats.skipped, loop.stats.bad, loop.stats.failed) == (2, 1, 0)
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 78.0

    actuator.send(ControlChange(action_id, NEUSSER_WILHELM, 0, 60.0))  # the approved change
    applied = run_until(sim, loop, quiet, action_id, ("applied", "failed"))
    assert applied.status == "applied", applied.note
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 60.0


def test_an_approval_older_than_the_maximum_delay_is_not_applied(
    sim, loop, actuator, control_settings, service, people, database_url, pg_schema
):
    assert control_settings.control_max_delay_s == 900.0
    # approved two hours ago (the controller was down since): the traffic is not the same
    then = ActionService(
        lambda: connect(database_url, pg_schema),
        control_settings,
        actuator,
        clock=lambda: datetime.now(UTC) - timedelta(hours=2),
    )
    proposed = then.propose(signal_draft(NEUSSER_WILHELM, 0, 60), people["alice"])
    assert then.approve(proposed.action_id, people["bob"]).status == "sent"
    failed = run_until(sim, loop, service, proposed.action_id, ("applied", "failed"))
    assert failed.status == "failed"
    assert "not applied within 900 s (CITYOS_CONTROL_MAX_DELAY_S)" in (failed.note or "")
    assert sumo_green(sim, NEUSSER_WILHELM, 0) == 78.0
    assert plan(database_url, pg_schema, NEUSSER_WILHELM, 0) == 78.0
    assert trail(service, proposed.action_id)[-1] == ("fail", "actuator:sumo", "failed")
