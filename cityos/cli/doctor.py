"""`cityos doctor`: every component checked, what is wrong and how to fix it, in plain words."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

STYLE = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]fail[/red]"}


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="the findings as JSON")] = False,
    airflow_url: Annotated[
        str | None,
        typer.Option("--airflow-url", help="also ask this Airflow api-server for its health"),
    ] = None,
) -> None:
    """Check broker, topics, lag, streaming queries, serving tables, Airflow, disk and models.

    Exit code 0 when nothing fails (warnings allowed), 1 otherwise."""
    from cityos.doctor import diagnose, summary, worst
    from cityos.settings import get_settings

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # unreachable broker: one line
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # in the table, not a retry log
    settings = get_settings()
    airflow_url = airflow_url or getattr(settings, "airflow_url", None)
    findings = diagnose(settings, airflow_url=airflow_url)
    if as_json:
        body = {
            "status": worst(findings),
            "summary": summary(findings),
            "findings": [f.to_json() for f in findings],
        }
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        console = Console()
        table = Table(title="CityOS doctor", show_lines=False)
        for column in ("component", "status", "what we found", "how to fix"):
            table.add_column(column, overflow="fold")
        for f in findings:
            table.add_row(f.component, STYLE[f.status], f.message, f.fix or "")
        console.print(table)
        console.print(summary(findings))
    raise typer.Exit(1 if worst(findings) == "fail" else 0)


def register(app: typer.Typer) -> None:
    """Add `cityos doctor` to the top-level app."""
    app.command("doctor")(doctor)
