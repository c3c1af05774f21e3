"""Write cities, zones, sensors and intersections to the serving tables; read zones back.

Every writer is an upsert on the table's primary key that touches a row only when a value
changed, so loading the same city twice changes nothing, and it reports what it did. The
caller owns the connection; each writer runs in one transaction (a savepoint when the caller
already has one open).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import psycopg
import shapely
from psycopg import sql

from cityos.geo.errors import GeoError, PointError
from cityos.geo.index import ZoneIndex, check_lonlat
from cityos.geo.zones import WGS84, ZONE_COLUMNS, CityGeo, geojson_text

log = logging.getLogger(__name__)

CITY_COLUMNS = ["city_id", "name", "local_name", "timezone", "aqi_standard"]
COORD_DECIMALS = 7


@dataclass(frozen=True)
class PointTable:
    """A serving table of located things: its key, the columns a row must / may give."""

    key: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return [self.key, *self.required, *self.optional, "zone_id"]


POINT_TABLES: dict[str, PointTable] = {
    "sensors": PointTable(
        key="sensor_id",
        required=("city_id", "kind", "name", "latitude", "longitude"),
        optional=("road_name", "intersection_id"),
    ),
    "intersections": PointTable(
        key="intersection_id", required=("city_id", "name", "latitude", "longitude")
    ),
}


@dataclass(frozen=True)
class WriteSummary:
    """What an upsert did: rows new, rows changed, rows already as given."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    def __add__(self, other: WriteSummary) -> WriteSummary:
        return WriteSummary(
            self.inserted + other.inserted,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
        )


def _upsert(table: str, key: str, columns: Sequence[str]) -> sql.Composed:
    """INSERT .. ON CONFLICT (key) DO UPDATE .. only when a value differs; RETURNING inserted."""
    others = [c for c in columns if c != key]
    target = sql.SQL(", ").join(sql.Identifier("t", c) for c in others)
    excluded = sql.SQL(", ").join(sql.Identifier("excluded", c) for c in others)
    return sql.SQL(
        "INSERT INTO {table} AS t ({cols}) VALUES ({values}) "
        "ON CONFLICT ({key}) DO UPDATE SET {sets} "
        "WHERE ({target}) IS DISTINCT FROM ({excluded}) "
        "RETURNING (xmax = 0) AS inserted"
    ).format(
        table=sql.Identifier(table),
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        key=sql.Identifier(key),
        sets=sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("excluded", c))
            for c in others
        ),
        target=target,
        excluded=excluded,
    )


def _write_rows(
    conn: psycopg.Connection[Any],
    table: str,
    key: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
) -> WriteSummary:
    query = _upsert(table, key, columns)
    inserted = updated = unchanged = 0
    with conn.cursor() as cur:
        for row in rows:
            cur.execute(query, row)
            result = cur.fetchone()
            if result is None:
                unchanged += 1
            elif result[0]:
                inserted += 1
            else:
                updated += 1
    return WriteSummary(inserted, updated, unchanged)


def write_city(conn: psycopg.Connection[Any], city: CityGeo) -> WriteSummary:
    """Upsert the city's row and its zones (parents before children) in one transaction.

    Zones of the city that are in the database but no longer in the spec are kept (sensors
    may refer to them) and logged as a warning.
    """
    c = city.city
    city_row = [c.city_id, c.name, c.local_name, c.timezone, c.aqi_standard]
    columns = [*ZONE_COLUMNS, "geometry"]
    zone_rows = (
        [*(None if _missing(v) else v for v in row[:-1]), geojson_text(row[-1])]
        for row in city.zones[columns].itertuples(index=False, name=None)
    )
    with conn.transaction():
        summary = _write_rows(conn, "cities", "city_id", CITY_COLUMNS, [city_row])
        summary += _write_rows(conn, "zones", "zone_id", columns, zone_rows)
        stale = conn.execute(
            "SELECT zone_id FROM zones WHERE city_id = %s AND NOT zone_id = ANY(%s)"
            " ORDER BY zone_id",
            (c.city_id, city.zones["zone_id"].tolist()),
        ).fetchall()
    if stale:
        log.warning(
            "%s: %d zones in the database are not in the spec (kept): %s",
            c.city_id,
            len(stale),
            ", ".join(r[0] for r in stale[:10]),
        )
    log.info(
        "%s: wrote city and %d zones (%d new, %d changed, %d unchanged)",
        c.city_id,
        len(city.zones),
        summary.inserted,
        summary.updated,
        summary.unchanged,
    )
    return summary


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def read_zones(conn: psycopg.Connection[Any], city_id: str | None = None) -> gpd.GeoDataFrame:
    """Zones from the database (one city, or all) as a GeoDataFrame in EPSG:4326.

    ``ZoneIndex(read_zones(conn, 'cologne'))`` answers exactly like the index of the loaded
    files, because the stored geometry is the rounded geometry the loader indexes.
    """
    query = "SELECT zone_id, city_id, name, local_name, level, parent_zone_id, area_km2, geometry"
    query += " FROM zones"
    params: tuple[str, ...] = ()
    if city_id is not None:
        query += " WHERE city_id = %s"
        params = (city_id,)
    rows = conn.execute(query + " ORDER BY zone_id", params).fetchall()
    records = [dict(zip(ZONE_COLUMNS, row[:-1], strict=True)) for row in rows]
    geoms = [shapely.geometry.shape(json.loads(row[-1])) for row in rows]
    return gpd.GeoDataFrame(records, columns=ZONE_COLUMNS, geometry=geoms, crs=WGS84)


