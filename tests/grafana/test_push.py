"""`cityos grafana push` against a real local HTTP server that plays Grafana's API.

No Grafana runs here, so the edge of the world is a small HTTP server with the few endpoints
push uses (folders, data sources by uid, dashboards/db), keeping what it was sent. The
grafana-client library, its HTTP stack and our payloads are all real.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cityos.grafana import GrafanaError
from cityos.grafana.dashboards import DASHBOARDS
from cityos.grafana.push import Database, load_rule_groups, push

TOKEN = "glsa_test_token_0123456789"  # noqa: S105  (a test value, sent to the local server)
ALERTING = Path(__file__).resolve().parents[2] / "infra/grafana/provisioning/alerting"
OWNER_PASSWORD = "owner-secret-never-sent"  # noqa: S105
READER_PASSWORD = SecretStr("reader-secret")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeGrafana:
    """State and request log of the fake server."""

    requests: list[Request] = field(default_factory=list)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    rule_groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    refuse_dashboards: bool = False

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.startswith("/api/folders/") and method == "GET":
            uid = path.removeprefix("/api/folders/")
            found = self.folders.get(uid)
            return (200, found) if found else (404, {"message": "folder not found"})
        if path == "/api/folders" and method == "POST":
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"]}
            return 200, self.folders[body["uid"]]
        if path.startswith("/api/folders/") and method == "PUT":
            uid = path.removeprefix("/api/folders/")
            self.folders[uid]["title"] = body["title"]
            return 200, self.folders[uid]
        if path.startswith("/api/datasources/uid/"):
            uid = path.removeprefix("/api/datasources/uid/")
            if method == "GET":
                found = self.datasources.get(uid)
                return (200, found) if found else (404, {"message": "Data source not found"})
            if method == "PUT":
                self.datasources[uid] = body
                return 200, {"message": "Datasource updated"}
        if path == "/api/datasources" and method == "POST":
            self.datasources[body["uid"]] = body
            return 200, {"message": "Datasource added", "id": 1}
        if path == "/api/dashboards/db" and method == "POST":
            if self.refuse_dashboards:
                return 403, {"message": "Access denied"}
            self.dashboards[body["dashboard"]["uid"]] = body
            return 200, {"status": "success", "uid": body["dashboard"]["uid"], "version": 1}
        groups = "/api/v1/provisioning/folder/cityos/rule-groups/"
        if path.startswith(groups) and method == "PUT" and "cityos" in self.folders:
            self.rule_groups[path.removeprefix(groups)] = body
            return 200, body
        return 404, {"message": f"no route {method} {path}"}


@pytest.fixture
def grafana() -> Iterator[tuple[str, FakeGrafana]]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            fake.requests.append(Request(self.command, self.path, dict(self.headers), body))
            status, payload = fake.handle(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", fake
    server.shutdown()
    server.server_close()


def _db() -> Database:
    return Database.from_url(
        f"postgresql://cityos:{OWNER_PASSWORD}@db.internal:5433/cityos",
        user="grafana_reader",
        password=READER_PASSWORD,
    )


def test_first_push_creates_folder_datasource_and_every_dashboard(
    grafana: tuple[str, FakeGrafana],
) -> None:
    url, fake = grafana
    report = push(url, SecretStr(TOKEN), _db())

    assert report.folder == "created" and report.datasource == "created"
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in fake.requests)
    assert fake.folders == {"cityos": {"uid": "cityos", "title": "CityOS"}}
    ds = fake.datasources["cityos-postgres"]
    assert ds["type"] == "grafana-postgresql-datasource"
    assert ds["url"] == "db.internal:5433" and ds["user"] == "grafana_reader"
    assert ds["jsonData"]["database"] == "cityos"
    assert ds["secureJsonData"] == {"password": "reader-secret"}
    assert "password" not in ds  # only ever in secureJsonData
    # the owner's credentials never leave this machine
    assert all(OWNER_PASSWORD not in json.dumps(r.body) for r in fake.requests)

    posted = [r for r in fake.requests if r.path == "/api/dashboards/db"]
    assert len(posted) == len(DASHBOARDS)
    for request in posted:
        assert request.body["overwrite"] is True and request.body["folderUid"] == "cityos"
        assert "id" not in request.body["dashboard"]
    assert set(fake.dashboards) == {
        "cityos-overview",
        "cityos-traffic",
        "cityos-air-quality",
        "cityos-alerts",
        "cityos-pipeline",
    }
    # order: the folder and data source exist before any dashboard refers to them
    paths = [r.path for r in fake.requests]
    assert paths.index("/api/folders") < paths.index("/api/datasources")
    assert paths.index("/api/datasources") < paths.index("/api/dashboards/db")


def test_second_push_updates_in_place(grafana: tuple[str, FakeGrafana]) -> None:
    url, fake = grafana
    push(url, SecretStr(TOKEN), _db())
    fake.folders["cityos"]["title"] = "Renamed by someone"
    fake.requests.clear()

    report = push(url, SecretStr(TOKEN), _db(), names=["traffic"])

    assert report.folder == "renamed" and report.datasource == "updated"
    methods = [(r.method, r.path) for r in fake.requests]
    assert ("POST", "/api/folders") not in methods and ("POST", "/api/datasources") not in methods
    assert ("PUT", "/api/folders/cityos") in methods
    assert ("PUT", "/api/datasources/uid/cityos-postgres") in methods
    assert fake.folders["cityos"]["title"] == "CityOS"
    assert [
        r.body["dashboard"]["uid"] for r in fake.requests if r.path == "/api/dashboards/db"
    ] == ["cityos-traffic"]


def test_watchdog_rule_groups_are_pushed_into_the_folder(
    grafana: tuple[str, FakeGrafana],
) -> None:
    url, fake = grafana
    report = push(url, SecretStr(TOKEN), _db(), names=[], rule_groups=load_rule_groups(ALERTING))

    assert report.rule_groups == ["cityos-watchdog"]
    group = fake.rule_groups["cityos-watchdog"]
    assert group["interval"] == 60 and group["folderUid"] == "cityos"
    assert {r["uid"] for r in group["rules"]} == {
        "cityos-pipeline-stalled",
        "cityos-alert-outbox-stuck",
    }
    for rule in group["rules"]:
        assert rule["folderUID"] == "cityos" and rule["ruleGroup"] == "cityos-watchdog"
        sql = [q for q in rule["data"] if q["datasourceUid"] == "cityos-postgres"]
        assert sql and all(q["model"]["rawSql"] for q in sql)


def test_a_refusal_is_a_grafana_error(grafana: tuple[str, FakeGrafana]) -> None:
    url, fake = grafana
    fake.refuse_dashboards = True
    with pytest.raises(GrafanaError, match="403"):
        push(url, SecretStr(TOKEN), _db())


def test_an_unreachable_grafana_is_a_grafana_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(GrafanaError, match="Grafana at"):
        push(f"http://127.0.0.1:{port}", SecretStr(TOKEN), _db(), timeout_s=2)


def test_database_from_url_never_takes_the_owner_credentials() -> None:
    db = _db()
    assert (db.host, db.name, db.user) == ("db.internal:5433", "cityos", "grafana_reader")
    assert OWNER_PASSWORD not in repr(db)
    with pytest.raises(GrafanaError):
        Database.from_url("mysql://x@y/z", user="u", password=READER_PASSWORD)
