"""`cityos db migrate`: apply the versioned migrations to the configured database."""

from __future__ import annotations

import typer

from cityos.db import migrate
from cityos.settings import get_settings

app = typer.Typer(no_args_is_help=True)


@app.command("migrate")
def migrate_command(
    schema: str = typer.Option("public", help="schema to migrate (tests use one per test)"),
) -> None:
    """Apply pending migrations; safe to run again (already applied ones are skipped)."""
    settings = get_settings()
    applied = migrate(settings.database_url.get_secret_value(), schema=schema)
    names = ", ".join(applied) or "none pending"
    typer.echo(f"applied {len(applied)} migration(s) to {schema}: {names}")
