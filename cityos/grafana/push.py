"""Provision CityOS into a running Grafana through its HTTP API (grafana-client).

What `cityos grafana push` does, idempotently, in this order:

1. the folder ``cityos`` ("CityOS"): created, or renamed back if someone renamed it;
2. the PostgreSQL data source ``cityos-postgres``: created, or updated in place by uid; the
   read-only role's password goes in ``secureJsonData`` (Grafana encrypts it and never returns
   it), so the same call also rotates it;
3. every dashboard of cityos.grafana.dashboards into that folder, ``overwrite: true``;
4. the watchdog alert rules of infra/grafana/provisioning/alerting, one ``PUT`` per rule group
   (Grafana's "create or update alert rule group"), in the same folder.

The same objects the file provisioning in infra/grafana/provisioning creates for the compose
stack: same uids, so a stack can be switched from one to the other.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException
from pydantic import SecretStr

from cityos.grafana import GrafanaError
from cityos.grafana.dashboards import DASHBOARDS, FOLDER_TITLE, FOLDER_UID, build
from cityos.grafana.query import DATASOURCE_TYPE, DATASOURCE_UID

log = logging.getLogger(__name__)

DATASOURCE_NAME = "CityOS PostgreSQL"


@dataclass(frozen=True)
class Database:
    """The serving database as Grafana's server reaches it, and the role it reads as."""

    host: str  # host:port, resolved by Grafana's server, not by this machine
    name: str
    user: str
    password: SecretStr = field(repr=False)
    sslmode: str = "disable"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        user: str,
        password: SecretStr,
        host: str | None = None,
        sslmode: str = "disable",
    ) -> Database:
        """Host and database name from a postgresql:// URL; never its (owner's) credentials."""
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise GrafanaError("expected a postgresql:// URL for the serving database")
        name = unquote(parts.path.lstrip("/")) or "postgres"
        default_host = f"{parts.hostname}:{parts.port or 5432}"
        return cls(host or default_host, name, user, password, sslmode)


def datasource(db: Database) -> dict[str, Any]:
    """The data source, as infra/grafana/provisioning/datasources/cityos-postgres.yaml has it."""
    return {
        "name": DATASOURCE_NAME,
        "uid": DATASOURCE_UID,
        "type": DATASOURCE_TYPE,
        "access": "proxy",
        "url": db.host,
        "user": db.user,
        "isDefault": True,
        "jsonData": {
            "database": db.name,
            "sslmode": db.sslmode,
            "postgresVersion": 1700,
            "timescaledb": False,
        },
        "secureJsonData": {"password": db.password.get_secret_value()},
    }


@dataclass
class PushReport:
    folder: str = ""
    datasource: str = ""
    dashboards: list[str] = field(default_factory=list)
    rule_groups: list[str] = field(default_factory=list)


def load_rule_groups(folder: Path) -> list[dict[str, Any]]:
    """The rule groups of Grafana's alerting provisioning files in ``folder``."""
    groups: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        groups.extend(yaml.safe_load(path.read_text(encoding="utf-8")).get("groups", []))
    return groups


def _seconds(duration: str) -> int:
    found = re.fullmatch(r"(\d+)([smh])", duration)
    if not found:
        raise GrafanaError(f"rule group interval {duration!r}: expected e.g. 1m")
    return int(found.group(1)) * {"s": 1, "m": 60, "h": 3600}[found.group(2)]


def rule_group(group: dict[str, Any]) -> dict[str, Any]:
    """A provisioning-file rule group as the HTTP API's AlertRuleGroup."""
    name = group["name"]
    return {
        "title": name,
        "folderUid": FOLDER_UID,
        "interval": _seconds(group["interval"]),
        "rules": [
            rule | {"folderUID": FOLDER_UID, "ruleGroup": name, "orgID": group.get("orgId", 1)}
            for rule in group["rules"]
        ],
    }


def _missing(err: GrafanaClientError) -> bool:
    return err.status_code == 404


def _ensure_folder(api: GrafanaApi) -> str:
    try:
        found = api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as err:
        if not _missing(err):
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        return "created"
    if found.get("title") != FOLDER_TITLE:
        api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True)
        return "renamed"
    return "unchanged"


def _ensure_datasource(api: GrafanaApi, db: Database) -> str:
    payload = datasource(db)
    try:
        api.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except GrafanaClientError as err:
        if not _missing(err):
            raise
        api.datasource.create_datasource(payload)
        return "created"
    api.datasource.update_datasource_by_uid(DATASOURCE_UID, payload)
    return "updated"


def push(
    url: str,
    token: SecretStr,
    db: Database,
    *,
    names: list[str] | None = None,
    rule_groups: list[dict[str, Any]] | None = None,
    timeout_s: float = 10.0,
    connect: Callable[..., GrafanaApi] = GrafanaApi.from_url,
) -> PushReport:
    """Provision folder, data source and dashboards into the Grafana at ``url``."""
    api = connect(url, credential=token.get_secret_value(), timeout=timeout_s)
    report = PushReport()
    try:
        report.folder = _ensure_folder(api)
        report.datasource = _ensure_datasource(api, db)
        for name in names or list(DASHBOARDS):
            body = build(name)
            body.pop("id", None)  # a new dashboard has no id; overwrite matches by uid
            result = api.dashboard.update_dashboard(
                {
                    "dashboard": body,
                    "folderUid": FOLDER_UID,
                    "overwrite": True,
                    "message": "cityos grafana push",
                }
            )
            report.dashboards.append(f"{name}: {result.get('status', 'success')}")
            log.info("dashboard %s pushed to %s", body["uid"], url)
        for group in rule_groups or []:
            api.alertingprovisioning.update_rule_group(FOLDER_UID, group["name"], rule_group(group))
            report.rule_groups.append(group["name"])
    except GrafanaException as err:
        raise GrafanaError(f"Grafana at {url} refused: {err}") from err
    except OSError as err:  # connection refused, DNS, TLS
        raise GrafanaError(f"cannot reach Grafana at {url}: {err}") from err
    return report
