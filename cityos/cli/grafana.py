"""`cityos grafana build | push`: the dashboards as files, or straight into a running Grafana.

``build`` writes infra/grafana/dashboards/<name>.json from cityos.grafana.dashboards (the files
the compose stack's Grafana provisions); ``--check`` only says whether they are up to date.
``push`` provisions the folder, the PostgreSQL data source and the dashboards into an existing
Grafana through its HTTP API, with a service-account token (Administration → Service accounts,
role Editor for dashboards plus data-source write, or Admin).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr
from rich.console import Console

from cityos.errors import ConfigError

app = typer.Typer(no_args_is_help=True)
console = Console()
INFRA = Path(__file__).resolve().parents[2] / "infra" / "grafana"
DASHBOARD_DIR = INFRA / "dashboards"
ALERTING_DIR = INFRA / "provisioning" / "alerting"


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="grafana", help="Grafana dashboards: build the files, push them.")


@app.command("build")
def build_command(
    out: Annotated[Path, typer.Option(help="folder for the dashboard JSON files")] = DASHBOARD_DIR,
    check: Annotated[bool, typer.Option(help="only check the files are up to date")] = False,
) -> None:
    """Write every dashboard's JSON (or, with --check, fail when a file is stale)."""
    from cityos.grafana.dashboards import DASHBOARDS, render

    stale = []
    for name in DASHBOARDS:
        path = out / f"{name}.json"
        text = render(name)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not check:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    verb = "stale" if check else "written"
    for path in stale:
        console.print(f"{verb}: {path}")
    console.print(f"{len(DASHBOARDS) - len(stale)} of {len(DASHBOARDS)} dashboards up to date")
    if check and stale:
        raise typer.Exit(1)


@app.command("push")
def push_command(
    url: Annotated[str | None, typer.Option(help="Grafana's base URL [CITYOS_GRAFANA_URL]")] = None,
    token: Annotated[
        str | None, typer.Option(help="service-account token [CITYOS_GRAFANA_TOKEN]")
    ] = None,
    db_host: Annotated[
        str | None,
        typer.Option(
            help="host:port of PostgreSQL as Grafana's server reaches it "
            "[CITYOS_GRAFANA_DB_HOST; default: the host of CITYOS_DATABASE_URL]"
        ),
    ] = None,
    db_user: Annotated[
        str | None, typer.Option(help="read-only role Grafana uses [CITYOS_GRAFANA_DB_USER]")
    ] = None,
    dashboard: Annotated[
        list[str] | None, typer.Option(help="push only this dashboard (repeatable)")
    ] = None,
    alerting: Annotated[
        Path, typer.Option(help="folder of Grafana alert-rule provisioning files to push")
    ] = ALERTING_DIR,
) -> None:
    """Provision folder, data source and dashboards into a running Grafana."""
    from cityos.grafana.dashboards import DASHBOARDS
    from cityos.grafana.push import Database, load_rule_groups, push
    from cityos.settings import get_settings

    settings = get_settings()
    # Proposed settings (cityos/settings.py); getattr until they exist.
    url = url or settings.grafana_url
    secret = SecretStr(token) if token else settings.grafana_token
    password = settings.grafana_db_password
    if not url:
        raise ConfigError("CITYOS_GRAFANA_URL", "give --url or set it")
    if secret is None:
        raise ConfigError("CITYOS_GRAFANA_TOKEN", "give --token or set it")
    if password is None:
        raise ConfigError("CITYOS_GRAFANA_DB_PASSWORD", "the read-only role's password is not set")
    unknown = sorted(set(dashboard or []) - set(DASHBOARDS))
    if unknown:
        raise typer.BadParameter(f"unknown dashboard(s) {unknown}; known: {sorted(DASHBOARDS)}")
    db = Database.from_url(
        settings.database_url.get_secret_value(),
        user=db_user or settings.grafana_db_user,
        password=password,
        host=db_host or settings.grafana_db_host,
    )
    groups = load_rule_groups(alerting) if alerting.is_dir() else []
    report = push(url, secret, db, names=dashboard or None, rule_groups=groups)
    console.print(f"folder {report.folder}, data source {report.datasource}")
    for line in report.dashboards:
        console.print(f"dashboard {line}")
    for name in report.rule_groups:
        console.print(f"alert rule group {name}")
