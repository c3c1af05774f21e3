"""`cityos token …`, `cityos nlq serve` and `cityos ask`: the NL-query service's commands.

``token create`` prints the new token on stdout and nothing else, so a script can capture it:
``TOKEN=$(cityos token create --role operator --name eval)``. ``ask`` talks to a running
service over HTTP with the token from ``--token`` or ``CITYOS_TOKEN``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from cityos.db import connect
from cityos.errors import ConfigError
from cityos.settings import Settings, get_settings

token_app = typer.Typer(no_args_is_help=True)
nlq_app = typer.Typer(no_args_is_help=True)
console = Console()
ASK_TIMEOUT_S = 120.0  # a question runs Spark SQL; the first one warms it up


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token", help="API tokens of the NL-query service.")
    app.add_typer(nlq_app, name="nlq", help="The NL-query service.")
    app.command("ask")(ask)


@contextmanager
def _database(settings: Settings) -> Iterator[psycopg.Connection]:
    """A connection to the service's tables; a database that is down or lacks them becomes one
    red line and exit code 2."""
    try:
        with connect(settings.database_url.get_secret_value(), settings.database_schema) as conn:
            yield conn
    except psycopg.OperationalError as err:
        typer.secho(
            f"cityos token: cannot reach the database: {err}", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2) from err
    except psycopg.errors.UndefinedTable as err:
        typer.secho(
            f"cityos token: the service's tables are missing ({err.diag.message_primary}); "
            "apply the migrations with `cityos db migrate`",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2) from err


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="viewer, operator or admin")],
    name: Annotated[str, typer.Option(help="who holds it (one live token per name)")],
) -> None:
    """Create a token and print it (only it): it is shown this once, and stored only hashed."""
    from cityos.nlq.auth import create_token

    with _database(get_settings()) as conn:
        token, _ = create_token(conn, name, role)
    typer.echo(token)


@token_app.command("list")
def token_list() -> None:
    """Every token: name, role, when created, last used and revoked."""
    from cityos.nlq.auth import list_tokens

    with _database(get_settings()) as conn:
        tokens = list_tokens(conn)
    rows = [
        [
            info.name,
            info.role,
            _minute(info.created_at),
            _minute(info.last_used_at),
            _minute(info.revoked_at),
        ]
        for info in tokens
    ]
    console.print(_table(["name", "role", "created", "last used", "revoked"], rows))


def _minute(value: datetime | None) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M}Z" if value else "-"


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="the holder's name")]) -> None:
    """Revoke the live token of NAME; it stops working at once."""
    from cityos.nlq.auth import revoke_token

    with _database(get_settings()) as conn:
        revoke_token(conn, name)
    typer.echo(f"revoked the token of {name}")


@nlq_app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="default: setting nlq_host")] = None,
    port: Annotated[int | None, typer.Option(help="default: setting nlq_port")] = None,
) -> None:
    """Run the service (one process: the rate limits live in it). Approved signal changes go
    to the Kafka control topic when the broker can be reached (else they stay 'approved')."""
    import uvicorn

    from cityos.nlq.actuator import KafkaActuator
    from cityos.nlq.service import create_app

    settings = get_settings()
    uvicorn.run(
        create_app(settings, actuator=KafkaActuator.connect(settings)),
        host=host or settings.nlq_host,
        port=port or settings.nlq_port,
        log_level="info",
    )


def _default_api() -> str:
    try:
        settings = get_settings()
    except ConfigError:  # a machine without the stack: the defaults
        fields = Settings.model_fields
        return f"http://{fields['nlq_host'].default}:{fields['nlq_port'].default}"
    return f"http://{settings.nlq_host}:{settings.nlq_port}"


def ask(
    question: Annotated[str, typer.Argument(help="the question, in quotes")],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO-8601 instant 'now' refers to")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="CITYOS_TOKEN", help="API token", show_default=False)
    ] = None,
    api: Annotated[str | None, typer.Option(help="service URL; default from the settings")] = None,
) -> None:
    """Ask the running NL-query service a question and show its answer, SQL and rows."""
    import httpx

    if not token:
        typer.secho("cityos ask: no token (--token or CITYOS_TOKEN)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    body: dict[str, Any] = {"question": question}
    if as_of:
        body["as_of"] = as_of
    url = (api or _default_api()).rstrip("/") + "/api/v1/ask"
    try:
        response = httpx.post(
            url,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=ASK_TIMEOUT_S,
        )
    except httpx.TimeoutException as err:
        message = f"cityos ask: no reply from {url} within {ASK_TIMEOUT_S:.0f} s"
        typer.secho(message, fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from err
    except httpx.HTTPError as err:
        typer.secho(f"cityos ask: cannot reach {url}: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from err
    if response.status_code != 200:
        detail = response.json().get("detail") if _is_json(response) else response.text[:200]
        typer.secho(f"cityos ask: {response.status_code} {detail}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    show_reply(response.json())


def _is_json(response: Any) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")


def show_reply(reply: dict[str, Any]) -> None:
    """A reply of any kind, for a person at a terminal (its text never read as rich markup)."""
    console.print(Text(str(reply.get("answer", ""))))
    kind = reply.get("kind")
    if kind == "answer":
        console.print(Text(str(reply.get("interpretation", "")), style="dim"))
        console.print(Syntax(str(reply.get("sql", "")), "sql", word_wrap=True))
        console.print(_table(reply.get("columns", []), reply.get("rows", [])))
    elif kind == "clarification":
        for option in reply.get("options", []):
            console.print(Text(f"  - {option}"))
    elif kind == "refusal":
        console.print(Text.assemble(("reason: ", "yellow"), str(reply.get("reason", ""))))
    elif kind == "action":
        action = reply.get("action", {})
        fields = ["action_id", "kind", "status", "target", "params"]
        console.print(_table(fields, [[action.get(field) for field in fields]]))


def _table(columns: list[Any], rows: list[list[Any]]) -> Table:
    table = Table()
    for column in columns:
        table.add_column(Text(str(column)))
    for row in rows:
        table.add_row(*(Text(_cell(value)) for value in row))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
