"""`cityos bench control`: approval to change confirmed in the twin; reports/bench-control.json.

Against the running stack (started when it is not healthy), in a schema and under a topic
prefix of the run's own (both removed afterwards): the cologne8 twin is registered, runs in a
thread at ``--speedup`` with the :class:`~cityos.streaming.control.ControlLoop` polling between
steps, and ``--changes`` signal changes are proposed by one operator and approved by another
through the service's ``ActionService`` with the ``KafkaActuator``: round-robin over the
signals, each change moving phase 0 by 5 s and the next one back.

Figures, per change (nearest-rank p50/p95):

* ``approve``: the ``approve`` call: validation, audit, publish with acks=all, status ``sent``;
* ``approval_to_confirmed``: the approval's time (``decided_at``) to the controller's
  confirmation (``applied_at``: SUMO's program read back, ``signal_phases`` and the action
  updated in one transaction). Both clocks are this process's.

Printed, never asserted: a benchmark on a shared 2-core machine is not a test.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(log_path=False)
log = logging.getLogger(__name__)
DEFAULT_REPORT = Path("reports/bench-control.json")
CONFIRM_TIMEOUT_S = 60.0
STEP_S = 5.0  # how far each change moves a phase's green


def _pick_changes(layout: Any, count: int) -> list[tuple[str, int, float]]:
    """(intersection, phase 0, new green): round-robin over the signals, each change moving
    the green down STEP_S and the next one back up (within the phase's limits)."""
    signals = [s for s in layout.signals if s.phases]
    out = []
    for i in range(count):
        signal = signals[i % len(signals)]
        phase = signal.phases[0]
        down = max(phase.min_green_s, phase.green_s - STEP_S)
        lower = down if down != phase.green_s else min(phase.max_green_s, phase.green_s + STEP_S)
        turn = i // len(signals)
        out.append((signal.tls_id, 0, lower if turn % 2 == 0 else phase.green_s))
    return out


class TwinThread(threading.Thread):
    """The twin and its control loop, stepping in their own thread (libsumo is touched only
    here)."""

    def __init__(self, prepared: Any, settings: Any, speedup: float) -> None:
        super().__init__(name="cityos-twin", daemon=True)
        self.prepared, self.settings, self.speedup = prepared, settings, speedup
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: Any = None

    def run(self) -> None:
        from cityos.streaming.control import ControlLoop, SumoController
        from cityos.streaming.sources import twin

        p = self.prepared
        try:
            with twin.Twin(p.scenario, p.layout, p.stations) as sim:
                self.loop = ControlLoop.from_settings(SumoController(sim), self.settings)
                try:
                    pacer = twin.Pacer(self.speedup)
                    self.ready.set()
                    start = sim.time
                    while not self.stop.is_set():
                        sim.step()
                        self.loop.poll()
                        pacer.wait(sim.time - start, idle=self.loop.poll)
                finally:
                    self.loop.close()
        except BaseException as err:  # reported by the main thread
            self.error = err
            self.ready.set()


def control_command(
    changes: Annotated[int, typer.Option(min=1, help="signal changes to approve")] = 40,
    speedup: Annotated[
        float, typer.Option(help="twin speed, simulated s per wall s (the twin's default: 60)")
    ] = 60.0,
    report: Annotated[Path, typer.Option(help="where the JSON report goes")] = DEFAULT_REPORT,
) -> None:
    """Approval -> change confirmed in the SUMO twin, p50/p95 over CHANGES changes."""
    from cityos.cli.bench_nlq import latency
    from cityos.cli.nlq_eval import stack_settings
    from cityos.db import connect, migrate
    from cityos.nlq.actions import ActionService
    from cityos.nlq.actuator import KafkaActuator
    from cityos.nlq.auth import create_token
    from cityos.nlq.reply import ActionDraft
    from cityos.stack import delete_topics, ensure_topics
    from cityos.streaming.sources import twin
    from cityos.streaming.sources.registry import register_twin
    from cityos.topics import Topics

    def say(message: str) -> None:
        console.log(message)

    base = stack_settings(say)
    run_id = uuid.uuid4().hex[:8]
    schema, topics = f"bench_control_{run_id}", Topics(prefix=f"bench{run_id}.")
    settings = base.model_copy(update={"database_schema": schema, "topic_prefix": topics.prefix})
    url = settings.database_url.get_secret_value()
    approve_ms: list[float] = []
    confirm_ms: list[float] = []
    failed: list[str] = []
    with ExitStack() as cleanup:
        say(f"schema {schema}, topic {topics.control}")
        migrate(url, schema)
        cleanup.callback(_drop_schema, url, schema)
        ensure_topics(
            settings.kafka_bootstrap,
            [topics.control],
            partitions=settings.kafka_partitions,
            retention_ms=settings.kafka_retention_hours * 3_600_000,
        )
        cleanup.callback(delete_topics, settings.kafka_bootstrap, [topics.control])
        prepared = twin.prepare("cologne8", settings.data_dir)
        with connect(url, schema, autocommit=True) as conn:
            register_twin(conn, prepared.city, prepared.layout, prepared.stations)
            people = {}
            for name in ("bench-proposer", "bench-approver"):
                _, info = create_token(conn, name, "operator")
                people[name] = _principal(info)
        actuator = KafkaActuator.connect(settings)
        if actuator is None:
            raise typer.Exit(2)
        cleanup.callback(actuator.close)
        service = ActionService(lambda: connect(url, schema), settings, actuator)
        runner = TwinThread(prepared, settings, speedup)
        runner.start()
        cleanup.callback(runner.join, 30)
        cleanup.callback(runner.stop.set)
        runner.ready.wait()
        if runner.error is not None:
            raise runner.error
        say(f"twin running at {speedup:g}x; {changes} changes")
        for tls_id, phase_index, green_s in _pick_changes(prepared.layout, changes):
            draft = ActionDraft(
                kind="signal_timing",
                target={"intersection_id": tls_id},
                params={"phase_index": phase_index, "green_s": green_s},
                summary="benchmark",
                question="benchmark",
            )
            proposed = service.propose(draft, people["bench-proposer"])
            if proposed.status != "proposed":
                failed.append(f"{proposed.action_id}: {proposed.reason}")
                continue
            t0 = time.perf_counter()
            sent = service.approve(proposed.action_id, people["bench-approver"])
            approve_ms.append((time.perf_counter() - t0) * 1000)
            done = _wait(service, sent.action_id, runner)
            if done.status != "applied" or done.applied_at is None or done.decided_at is None:
                failed.append(f"{done.action_id}: {done.status} {done.note}")
                continue
            confirm_ms.append((done.applied_at - done.decided_at).total_seconds() * 1000)
    result = {
        "run": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "config": {"network": "cologne8", "changes": changes, "speedup": speedup},
        "results": {
            "approve": latency(approve_ms),
            "approval_to_confirmed": latency(confirm_ms),
            "failed": failed,
        },
    }
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=2) + "\n")
    console.print(_table(result))
    console.print(f"report: {report}")


