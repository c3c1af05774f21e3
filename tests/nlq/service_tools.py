"""Helpers of the service tests: serving tables with real rows, a scripted answerer, tokens.

The serving rows are the evaluation fixture's own (``shared/nlq/fixture.py``): its cities, its
zones built from the Cologne and Beijing district files and its eight cologne8 signals with their
green phases read from the SUMO net; the alerts are those of its snapshot that the action tests
act on. Traffic and air-quality windows are left out: the service tests never run SQL over them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cityos.db import connect
from cityos.nlq.auth import Principal, create_token
from cityos.nlq.reply import ActionDraft, Clarification, Reply
from cityos.nlq.service import create_app
from cityos.settings import SHARED_DIR, Settings

FIXTURE = SHARED_DIR / "nlq" / "fixture.py"

CITIES = [  # as fixture.main() writes them
    {
        "city_id": "cologne",
        "name": "Cologne",
        "local_name": "Köln",
        "timezone": "Europe/Berlin",
        "aqi_standard": "eu_eaqi",
    },
    {
        "city_id": "beijing",
        "name": "Beijing",
        "local_name": "北京",
        "timezone": "Asia/Shanghai",
        "aqi_standard": "china_hj633",
    },
]


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


ALERTS = [  # from the fixture's snapshot at 2016-12-19T23:00Z (README: alerts)
    {
        "alert_id": "AL-0004",
        "kind": "air_quality",
        "severity": "critical",
        "status": "firing",
        "city_id": "beijing",
        "zone_id": None,
        "sensor_id": "beijing-aq-guanyuan",
        "metric": "aqi",
        "threshold": 300.0,
        "message": "AQI above 300 at Guanyuan (severely polluted)",
        "started_at": _utc("2016-12-19T13:00:00Z"),
        "updated_at": _utc("2016-12-19T13:00:00Z"),
        "resolved_at": None,
    },
    {
        "alert_id": "AL-0012",
        "kind": "congestion",
        "severity": "critical",
        "status": "acknowledged",
        "city_id": "cologne",
        "zone_id": "cologne-stt-501",
        "sensor_id": "cologne-tr-06",
        "metric": "congestion_index",
        "threshold": 0.6,
        "message": "Congestion index above 0.6 on cologne-tr-06",
        "started_at": _utc("2016-12-19T16:30:00Z"),
        "updated_at": _utc("2016-12-19T16:42:00Z"),
        "resolved_at": None,
    },
    {
        "alert_id": "AL-0018",
        "kind": "manual",
        "severity": "warning",
        "status": "resolved",
        "city_id": "cologne",
        "zone_id": "cologne-stb-5",
        "sensor_id": None,
        "metric": None,
        "threshold": None,
        "message": "Christmas market traffic expected around Nippes",
        "started_at": _utc("2016-12-18T10:00:00Z"),
        "updated_at": _utc("2016-12-18T15:30:00Z"),
        "resolved_at": _utc("2016-12-18T15:30:00Z"),
    },
    {
        "alert_id": "AL-0019",
        "kind": "manual",
        "severity": "info",
        "status": "firing",
        "city_id": "cologne",
        "zone_id": "cologne-stt-504",
        "sensor_id": None,
        "metric": None,
        "threshold": None,
        "message": "Road works on Niehler Str.: one lane closed until further notice",
        "started_at": _utc("2016-12-19T05:00:00Z"),
        "updated_at": _utc("2016-12-19T05:00:00Z"),
        "resolved_at": None,
    },
]


@cache
def fixture_module() -> ModuleType:
    """The evaluation team's loader, imported by path (it is not a package)."""
    spec = importlib.util.spec_from_file_location("nlq_fixture", FIXTURE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def serving_rows() -> dict[str, list[dict[str, Any]]]:
    """The fixture's cities, zones, intersections and signal phases, plus ALERTS (built once)."""
    fixture = fixture_module()
    zones = fixture.build_zones()
    intersections, phases, _, _ = fixture.build_signals(zones)
    zone_rows = [
        {**z, "geometry": fixture.geojson_text(z["geom"]), "area_km2": round(z["area_km2"], 4)}
        for z in zones
    ]
    return {
        "cities": CITIES,
        "zones": zone_rows,
        "intersections": intersections,
        "signal_phases": phases,
        "alerts": ALERTS,
    }


def load_serving_tables(database_url: str, schema: str) -> None:
    """Copy the serving rows into ``schema``'s tables (made by the migrations)."""
    columns = fixture_module().COLUMNS
    rows = serving_rows()
    with connect(database_url, schema) as conn, conn.cursor() as cur:
        for table in ("cities", "zones", "intersections", "signal_phases", "alerts"):
            names = columns[table]
            with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                for row in rows[table]:
                    copy.write_row([row.get(name) for name in names])


class ScriptedAnswerer:
    """The test's language understanding: a reply (or an exception) per question, recorded."""

    def __init__(self, replies: dict[str, Reply | Exception] | None = None) -> None:
        self.replies = dict(replies or {})
        self.asked: list[tuple[str, datetime]] = []

    def ask(self, question: str, as_of: datetime) -> Reply:
        self.asked.append((question, as_of))
        reply = self.replies.get(question)
        if isinstance(reply, Exception):
            raise reply
        if reply is None:
            return Clarification(answer="Which place do you mean?", options=["Nippes", "Ehrenfeld"])
        return reply


def signal_draft(intersection_id: str, phase_index: Any, green_s: Any, **extra: Any) -> ActionDraft:
    return ActionDraft(
        kind="signal_timing",
        target={"intersection_id": intersection_id},
        params={"phase_index": phase_index, "green_s": green_s, **extra},
        summary=f"phase {phase_index} at {intersection_id}: {green_s} s of green",
        question=f"set phase {phase_index} at {intersection_id} to {green_s} s",
    )


def alert_draft(operation: str, **target_and_params: Any) -> ActionDraft:
    target = {k: v for k, v in target_and_params.items() if k in ("alert_id", "zone_id")}
    params = {k: v for k, v in target_and_params.items() if k not in target}
    return ActionDraft(
        kind="alert",
        target=target,
        params={"operation": operation, **params},
        summary=f"{operation} {target}",
        question=f"{operation} {target}",
    )


class Tokens:
    """Creates tokens in the test schema: ``tokens.new("operator", "alice")`` -> the token."""

    def __init__(self, database_url: str, schema: str) -> None:
        self.database_url = database_url
        self.schema = schema
        self.principals: dict[str, Principal] = {}

    def new(self, role: str, name: str) -> str:
        with connect(self.database_url, self.schema) as conn:
            token, info = create_token(conn, name, role)
        self.principals[name] = Principal(name=info.name, role=info.role, token_id=info.token_id)
        return token

    def header(self, role: str, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.new(role, name)}"}


def rows(database_url: str, schema: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with connect(database_url, schema) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


# ---- fixtures (import them into a test module by name) -----------------------------------------


@pytest.fixture
def service_settings(settings: Settings, pg_schema: str, database_url: str) -> Settings:
    """Settings of the test stack on this test's schema, which holds the serving rows."""
    load_serving_tables(database_url, pg_schema)
    return settings.model_copy(update={"database_schema": pg_schema})


@pytest.fixture
def tokens(database_url: str, pg_schema: str) -> Tokens:
    return Tokens(database_url, pg_schema)


@pytest.fixture
def answerer() -> ScriptedAnswerer:
    return ScriptedAnswerer()


@pytest.fixture
def client(service_settings: Settings, answerer: ScriptedAnswerer) -> Iterator[TestClient]:
    """The service on this test's schema with the scripted answerer."""
    with TestClient(create_app(service_settings, answerer=answerer)) as test_client:
        yield test_client
