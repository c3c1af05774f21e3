"""CLI commands (placeholder: filled in by its part)."""

import typer

app = typer.Typer(no_args_is_help=True)