def _principal(info: Any) -> Any:
    from cityos.nlq.auth import Principal

    return Principal(name=info.name, role=info.role, token_id=info.token_id)


def _wait(service: Any, action_id: str, runner: TwinThread) -> Any:
    """The action once the controller decided it (or the timeout passed)."""
    deadline = time.monotonic() + CONFIRM_TIMEOUT_S
    while time.monotonic() < deadline and runner.is_alive():
        action = service.get(action_id)
        if action.status != "sent":
            return action
        time.sleep(0.002)
    if runner.error is not None:
        raise runner.error
    return service.get(action_id)


def _drop_schema(url: str, schema: str) -> None:
    from psycopg import sql

    from cityos.db import connect

    with connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _table(result: dict[str, Any]) -> Table:
    r, machine = result["results"], result["machine"]
    table = Table(
        title=f"control benchmark {result['run']} ({machine['cores']} cores, load "
        f"{machine['load_avg_1m']:.1f}; twin at {result['config']['speedup']:g}x)"
    )
    for column in ("figure", "n", "p50 ms", "p95 ms", "max ms"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for name, label in (
        ("approve", "approve call (publish, acks=all)"),
        ("approval_to_confirmed", "approval -> confirmed in the twin"),
    ):
        f = r[name]
        table.add_row(
            label, str(f["n"]), f"{f['p50_ms']:.1f}", f"{f['p95_ms']:.1f}", f"{f['max_ms']:.1f}"
        )
    table.add_row("failed", str(len(r["failed"])), "", "", "")
    return table


def register(bench_app: typer.Typer) -> None:
    """Add `control` to the `cityos bench` group (cityos.cli.bench.app)."""
    bench_app.command("control")(control_command)
