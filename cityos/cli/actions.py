"""`cityos actions list | show ID | rollback ID`: control actions from a terminal.

``list`` and ``show`` read the service's tables directly (like ``cityos token list``: database
access is the permission). ``rollback`` acts for a person, so it needs their operator (or admin)
token, from ``--token`` or ``CITYOS_TOKEN``; it publishes the green in force before the change
to the control topic, and the controller beside the twin confirms it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console

from cityos.cli.nlq import _database, _table
from cityos.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True)
console = Console()


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="actions", help="Control actions: list, show, roll back.")


@contextmanager
def _service(settings: Settings, actuator: Any = None) -> Iterator[Any]:
    from cityos.db import connect
    from cityos.nlq.actions import ActionService

    url, schema = settings.database_url.get_secret_value(), settings.database_schema
    with _database(settings):  # the same clear error when the database or its tables are missing
        pass
    yield ActionService(lambda: connect(url, schema), settings, actuator)


def _time(value: Any) -> str:
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
    return "-" if value is None else str(value)


def _refused(err: Exception) -> typer.Exit:
    typer.secho(f"cityos actions: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


@app.command("list")
def list_command(
    status: Annotated[str | None, typer.Option(help="only actions of this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
) -> None:
    """The latest actions, newest first."""
    with _service(get_settings()) as service:
        actions = service.list_actions(status, limit)
    rows = [
        [a.action_id, a.kind, a.status, a.target, a.params, a.proposed_by, _time(a.proposed_at)]
        for a in actions
    ]
    console.print(
        _table(["action", "kind", "status", "target", "params", "proposed by", "at"], rows)
    )


@app.command("show")
def show_command(action_id: Annotated[str, typer.Argument(help="e.g. act_0123456789ab")]) -> None:
    """One action and its audit trail: who did what, when, and the state before and after."""
    from cityos.nlq.actions import ActionError

    with _service(get_settings()) as service:
        try:
            action = service.get(action_id)
        except ActionError as err:
            raise _refused(err) from err
        trail = service.audit_trail(action_id)
    fields = action.to_json()
    console.print(_table(["field", "value"], [[k, v] for k, v in fields.items()]))
    steps = [
        [
            _time(s["at"]),
            s["step"],
            s["actor"],
            f"{s['status_before'] or '-'} -> {s['status_after']}",
            s["before"],
            s["after"],
            s["note"],
        ]
        for s in trail
    ]
    console.print(_table(["at", "step", "actor", "status", "before", "after", "note"], steps))


@app.command("rollback")
def rollback_command(
    action_id: Annotated[str, typer.Argument(help="an applied signal timing change")],
    token: Annotated[
        str | None,
        typer.Option(envvar="CITYOS_TOKEN", help="your operator token", show_default=False),
    ] = None,
) -> None:
    """Restore the green that ran before an applied signal change."""
    from cityos.nlq.actions import ActionError
    from cityos.nlq.actuator import KafkaActuator
    from cityos.nlq.auth import authenticate

    settings = get_settings()
    if not token:
        raise _refused(ValueError("no token (--token or CITYOS_TOKEN)"))
    with _database(settings) as conn:
        principal = authenticate(conn, token)
    if principal is None:
        raise _refused(ValueError("the token is unknown or revoked"))
    actuator = KafkaActuator.connect(settings)
    try:
        with _service(settings, actuator) as service:
            try:
                action = service.rollback(action_id, principal)
            except ActionError as err:
                raise _refused(err) from err
    finally:
        if actuator is not None:
            actuator.close()
    typer.echo(f"{action.action_id}: {action.status}; {action.note}")
