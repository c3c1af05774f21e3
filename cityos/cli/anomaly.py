"""`cityos anomaly retrain | models | promote`: the anomaly models from a terminal.

``retrain`` is what the ``retrain_anomaly_models`` DAG runs for its data interval; ``models``
lists the registry; ``promote`` puts a registered version into production by hand (the streaming
job follows within ``registry_check_s``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console

from cityos.cli.nlq import _database, _table
from cityos.settings import get_settings

app = typer.Typer(no_args_is_help=True)
console = Console()


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="anomaly", help="Anomaly models: retrain, list, promote.")


def _instant(text: str, option: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise typer.BadParameter(
            f"expected an ISO-8601 time, got {text!r}", param_hint=option
        ) from err
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@app.command("retrain")
def retrain_command(
    end: Annotated[str, typer.Option(help="end of the data interval (ISO-8601, UTC)")],
    start: Annotated[str | None, typer.Option(help="start; default: a day before the end")] = None,
    lookback_days: Annotated[
        float | None,
        typer.Option(min=1.0, help="training data before the end; default: the settings'"),
    ] = None,
    holdout_hours: Annotated[
        float | None,
        typer.Option(min=1.0, help="held out for the comparison; default: the settings'"),
    ] = None,
) -> None:
    """Train on the windows up to END, compare with production on a held-out period, register,
    and promote if better."""
    from cityos.anomaly.retrain import retrain

    settings = get_settings()
    until = _instant(end, "--end")
    since = _instant(start, "--start") if start else until - timedelta(days=1)
    with _database(settings):
        pass
    summary = retrain(
        settings,
        since,
        until,
        lookback=timedelta(days=lookback_days) if lookback_days is not None else None,
        holdout=timedelta(hours=holdout_hours) if holdout_hours is not None else None,
    )
    cand, prod = summary.get("candidate") or {}, summary.get("production") or {}
    rows = [
        ["version", summary["version"]],
        ["promoted", summary["promoted"]],
        ["why", summary["reason"]],
        ["sensors / series", f"{summary['sensors']} / {summary['series']}"],
        ["candidate MASE", cand.get("mase")],
        ["production MASE", prod.get("mase")],
        ["held-out points", cand.get("points")],
        ["training data", _lake_read(summary.get("read") or {})],
        [
            "training CPU s (per sensor)",
            f"{summary['train_cpu_s']} ({summary['train_cpu_s_per_sensor']})",
        ],
    ]
    console.print(_table(["", ""], rows))


@app.command("models")
def models_command() -> None:
    """Every registered version, newest first, with its status and held-out metrics."""
    from cityos.anomaly.registry import versions
    from cityos.db import connect

    settings = get_settings()
    with _database(settings):
        pass
    with connect(settings.database_url.get_secret_value(), settings.database_schema) as conn:
        found = versions(conn, "anomaly")
    rows = [
        [
            v.version,
            v.status,
            (v.metrics.get("candidate") or {}).get("mase"),
            v.data_start,
            v.data_end,
            v.note,
        ]
        for v in found
    ]
    console.print(_table(["version", "status", "MASE", "data from", "data to", "note"], rows))


@app.command("promote")
def promote_command(version: Annotated[str, typer.Argument(help="a registered version")]) -> None:
    """Put a registered version into production (the previous one is archived)."""
    from cityos.anomaly.registry import RegistryError, set_status
    from cityos.db import connect

    settings = get_settings()
    with _database(settings):
        pass
    with connect(
        settings.database_url.get_secret_value(), settings.database_schema, autocommit=True
    ) as conn:
        try:
            set_status(conn, "anomaly", version, "production", note="promoted by hand")
        except RegistryError as err:
            typer.secho(f"cityos anomaly: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from err
    console.print(f"anomaly model {version} is in production")


def _lake_read(read: dict[str, Any]) -> str:
    """'lake: 214 files, 972 traffic_5m + 4056 air_quality_1h windows, read in 6.4 s'."""
    if not read:
        return "-"
    windows = " + ".join(f"{n} {table}" for table, n in read.get("windows", {}).items())
    seconds = sum(read.get("seconds", {}).values())
    source = read.get("source", "lake")
    return f"{source}: {read.get('files')} files, {windows} windows, {seconds:.1f} s"
