"""`cityos up | down | status`: the embedded stack (placeholder: filled in by the stack part)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the stack commands to the top-level app."""
