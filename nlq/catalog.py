"""What the service knows about the loaded cities, read from the serving tables.

The gazetteer (names -> ids) plus the facts the interpreter needs to turn a name into a scope:
each city's time zone, each sensor's kind, zone, street and intersection, the zone tree. Signal
phases and alerts change while the service runs, so they are read live (``phases``,
``open_alerts``); the rest is re-read when older than ``max_age_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cityos.nlq.gazetteer import Gazetteer, fold

Connect = Callable[[], Any]  # returns a psycopg connection (context manager)


@dataclass(frozen=True)
class Sensor:
    sensor_id: str
    city_id: str
    kind: str  # 'traffic' | 'air_quality'
    name: str
    zone_id: str | None
    road_name: str | None
    intersection_id: str | None


@dataclass(frozen=True)
class Zone:
    zone_id: str
    city_id: str
    name: str
    level: str
    parent_zone_id: str | None


@dataclass(frozen=True)
class Phase:
    intersection_id: str
    phase_index: int
    description: str
    green_s: float
    intergreen_s: float
    min_green_s: float
    max_green_s: float


class Catalog:
    def __init__(self, connect: Connect, max_age_s: float = 60.0) -> None:
        self._connect = connect
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._loaded_at = -1e18
        self.refresh()

    def refresh(self) -> None:
        with self._connect() as conn:
            gazetteer = Gazetteer.from_connection(conn)
            cities = _rows(conn, "SELECT city_id, name, timezone, aqi_standard FROM cities")
            sensors = _rows(
                conn,
                "SELECT sensor_id, city_id, kind, name, zone_id, road_name, intersection_id "
                "FROM sensors",
            )
            zones = _rows(conn, "SELECT zone_id, city_id, name, level, parent_zone_id FROM zones")
            inters = _rows(
                conn, "SELECT intersection_id, city_id, name, zone_id FROM intersections"
            )
        self.gazetteer = gazetteer
        self.cities = {c["city_id"]: c for c in cities}
        self.sensors = {s["sensor_id"]: Sensor(**s) for s in sensors}
        self.zones = {z["zone_id"]: Zone(**z) for z in zones}
        self.intersections = {i["intersection_id"]: i for i in inters}
        self._loaded_at = time.monotonic()

    def fresh(self) -> Catalog:
        with self._lock:
            if time.monotonic() - self._loaded_at > self._max_age_s:
                self.refresh()
        return self

    # --- facts ---------------------------------------------------------------------------------

    def timezone(self, city_id: str) -> str:
        return str(self.cities[city_id]["timezone"])

    def city_of(self, kind: str, id_: str) -> str | None:
        if kind == "city":
            return id_
        if kind == "zone":
            return self.zones[id_].city_id if id_ in self.zones else None
        if kind == "sensor":
            return self.sensors[id_].city_id if id_ in self.sensors else None
        if kind == "intersection":
            row = self.intersections.get(id_)
            return row["city_id"] if row else None
        if kind == "street":
            cities = {s.city_id for s in self.sensors.values() if s.road_name == id_}
            return next(iter(cities)) if len(cities) == 1 else None
        return None

    def cities_with(self, sensor_kind: str) -> list[str]:
        return sorted({s.city_id for s in self.sensors.values() if s.kind == sensor_kind})

    def zone_tree(self, zone_id: str) -> set[str]:
        """The zone and every zone below it."""
        out, frontier = {zone_id}, [zone_id]
        while frontier:
            parent = frontier.pop()
            for z in self.zones.values():
                if z.parent_zone_id == parent and z.zone_id not in out:
                    out.add(z.zone_id)
                    frontier.append(z.zone_id)
        return out

    def sensors_in(self, kind: str, id_: str, sensor_kind: str | None = None) -> set[str]:
        """The sensors a place stands for (the scope a reading of a name would select)."""

        def keep(s: Sensor) -> bool:
            return sensor_kind is None or s.kind == sensor_kind

        if kind == "sensor":
            return {id_} if id_ in self.sensors and keep(self.sensors[id_]) else set()
        if kind == "zone":
            tree = self.zone_tree(id_)
            return {s.sensor_id for s in self.sensors.values() if s.zone_id in tree and keep(s)}
        if kind == "city":
            return {s.sensor_id for s in self.sensors.values() if s.city_id == id_ and keep(s)}
        if kind == "intersection":
            return {
                s.sensor_id for s in self.sensors.values() if s.intersection_id == id_ and keep(s)
            }
        if kind == "street":
            return {s.sensor_id for s in self.sensors.values() if s.road_name == id_ and keep(s)}
        return set()

    def intersections_on(self, *streets: str) -> list[str]:
        """Intersections whose name contains every one of these streets (folded)."""
        keys = [fold(s) for s in streets]
        out = []
        for iid, row in self.intersections.items():
            parts = [fold(p) for p in str(row["name"]).split("/")]
            if all(any(k == p or k in p for p in parts) for k in keys):
                out.append(iid)
        return sorted(out)

    # --- live ----------------------------------------------------------------------------------

    def phases(self, intersection_id: str) -> list[Phase]:
        with self._connect() as conn:
            rows = _rows(
                conn,
                "SELECT intersection_id, phase_index, description, green_s, intergreen_s, "
                "min_green_s, max_green_s FROM signal_phases WHERE intersection_id = %s "
                "ORDER BY phase_index",
                (intersection_id,),
            )
        return [Phase(**r) for r in rows]

    def alerts(self, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        with self._connect() as conn:
            return _rows(
                conn,
                "SELECT alert_id, kind, severity, status, city_id, zone_id, sensor_id, "
                "intersection_id, metric, message, started_at FROM alerts "
                "WHERE status = ANY(%s) ORDER BY started_at DESC",
                (list(statuses),),
            )


def _rows(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())
