"""`cityos airflow standalone | test | migrate`: Airflow 3 with the CityOS DAGs, on this machine."""

from __future__ import annotations

import signal
import subprocess
from datetime import UTC, datetime
from typing import Annotated

import typer

from cityos.airflow import DAG_IDS, DEFAULT_PORT, AirflowHome
from cityos.settings import get_settings

app = typer.Typer(no_args_is_help=True)


def _home(port: int = DEFAULT_PORT) -> AirflowHome:
    return AirflowHome.for_settings(get_settings(), port=port)


@app.command("standalone")
def standalone_command(
    port: int = typer.Option(DEFAULT_PORT, help="API server (UI) port"),
) -> None:
    """Run scheduler, dag-processor, triggerer and API server until Ctrl-C.

    State lives in <state_dir>/airflow; the admin password is printed on first start and kept
    in simple_auth_manager_passwords.json.generated there. DAGs start paused.
    """
    home = _home(port)
    typer.echo(f"Airflow home {home.home}, DAGs {home.dags_folder}, UI http://localhost:{port}")
    process = home.standalone()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it as Ctrl-C does
    try:
        process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait()
    raise typer.Exit(process.returncode or 0)


@app.command("test")
def test_command(
    dag_id: Annotated[str, typer.Argument(help=f"one of {', '.join(DAG_IDS)}")],
    date: Annotated[
        datetime | None,
        typer.Option("--date", help="logical date (UTC); the run covers the period before it"),
    ] = None,
) -> None:
    """Run one DAG once, in-process (`airflow dags test`), against the configured stack."""
    logical = date.replace(tzinfo=UTC) if date is not None and date.tzinfo is None else date
    raise typer.Exit(_home().test_dag(dag_id, logical))


@app.command("migrate")
def migrate_command() -> None:
    """Create or upgrade Airflow's metadata DB (SQLite under the state dir)."""
    home = _home()
    home.migrate()
    typer.echo(f"Airflow metadata DB ready: {home.metadata_db}")
