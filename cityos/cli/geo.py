"""`cityos geo load | zones`: a city's zones from its spec files into the serving tables.

The geo library takes paths and a connection; this module is the caller that reads the
settings, opens the database and turns GeoError into a message and exit code 2. cityos.geo is
imported inside the commands: geopandas takes seconds to import, and every `cityos` command
imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from cityos.db import connect
from cityos.settings import get_settings

app = typer.Typer(no_args_is_help=True)
console = Console()


@contextmanager
def _db_errors() -> Iterator[None]:
    """A missing serving schema becomes one red line and exit code 2."""
    try:
        yield
    except psycopg.errors.UndefinedTable as err:
        typer.secho(
            f"cityos geo: the serving tables are missing ({err.diag.message_primary}); "
            "start the stack with `cityos up`, which applies the migrations",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2) from err


@contextmanager
def _geo_errors() -> Iterator[None]:
    """GeoError (bad spec, missing file, bad hierarchy) becomes one red line and exit code 2."""
    from cityos.geo import GeoError

    try:
        with _db_errors():
            yield
    except GeoError as err:
        typer.secho(f"cityos geo: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from err


def resolve_spec(spec_or_city: str) -> Path:
    """A path to a spec file as given; a bare name is a shipped city (geo/cities/<name>.toml)."""
    from cityos.geo import city_spec_path

    path = Path(spec_or_city)
    if path.suffix == ".toml" or path.exists():
        return path
    return city_spec_path(spec_or_city)


@app.command()
def load(
    spec_or_city: Annotated[
        str,
        typer.Argument(help="a city name (cologne, beijing, los-angeles) or a spec file's path"),
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="where the spec's files are (default: CITYOS_DATA_DIR)"),
    ] = None,
) -> None:
    """Load a city's row and zones into `cities` and `zones` (idempotent upsert)."""
    from cityos.geo import load_city, write_city

    settings = get_settings()
    with _geo_errors():
        started = time.monotonic()
        city = load_city(resolve_spec(spec_or_city), data_dir or settings.data_dir, streets=False)
        read_s = time.monotonic() - started
        with connect(settings.database_url.get_secret_value()) as conn:
            summary = write_city(conn, city)
        total_s = time.monotonic() - started

    zones = city.zones
    table = Table(title=f"{city.city.name} ({city.city.city_id}): zones loaded")
    for column in ("level", "zones", "area km²"):
        table.add_column(column, justify="left" if column == "level" else "right")
    for level, group in zones.groupby("level", sort=True):
        table.add_row(str(level), str(len(group)), f"{group['area_km2'].sum():,.1f}")
    console.print(table)
    nested = zones[zones["level"] != "special"]
    top = nested[nested["parent_zone_id"].isna()]
    typer.echo(f"total area {top['area_km2'].sum():,.1f} km² (top-level zones)")
    typer.echo(
        f"{summary.inserted} rows new, {summary.updated} changed, {summary.unchanged} unchanged"
    )
    typer.echo(f"read {read_s:.2f} s, total {total_s:.2f} s")


@app.command()
def zones(
    city_id: Annotated[str, typer.Argument(help="city_id, e.g. cologne")],
    level: Annotated[
        str | None, typer.Option(help="only this level: district, subdistrict, special")
    ] = None,
) -> None:
    """List a city's zones as stored in the database."""
    settings = get_settings()
    query = (
        "SELECT zone_id, level, name, local_name, parent_zone_id, area_km2 FROM zones"
        " WHERE city_id = %s AND (%s::text IS NULL OR level = %s)"
        " ORDER BY CASE level WHEN 'district' THEN 0 WHEN 'subdistrict' THEN 1 ELSE 2 END, zone_id"
    )
    with _db_errors(), connect(settings.database_url.get_secret_value()) as conn:
        rows = conn.execute(query, (city_id, level, level)).fetchall()
    if not rows:
        typer.secho(
            f"no zones for city {city_id!r}{f' at level {level}' if level else ''}; "
            f"load them with `cityos geo load {city_id}`",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(1)
    table = Table(title=f"zones of {city_id}")
    for column in ("zone_id", "level", "name", "local name", "parent", "area km²"):
        table.add_column(column, justify="right" if column == "area km²" else "left")
    for zone_id, lvl, name, local_name, parent, area in rows:
        table.add_row(zone_id, lvl, name, local_name or "", parent or "", f"{area:,.2f}")
    console.print(table)
