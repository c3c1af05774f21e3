"""Point look-ups: which zone a point lies in, which streets it lies on.

Both indexes take longitude/latitude in EPSG:4326 (WGS-84 degrees, longitude first, like GeoJSON)
and answer from an STRtree, so a look-up costs microseconds once the index is built.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import geopandas as gpd
import numpy as np
import pyproj
import shapely

from cityos.geo.errors import GeoError

WGS84 = "EPSG:4326"


def check_lonlat(lon: float, lat: float) -> None:
    """GeoError for coordinates that are not finite WGS-84 degrees (a swapped pair often is)."""
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise GeoError(f"not a WGS-84 longitude/latitude: lon={lon!r} lat={lat!r}")


class ZoneIndex:
    """The smallest zone containing a point, among zones given as a GeoDataFrame.

    ``zones`` needs ``zone_id``, ``area_km2`` and polygon ``geometry`` (EPSG:4326; a frame
    without CRS is taken as EPSG:4326); ``levels`` keeps only zones of those levels.

    A point on a border is inside both zones (``covers``), so it goes to the smaller one; equal
    areas fall back to the smaller zone_id. The answer never depends on input order.
    """

    def __init__(self, zones: gpd.GeoDataFrame, levels: Iterable[str] | None = None) -> None:
        if zones.crs is not None and zones.crs != WGS84:
            zones = zones.to_crs(WGS84)
        if levels is not None:
            zones = zones[zones["level"].isin(list(levels))]
        ordered = zones.sort_values(["area_km2", "zone_id"], kind="stable")
        self._ids: list[str] = ordered["zone_id"].tolist()
        self._geoms = np.asarray(ordered.geometry.values)
        shapely.prepare(self._geoms)
        self._tree = shapely.STRtree(self._geoms)
        self.city_ids: frozenset[str] = (
            frozenset(ordered["city_id"]) if "city_id" in ordered.columns else frozenset()
        )

    def __len__(self) -> int:
        return len(self._ids)

    def zones_at(self, lon: float, lat: float) -> list[str]:
        """Every zone covering the point, smallest first (a subdistrict, its district, ...)."""
        check_lonlat(lon, lat)
        hits = self._tree.query(shapely.Point(lon, lat), predicate="covered_by")
        return [self._ids[i] for i in sorted(hits)]

    def smallest_zone(self, lon: float, lat: float) -> str | None:
        """The smallest zone covering the point, or None outside every zone."""
        check_lonlat(lon, lat)
        hits = self._tree.query(shapely.Point(lon, lat), predicate="covered_by")
        return self._ids[int(hits.min())] if len(hits) else None

    def smallest_zones(self, lons: Sequence[float], lats: Sequence[float]) -> list[str | None]:
        """:meth:`smallest_zone` for many points at once (one tree query)."""
        for lon, lat in zip(lons, lats, strict=True):
            check_lonlat(lon, lat)
        points = shapely.points(np.asarray(lons, dtype=float), np.asarray(lats, dtype=float))
        point_idx, zone_idx = self._tree.query(points, predicate="covered_by")
        best = np.full(len(points), len(self._ids), dtype=np.int64)
        np.minimum.at(best, point_idx, zone_idx)
        return [self._ids[i] if i < len(self._ids) else None for i in best]


class StreetIndex:
    """Named streets near a point: the gazetteer for sensors and intersections.

    ``streets`` needs ``name`` and line ``geometry`` in any CRS; distances are measured in
    ``metric_crs`` (default: the frame's own CRS, which must then be projected in metres).
    """

    def __init__(self, streets: gpd.GeoDataFrame, metric_crs: str | None = None) -> None:
        if streets.crs is None:
            raise GeoError("the street frame has no CRS")
        crs = pyproj.CRS.from_user_input(metric_crs) if metric_crs else streets.crs
        if not crs.is_projected:
            raise GeoError(f"distances need a projected CRS in metres, not {crs.to_string()}")
        if streets.crs != crs:
            streets = streets.to_crs(crs)
        streets = streets[streets["name"].notna()]
        self._names: list[str] = [str(n) for n in streets["name"]]
        self._geoms = np.asarray(streets.geometry.values)
        self._tree = shapely.STRtree(self._geoms)
        self._to_metric = pyproj.Transformer.from_crs(WGS84, crs, always_xy=True)
        lengths = streets.geometry.length.groupby(streets["name"]).sum()
        self.total_length_m: dict[str, float] = {str(k): float(v) for k, v in lengths.items()}

    def __len__(self) -> int:
        return len(self._names)

    def nearest_streets(
        self, lon: float, lat: float, n: int = 2, max_distance_m: float = 1000.0
    ) -> list[str]:
        """Up to ``n`` distinct street names, nearest first, none farther than max_distance_m.

        Searches a growing radius, so a look-up touches only the streets close by. Equal
        distances are ordered by name.
        """
        check_lonlat(lon, lat)
        if n < 1:
            raise GeoError(f"n must be at least 1, got {n}")
        point = shapely.Point(*self._to_metric.transform(lon, lat))
        radius = min(25.0, max_distance_m)
        while True:
            hits = self._tree.query(point, predicate="dwithin", distance=radius)
            distances = shapely.distance(self._geoms[hits], point)
            ranked = sorted(zip(distances.tolist(), (self._names[i] for i in hits), strict=True))
            names: list[str] = []
            for _, name in ranked:
                if name not in names:
                    names.append(name)
            if len(names) >= n or radius >= max_distance_m:
                return names[:n]
            radius = min(radius * 4, max_distance_m)

    def road_name(self, lon: float, lat: float, max_distance_m: float = 50.0) -> str | None:
        """The street a point lies on (the nearest within max_distance_m), or None."""
        names = self.nearest_streets(lon, lat, n=1, max_distance_m=max_distance_m)
        return names[0] if names else None

    def intersection_name(self, lon: float, lat: float, max_distance_m: float = 100.0) -> str:
        """'Major St. / Minor St.' from the two nearest distinct streets.

        The street with more length in the register comes first (then by name), so the name
        reads the way operators say it: 'Neusser Str. / Wilhelmstr.'.
        """
        names = self.nearest_streets(lon, lat, n=2, max_distance_m=max_distance_m)
        if len(names) < 2:
            raise GeoError(
                f"fewer than two streets within {max_distance_m:g} m of lon={lon} lat={lat}: "
                f"{names}"
            )
        names.sort(key=lambda name: (-self.total_length_m.get(name, 0.0), name))
        return " / ".join(names)
