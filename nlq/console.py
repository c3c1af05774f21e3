"""The operator console: one static page the service serves, and the map data it draws.

``mount(app, settings)`` adds to the service's FastAPI app:

- ``GET /``: the console page (``console/index.html``); its script and style under ``/console/``.
  Nothing is fetched from outside the service (no CDN, no map tiles): the page draws its charts
  and maps itself, as SVG.
- ``GET /api/v1/geo``: the zones, sensors and intersections named in an answer's ``places``, as
  a GeoJSON FeatureCollection (EPSG:4326) read from the serving tables. Any role may call it.

Feature properties: ``kind`` ('zone' | 'sensor' | 'intersection'), ``id``, ``name``, ``role``
('place' for what was asked for, 'context' for the zone a point lies in, drawn underneath), and
``level`` for zones. Ids that name nothing are listed in the collection's ``missing`` member.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from cityos.db import connect
from cityos.nlq.auth import require_role
from cityos.settings import Settings

log = logging.getLogger(__name__)

CONSOLE_DIR = Path(__file__).with_name("console")
MAX_IDS = 200  # per request, all kinds together: more than any answer names
MAX_ID_LENGTH = 200
IdList = Annotated[list[str], Query()]  # ?zone_id=a&zone_id=b

# The page may load only what this service serves; data never becomes markup (see console.js).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class _Query:
    """One kind of place: the SQL that finds rows by id, and how a row becomes a feature."""

    kind: str
    sql: str


# Each query returns (id, name, level, geometry_text, longitude, latitude, context_zone_id).
_ZONES = _Query(
    "zone",
    "SELECT zone_id, name, level, geometry, NULL, NULL, NULL FROM zones WHERE zone_id = ANY(%s)",
)
_CITY_DISTRICTS = _Query(
    "zone",
    "SELECT zone_id, name, level, geometry, NULL, NULL, NULL FROM zones"
    " WHERE city_id = ANY(%s) AND level = 'district'",
)
_SENSORS = _Query(
    "sensor",
    "SELECT sensor_id, name, kind, NULL, longitude, latitude, zone_id FROM sensors"
    " WHERE sensor_id = ANY(%s)",
)
_STREET_SENSORS = _Query(
    "sensor",
    "SELECT sensor_id, name, kind, NULL, longitude, latitude, NULL FROM sensors"
    " WHERE road_name = ANY(%s)",
)
_INTERSECTIONS = _Query(
    "intersection",
    "SELECT intersection_id, name, NULL, NULL, longitude, latitude, zone_id FROM intersections"
    " WHERE intersection_id = ANY(%s)",
)


def _feature(kind: str, row: tuple[Any, ...], role: str) -> dict[str, Any] | None:
    place_id, name, level, geometry, longitude, latitude, _ = row
    properties: dict[str, Any] = {"kind": kind, "id": place_id, "name": name, "role": role}
    if kind == "zone":
        properties["level"] = level
        try:
            shape = json.loads(geometry)
        except (TypeError, ValueError):
            log.warning("zone %s has no readable GeoJSON geometry", place_id)
            return None
    else:
        if kind == "sensor":
            properties["sensor_kind"] = level
        shape = {"type": "Point", "coordinates": [longitude, latitude]}
    return {
        "type": "Feature",
        "id": f"{kind}:{place_id}",
        "geometry": shape,
        "properties": properties,
    }


def read_places(
    conn: psycopg.Connection,
    *,
    zone_ids: list[str],
    sensor_ids: list[str],
    intersection_ids: list[str],
    city_ids: list[str],
    streets: list[str],
) -> dict[str, Any]:
    """The FeatureCollection of those places, context zones first so points draw on top."""
    places: list[dict[str, Any]] = []
    context_zone_ids: set[str] = set()
    found: set[tuple[str, str]] = set()
    lookups = [
        (_ZONES, zone_ids),
        (_CITY_DISTRICTS, city_ids),
        (_SENSORS, sensor_ids),
        (_STREET_SENSORS, streets),
        (_INTERSECTIONS, intersection_ids),
    ]
    for query, ids in lookups:
        if not ids:
            continue
        for row in conn.execute(query.sql, (ids,)).fetchall():  # type: ignore[arg-type]
            feature = _feature(query.kind, row, "place")
            if feature is None or (query.kind, row[0]) in found:
                continue
            found.add((query.kind, row[0]))
            places.append(feature)
            if row[6]:
                context_zone_ids.add(row[6])
    context_zone_ids -= {place_id for kind, place_id in found if kind == "zone"}
    context = []
    if context_zone_ids:
        rows = conn.execute(_ZONES.sql, (sorted(context_zone_ids),)).fetchall()
        context = [f for row in rows if (f := _feature("zone", row, "context")) is not None]
    missing = [
        {"kind": kind, "id": place_id}
        for kind, ids in (
            ("zone", zone_ids),
            ("sensor", sensor_ids),
            ("intersection", intersection_ids),
        )
        for place_id in ids
        if (kind, place_id) not in found
    ]
    return {"type": "FeatureCollection", "features": context + places, "missing": missing}


def _ids(values: list[str]) -> list[str]:
    unique = list(dict.fromkeys(v.strip() for v in values if v.strip()))
    for value in unique:
        if len(value) > MAX_ID_LENGTH:
            raise HTTPException(400, f"an id is longer than {MAX_ID_LENGTH} characters")
    return unique


def _connection(request: Request, settings: Settings) -> AbstractContextManager[psycopg.Connection]:
    """The service's pooled connection when it has a pool, else one of our own."""
    pool = getattr(request.app.state, "pool", None)
    if pool is not None:
        return pool.connection()  # type: ignore[no-any-return]
    return connect(settings.database_url.get_secret_value(), settings.database_schema)


def geo_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["console"])

    @router.get(
        "/geo",
        dependencies=[Depends(require_role("viewer"))],
        summary="Places as GeoJSON for the console's map",
    )
    def geo(
        request: Request,
        zone_id: IdList = [],  # noqa: B006 (FastAPI copies query defaults)
        sensor_id: IdList = [],  # noqa: B006
        intersection_id: IdList = [],  # noqa: B006
        city_id: IdList = [],  # noqa: B006
        street: IdList = [],  # noqa: B006
    ) -> dict[str, Any]:
        """Zones (polygons), sensors and intersections (points) by id, in EPSG:4326.

        ``city_id`` stands for the city's districts; ``street`` for the sensors on that road.
        """
        asked = {
            "zone_ids": _ids(zone_id),
            "sensor_ids": _ids(sensor_id),
            "intersection_ids": _ids(intersection_id),
            "city_ids": _ids(city_id),
            "streets": _ids(street),
        }
        if sum(len(ids) for ids in asked.values()) > MAX_IDS:
            raise HTTPException(400, f"at most {MAX_IDS} places per request")
        try:
            with _connection(request, settings) as conn:
                return read_places(conn, **asked)
        except psycopg.OperationalError as err:
            log.warning("geo: serving database unavailable: %s", err)
            raise HTTPException(503, "the serving database is not reachable") from err

    return router


def mount(app: FastAPI, settings: Settings) -> None:
    """Serve the console at ``/`` (assets under ``/console/``) and its map data route."""
    index = CONSOLE_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    def console_page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/console", StaticFiles(directory=CONSOLE_DIR), name="console")
    app.include_router(geo_router(settings))
