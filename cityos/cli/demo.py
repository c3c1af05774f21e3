"""`cityos demo`: the main job on the embedded default (what `make demo` runs)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from cityos.settings import load_settings


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def demo_command(
    hours: float = typer.Option(3.0, min=0.1, max=48.0, help="simulated hours of Cologne traffic"),
    speedup: float = typer.Option(
        240.0, min=1.0, help="simulated seconds per wall second ('inf': as fast as SUMO runs)"
    ),
    fresh: bool = typer.Option(
        True, help="clear earlier runs' topics, checkpoints, lake and streamed tables first"
    ),
) -> None:
    """Start the embedded stack, run the Cologne twin and the Beijing replay through Kafka and
    Spark into PostgreSQL and the lake, and show what landed where."""
    from cityos.demo import _redacted, run_demo

    console = Console()
    report = run_demo(load_settings, hours=hours, speedup=speedup, console=console, fresh=fresh)
    settings = load_settings()

    rows = Table(title="serving tables (PostgreSQL)", show_edge=False)
    rows.add_column("table")
    rows.add_column("rows", justify="right")
    for table, count in report.table_rows.items():
        rows.add_row(table, f"{count:,}")
    for topic, count in report.dead_letters.items():
        rows.add_row(f"[dim]{topic} (Kafka)[/]", f"{count:,}")
    console.print(rows)

    traffic = Table(title="latest 5-minute windows per intersection (traffic_5m)", show_edge=False)
    for name in (
        "intersection",
        "approaches",
        "window end (UTC)",
        "vehicles",
        "km/h",
        "occupancy",
        "congestion",
    ):
        traffic.add_column(name, justify="left" if name == "intersection" else "right")
    for name, approaches, end, vehicles, speed, occ, congestion in report.latest_traffic:
        traffic.add_row(
            name,
            str(approaches),
            f"{end:%Y-%m-%d %H:%M}",
            f"{vehicles:,}",
            str(speed),
            str(occ),
            str(congestion),
        )
    console.print(traffic)

    air = Table(title="latest hourly air quality (air_quality_1h)", show_edge=False)
    for name in ("station", "city", "hour (UTC)", "PM2.5", "NO2", "AQI", "category"):
        air.add_column(name)
    for name, city, start, pm25, no2, aqi, category in report.latest_air:
        air.add_row(
            name, city, f"{start:%Y-%m-%d %H:%M}", str(pm25), str(no2), str(aqi), str(category)
        )
    console.print(air)

    counts = ", ".join(f"{n:,} {status}" for status, n in sorted(report.alert_counts.items()))
    scored = ", ".join(f"{n:,} {what}" for what, n in report.scored.items())
    alerts = Table(
        title=f"alerts raised as windows closed ({counts or 'none'}; {scored})", show_edge=False
    )
    for name in ("severity", "status", "kind", "where", "message", "since (UTC)"):
        alerts.add_column(name)
    colour = {"critical": "red", "warning": "yellow"}
    for severity, status, kind, place, message, started in report.alerts:
        style = colour.get(severity, "") if status != "resolved" else "dim"
        alerts.add_row(
            severity, status, kind, place, message, f"{started:%Y-%m-%d %H:%M}", style=style
        )
    console.print(alerts)
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items())
    console.print(f"[bold]where to look[/] ({timing})")
    console.print(
        f"  PostgreSQL  {_redacted(settings.database_url.get_secret_value())} "
        f"(password in {settings.env_file})"
    )
    console.print(f"  Kafka       {settings.kafka_bootstrap}  (topics: cityos status)")
    console.print(f"  lake        {settings.lake_dir}")
    console.print(f"  logs        {settings.state_dir / 'logs'}")
    for chart in report.charts:
        console.print(f"  chart       {chart}")
    console.print("  stop        make down")
