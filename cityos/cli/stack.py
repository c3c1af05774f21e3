"""`cityos up | down | status`: the embedded stack (Kafka + PostgreSQL as native processes)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(log_path=False)


def _quiet_clients() -> None:
    """kafka-python logs every connection at INFO; keep that for --verbose only."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)


@contextlib.contextmanager
def _progress(title: str) -> Iterator[Callable[[str], None] | None]:
    """A spinner on a terminal; plain log lines (through the library's logging) otherwise."""
    if not console.is_terminal:
        yield None
        return
    # the spinner and its step lines replace the library's INFO lines (kept with --verbose)
    library = logging.getLogger("cityos")
    level = library.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        library.setLevel(logging.WARNING)
    try:
        with console.status(title) as status:

            def show(step: str) -> None:
                console.log(step)
                status.update(f"{title}: {step}")

            yield show
    finally:
        library.setLevel(level)


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def up() -> None:
    """Start PostgreSQL and Kafka (if not running), create the topics, write cityos.env."""
    from cityos.stack import Stack

    _quiet_clients()
    stack = Stack.from_env()
    with _progress("starting the CityOS stack") as show:
        connections = stack.up(progress=show)
    console.print(
        f"[green]up[/green]  kafka {connections.kafka_bootstrap}  postgres "
        f"{stack.postgres.address}  (connections in {stack.env_file})"
    )


def down() -> None:
    """Stop Kafka and PostgreSQL; their data stays for the next `cityos up`."""
    from cityos.stack import Stack

    _quiet_clients()
    stack = Stack.from_env()
    with _progress("stopping the CityOS stack") as show:
        stack.down(progress=show)
    console.print("[green]down[/green]")


def status() -> None:
    """A table of the stack's components: running, healthy, pid, address, log."""
    from cityos.stack import Stack

    _quiet_clients()
    stack = Stack.from_env()
    table = Table(title=f"CityOS stack in {stack.config.state_dir}")
    for column in ("component", "running", "healthy", "pid", "address", "log"):
        table.add_column(column)
    yes_no = {True: "[green]yes[/green]", False: "[red]no[/red]"}
    for item in stack.status():
        table.add_row(
            item.name,
            yes_no[item.running],
            yes_no[item.healthy],
            str(item.pid or "-"),
            item.address,
            _relative(item.log_path, stack.config.state_dir),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the stack commands to the top-level app."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