def register_points(
    conn: psycopg.Connection[Any],
    table: str,
    rows: Iterable[Mapping[str, Any]],
    zones: ZoneIndex,
) -> WriteSummary:
    """Upsert sensors or intersections given as dicts, attaching each one's smallest zone.

    ``table`` is 'sensors' or 'intersections'; each row has the table's columns (see
    POINT_TABLES; ``latitude``/``longitude`` in WGS-84). A row's own ``zone_id`` wins over the
    look-up (for a point the operator placed by hand); otherwise it is ``zones.smallest_zone``,
    None outside every zone. Unknown columns, missing columns and bad coordinates raise
    PointError before anything is written. Coordinates are stored rounded to 7 decimals.
    """
    if table not in POINT_TABLES:
        raise PointError(table, None, f"not a point table; use one of {sorted(POINT_TABLES)}")
    spec = POINT_TABLES[table]
    allowed = set(spec.columns)
    values: list[list[object]] = []
    for row in rows:
        missing = [c for c in (spec.key, *spec.required) if _missing(row.get(c))]
        unknown = sorted(set(row) - allowed)
        if missing or unknown:
            problem = f"missing {missing}" if missing else f"unknown columns {unknown}"
            raise PointError(table, row, problem)
        if zones.city_ids and row["city_id"] not in zones.city_ids:
            raise PointError(
                table, row, f"city {row['city_id']!r} is not in the zone index's cities"
            )
        lon, lat = _coordinate(table, row, "longitude"), _coordinate(table, row, "latitude")
        try:
            check_lonlat(lon, lat)
        except GeoError as err:
            raise PointError(table, row, str(err)) from err
        zone_id = row.get("zone_id") or zones.smallest_zone(lon, lat)
        full = {
            **row,
            "latitude": round(lat, COORD_DECIMALS),
            "longitude": round(lon, COORD_DECIMALS),
            "zone_id": zone_id,
        }
        values.append([full.get(c) for c in spec.columns])
    with conn.transaction():
        summary = _write_rows(conn, table, spec.key, spec.columns, values)
    log.info(
        "%s: %d new, %d changed, %d unchanged",
        table,
        summary.inserted,
        summary.updated,
        summary.unchanged,
    )
    return summary


def _coordinate(table: str, row: Mapping[str, Any], column: str) -> float:
    """A row's coordinate as float; PointError naming the column when it is not a number (a
    decimal comma, as German CSV files write them, is refused rather than guessed at)."""
    value = row[column]
    if not isinstance(value, bool):  # float(True) is 1.0: a flag, not a coordinate
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise PointError(table, row, f"{column} {value!r} is not a number")


def register_sensors(
    conn: psycopg.Connection[Any], rows: Iterable[Mapping[str, Any]], zones: ZoneIndex
) -> WriteSummary:
    """``register_points(conn, 'sensors', rows, zones)``."""
    return register_points(conn, "sensors", rows, zones)


def register_intersections(
    conn: psycopg.Connection[Any], rows: Iterable[Mapping[str, Any]], zones: ZoneIndex
) -> WriteSummary:
    """``register_points(conn, 'intersections', rows, zones)``."""
    return register_points(conn, "intersections", rows, zones)
