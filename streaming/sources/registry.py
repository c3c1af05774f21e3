"""Register what the sources publish about: cities, intersections, signal phases, sensors.

Zones and the city rows come from the geo library (``write_city``); sensors and intersections go
through geo's ``register_*`` upserts, which attach each point's smallest zone. Signal phases and
the sensors' speed limits (the congestion index needs them; no contract column holds them) are
upserted here. Every writer is idempotent: registering twice changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from cityos.geo import CityGeo, city_spec_path, load_city, register_intersections, register_sensors
from cityos.geo import write_city as geo_write_city

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SensorRow:
    """A sensors row (zone_id is filled in by geo) plus the speed limit where one applies."""

    sensor_id: str
    city_id: str
    kind: str
    name: str
    latitude: float
    longitude: float
    road_name: str | None = None
    intersection_id: str | None = None
    speed_limit_kmh: float | None = None

    def serving(self) -> dict[str, Any]:
        row = {k: v for k, v in self.__dict__.items() if k != "speed_limit_kmh"}
        return {k: v for k, v in row.items() if v is not None}


def open_city(city_id: str, data_dir: Path, *, streets: bool = False) -> CityGeo:
    """The geo library's view of a shipped city (zones; streets when asked)."""
    return load_city(city_spec_path(city_id), data_dir, streets=streets)


def write_city(conn: psycopg.Connection[Any], city: CityGeo) -> None:
    """Upsert the city row and its zones."""
    geo_write_city(conn, city)


def write_sensors(conn: psycopg.Connection[Any], city: CityGeo, rows: Iterable[SensorRow]) -> int:
    rows = list(rows)
    register_sensors(conn, [r.serving() for r in rows], city.zone_index())
    limits = [(r.sensor_id, r.speed_limit_kmh) for r in rows if r.speed_limit_kmh is not None]
    if limits:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sensor_speed_limits (sensor_id, speed_limit_kmh) VALUES (%s, %s) "
                "ON CONFLICT (sensor_id) DO UPDATE SET speed_limit_kmh = excluded.speed_limit_kmh",
                limits,
            )
    return len(rows)


def write_intersections(conn: psycopg.Connection[Any], city: CityGeo, layout: Any) -> int:
    """Intersections and their green phases (the plan of the layout) for a twin layout."""
    register_intersections(
        conn,
        [
            {
                "intersection_id": s.tls_id,
                "city_id": layout.city_id,
                "name": s.name,
                "latitude": s.lat,
                "longitude": s.lon,
            }
            for s in layout.signals
        ],
        city.zone_index(),
    )
    with conn.transaction(), conn.cursor() as cur:
        for s in layout.signals:
            cur.executemany(
                "INSERT INTO signal_phases (intersection_id, phase_index, description, green_s,"
                " intergreen_s, min_green_s, max_green_s) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (intersection_id, phase_index) DO UPDATE SET"
                " description = excluded.description,"
                # the plan in force survives a re-registration (applied changes stand) as long
                # as it fits the phase's limits; the controller is then brought to it
                " green_s = CASE WHEN signal_phases.green_s BETWEEN excluded.min_green_s"
                " AND excluded.max_green_s THEN signal_phases.green_s ELSE excluded.green_s END,"
                " intergreen_s = excluded.intergreen_s, min_green_s = excluded.min_green_s,"
                " max_green_s = excluded.max_green_s",
                [
                    (
                        s.tls_id,
                        p.index,
                        p.description,
                        p.green_s,
                        p.intergreen_s,
                        p.min_green_s,
                        p.max_green_s,
                    )
                    for p in s.phases
                ],
            )
            cur.execute(
                "DELETE FROM signal_phases WHERE intersection_id = %s AND phase_index >= %s",
                (s.tls_id, len(s.phases)),
            )
    return len(layout.signals)


def twin_sensor_rows(layout: Any, stations: Iterable[Any]) -> list[SensorRow]:
    """Approach sensors (traffic) and virtual stations (air quality and noise) of a twin."""
    rows = [
        SensorRow(
            ap.sensor_id,
            layout.city_id,
            "traffic",
            ap.name,
            ap.lat,
            ap.lon,
            road_name=ap.street,
            intersection_id=ap.tls_id,
            speed_limit_kmh=round(ap.speed_limit_kmh, 2),
        )
        for ap in layout.approaches
    ]
    rows += [
        SensorRow(st.sensor_id, layout.city_id, "air_quality", st.name, st.lat, st.lon)
        for st in stations
    ]
    return rows


def register_twin(
    conn: psycopg.Connection[Any], city: CityGeo, layout: Any, stations: Iterable[Any]
) -> dict[str, int]:
    """City, zones, intersections, phases and sensors of a twin, all upserted."""
    write_city(conn, city)
    counts = {"intersections": write_intersections(conn, city, layout)}
    counts["sensors"] = write_sensors(conn, city, twin_sensor_rows(layout, stations))
    log.info("registered twin of %s: %s", layout.city_id, counts)
    return counts
