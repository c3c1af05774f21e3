"""`cityos alerts notify | deliveries`: the notifier and what it delivered.

``notify`` runs :class:`cityos.alerting.notify.Notifier` in the foreground until Ctrl-C or
SIGTERM: firing and resolved alerts from the Kafka ``alerts`` topic to the webhooks and e-mail
recipients of the ``CITYOS_NOTIFY_*`` settings. Stopping lets an HTTP request or SMTP session in
progress finish; an event waiting to be retried is read again at the next start.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cityos.settings import get_settings

app = typer.Typer(no_args_is_help=True)
console = Console()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="alerts", help="Alerts: notifications by webhook and e-mail.")


@app.command("notify")
def notify_command() -> None:
    """Deliver firing and resolved alerts to the configured webhooks and e-mail, until stopped."""
    from cityos.alerting.notify import Notifier, NotifierConfig
    from cityos.errors import ConfigError

    settings = get_settings()
    config = NotifierConfig.from_settings(settings)
    if not config.webhooks and not config.email_to:
        raise ConfigError(
            "CITYOS_NOTIFY_WEBHOOKS",
            "no destination: set it, or CITYOS_NOTIFY_SMTP_HOST and CITYOS_NOTIFY_EMAIL_TO",
        )
    notifier = Notifier.from_settings(settings, config)
    previous = {sig: signal.signal(sig, lambda *_: notifier.stop()) for sig in STOP_SIGNALS}
    try:
        stats = notifier.run()  # logs where it sends what
    finally:
        notifier.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print(
        f"delivered {stats.delivered}, failed {stats.failed}, skipped {stats.skipped} (too old), "
        f"already delivered {stats.duplicates}, not notified {stats.ignored}, bad {stats.bad}"
    )


def _time(value: Any) -> str:
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
    return "" if value is None else str(value)


def _refused(why: str) -> typer.Exit:
    typer.secho(f"cityos alerts: {why}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


DELIVERY_STATUSES = ("delivered", "failed", "skipped", "pending")


@app.command("deliveries")
def deliveries_command(
    status: Annotated[
        str | None,
        typer.Option(
            help="only deliveries of this status: delivered|failed|skipped, or pending (failed"
            " or held back, and to be sent again)"
        ),
    ] = None,
    alert_id: Annotated[str | None, typer.Option(help="only this alert's")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """The latest deliveries of alert events, newest first, with the reason of each failure.

    A failed delivery the notifier will send again (the destination was down, or the event is
    held back behind earlier ones) shows as ``failed, to resend``; a plain ``failed`` is final.
    """
    import psycopg

    from cityos.db import connect

    if status is not None and status not in DELIVERY_STATUSES:
        raise _refused(f"--status {status!r}: one of {', '.join(DELIVERY_STATUSES)}")
    settings = get_settings()
    url, schema = settings.database_url.get_secret_value(), settings.database_schema
    try:
        with connect(url, schema) as conn:
            rows = conn.execute(
                "SELECT last_attempt_at, event_type, alert_id, destination, status, resend,"
                " attempts, last_error FROM alert_deliveries"
                " WHERE (%(status)s::text IS NULL OR status = %(status)s"
                "        OR (%(status)s = 'pending' AND status = 'failed' AND resend))"
                " AND (%(alert)s::text IS NULL OR alert_id = %(alert)s)"
                " ORDER BY last_attempt_at DESC LIMIT %(limit)s",
                {"status": status, "alert": alert_id, "limit": limit},
            ).fetchall()
    except psycopg.errors.UndefinedTable as err:
        raise _refused("no alert_deliveries table: run cityos db migrate") from err
    except psycopg.errors.UndefinedColumn as err:
        raise _refused(f"the alert_deliveries table is old ({err}): run cityos db migrate") from err
    except psycopg.OperationalError as err:
        raise _refused(f"cannot reach the database: {err}") from err
    table = Table()
    for column in ("at", "event", "alert", "destination", "status", "attempts", "last error"):
        table.add_column(column)
    for at, event, alert, destination, state, resend, attempts, error in rows:
        if state == "failed" and resend:
            state = "failed, to resend"
        cells = (at, event, alert, destination, state, attempts, error)
        table.add_row(*(Text(_time(value)) for value in cells))
    console.print(table)
