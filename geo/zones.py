"""Load a city from its spec: the city row, its zones with hierarchy and areas, its streets.

Every zone leaves here in EPSG:4326 (the contract's CRS for geometry), with coordinates rounded
to 7 decimals (about 1 cm) and exterior rings counter-clockwise (RFC 7946). The rounded geometry
is the one indexed, measured and stored, so a ZoneIndex built from the database answers exactly
like one built from the files. Areas are measured in the spec's metric CRS, not in degrees.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyogrio.errors import DataSourceError

from cityos.geo.errors import SpecError
from cityos.geo.index import StreetIndex, ZoneIndex
from cityos.geo.spec import CitySpec, Lookup, StreetLayer, Template, ZoneLayer, read_spec

log = logging.getLogger(__name__)

WGS84 = "EPSG:4326"
DECIMALS = 7  # about 1 cm at any latitude: finer than any of the source surveys
AREA_DECIMALS = 4  # km², i.e. 100 m²
ZONE_COLUMNS = ["zone_id", "city_id", "name", "local_name", "level", "parent_zone_id", "area_km2"]


@dataclass(frozen=True)
class City:
    """A row of the ``cities`` table."""

    city_id: str
    name: str
    local_name: str | None
    timezone: str
    aqi_standard: str


@dataclass(frozen=True, eq=False)
class CityGeo:
    """Everything geo knows about one city, ready to index or to write.

    ``zones`` has ZONE_COLUMNS plus ``geometry`` (EPSG:4326), parents before children.
    ``streets`` has ``name`` plus line ``geometry`` in ``metric_crs``, or is None when the
    spec names no street layer or the caller did not ask for it.
    """

    city: City
    metric_crs: str
    zones: gpd.GeoDataFrame
    streets: gpd.GeoDataFrame | None

    def zone_index(self) -> ZoneIndex:
        """A ZoneIndex over these zones."""
        return ZoneIndex(self.zones)

    def street_index(self) -> StreetIndex:
        """A StreetIndex over these streets; SpecError when the city has none loaded."""
        if self.streets is None:
            raise SpecError(self.city.city_id, "no street layer loaded for this city")
        return StreetIndex(self.streets, self.metric_crs)


def round_geometries(geoms: Any) -> Any:
    """Round coordinates to DECIMALS, keeping polygons valid; exterior rings counter-clockwise.

    Plain rounding can make a ring touch itself where two vertices nearly meet; those few
    polygons go through GEOS snap-rounding (set_precision), which repairs that on the way.
    """

    def rounded(array: Any) -> Any:
        return shapely.transform(array, lambda xy: np.round(xy, DECIMALS))

    geoms = rounded(np.asarray(geoms))
    broken = ~shapely.is_valid(geoms)
    if broken.any():  # snap-rounding is slow, so only where plain rounding broke a ring
        geoms[broken] = rounded(shapely.set_precision(geoms[broken], 10.0**-DECIMALS))
    return shapely.orient_polygons(geoms, exterior_cw=False)


def geojson_text(geom: shapely.Geometry) -> str:
    """Compact GeoJSON text of a (rounded) Polygon or MultiPolygon."""
    return json.dumps(shapely.geometry.mapping(geom), separators=(",", ":"))


def load_city(spec_path: Path | str, data_dir: Path | str, *, streets: bool = True) -> CityGeo:
    """Read a city spec and the files it names (relative to ``data_dir``).

    ``streets=False`` skips the street register when only zones are needed (``cityos geo load``).
    Raises SpecError for a bad spec, a missing file or attribute, or a broken hierarchy.
    """
    spec_path, data_dir = Path(spec_path), Path(data_dir)
    spec = read_spec(spec_path)
    city = City(spec.city_id, spec.name, spec.local_name, spec.timezone, spec.aqi_standard)
    zones = _build_zones(spec, spec_path, data_dir)
    street_frame = None
    if streets and spec.streets is not None:
        street_frame = _read_streets(spec.streets, spec.metric_crs, spec_path, data_dir)
    log.info(
        "%s: %d zones (%s), %s streets",
        spec.city_id,
        len(zones),
        ", ".join(f"{n} {lvl}" for lvl, n in zones["level"].value_counts().sort_index().items()),
        "no" if street_frame is None else len(street_frame),
    )
    return CityGeo(city=city, metric_crs=spec.metric_crs, zones=zones, streets=street_frame)


def _read_layer(
    path: str, crs: str | None, spec_path: Path, data_dir: Path, columns: list[str] | None = None
) -> gpd.GeoDataFrame:
    """A vector file with a known CRS; the spec's ``crs`` overrides what the file says."""
    full = data_dir / path
    if not full.exists():
        raise SpecError(spec_path, f"{full} does not exist (is the data dir {data_dir} right?)")
    try:
        frame = gpd.read_file(full, columns=columns)
    except DataSourceError as err:
        raise SpecError(spec_path, f"cannot read {full}: {err}") from err
    if len(frame) == 0:
        raise SpecError(spec_path, f"{full} has no features")
    if crs is not None:
        frame = frame.set_crs(crs, allow_override=True)
    elif frame.crs is None:
        raise SpecError(spec_path, f"{full} declares no CRS: give the layer a crs = '...'")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    frame = frame.set_geometry(shapely.force_2d(frame.geometry.values))
    return frame


def _zone_frame(layer: ZoneLayer, spec: CitySpec, spec_path: Path, data_dir: Path) -> pd.DataFrame:
    """One layer's zones: contract columns plus EPSG:4326 geometry (parent_within not yet)."""
    frame = _read_layer(layer.path, layer.crs, spec_path, data_dir).to_crs(WGS84)
    kinds = set(frame.geom_type)
    if not kinds <= {"Polygon", "MultiPolygon"}:
        raise SpecError(spec_path, f"{layer.path}: zones must be polygons, found {sorted(kinds)}")
    missing = layer.attribute_fields() - set(frame.columns)
    if missing:
        available = sorted(c for c in frame.columns if c != "geometry")
        raise SpecError(
            spec_path, f"{layer.path} has no attribute {sorted(missing)}; it has {available}"
        )
    invalid = ~frame.geometry.is_valid
    if invalid.any():
        # real survey data has the odd self-intersecting ring; keep only the polygonal repair
        log.info("%s: repairing %d self-intersecting polygons", layer.path, int(invalid.sum()))
        frame.loc[invalid, "geometry"] = shapely.make_valid(
            frame.geometry[invalid].values, method="structure", keep_collapsed=False
        )

    if layer.dissolve:
        geometries = [frame.geometry.union_all()]
        records: list[dict[str, Any]] = [{}]
    else:
        geometries = list(frame.geometry.values)
        records = frame.drop(columns="geometry").to_dict("records")

    rows = []
    for attrs, geom in zip(records, geometries, strict=True):
        rows.append(
            {
                "zone_id": _render(layer.zone_id, attrs, layer, spec_path),
                "city_id": spec.city_id,
                "name": _render(layer.name, attrs, layer, spec_path),
                "local_name": _render(layer.local_name, attrs, layer, spec_path),
                "level": layer.level,
                "parent_zone_id": _render(layer.parent, attrs, layer, spec_path),
                "geometry": geom,
            }
        )
    return pd.DataFrame(rows).sort_values("zone_id", kind="stable")


def _render(
    value: Template | Lookup | None, attrs: dict[str, Any], layer: ZoneLayer, spec_path: Path
) -> str | None:
    if value is None:
        return None
    nulls = [f for f in value.fields() if _is_null(attrs.get(f))]
    if nulls:
        raise SpecError(spec_path, f"{layer.path}: attribute {nulls} is empty in feature {attrs}")
    try:
        return value.render(attrs)
    except ValueError as err:
        raise SpecError(spec_path, f"{layer.path}: {err} (feature {attrs})") from err


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _build_zones(spec: CitySpec, spec_path: Path, data_dir: Path) -> gpd.GeoDataFrame:
    frames: list[gpd.GeoDataFrame] = []
    for layer in spec.zones:
        frame = _zone_frame(layer, spec, spec_path, data_dir)
        frame = gpd.GeoDataFrame(frame, geometry="geometry", crs=WGS84)
        frame["geometry"] = round_geometries(frame.geometry.values)
        if layer.parent_within is not None:
            so_far = pd.concat(frames) if frames else frame.iloc[:0]
            candidates = so_far[so_far["level"] == layer.parent_within]
            if candidates.empty:
                raise SpecError(
                    spec_path,
                    f"{layer.path}: parent_within = '{layer.parent_within}' but no earlier "
                    "layer has zones of that level",
                )
            frame["parent_zone_id"] = _covering_parent(frame, candidates, spec.metric_crs)
        frames.append(frame)

    columns = [*ZONE_COLUMNS[:-1], "geometry"]
    if not frames:
        return gpd.GeoDataFrame(
            pd.DataFrame(columns=[*ZONE_COLUMNS, "geometry"]), geometry="geometry", crs=WGS84
        )
    zones = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True)[columns], crs=WGS84)
    zones["area_km2"] = (zones.geometry.to_crs(spec.metric_crs).area / 1e6).round(AREA_DECIMALS)
    zones = _parents_first(zones, spec_path)
    return zones[[*ZONE_COLUMNS, "geometry"]]


def _covering_parent(
    children: gpd.GeoDataFrame, parents: gpd.GeoDataFrame, metric_crs: str
) -> list[str | None]:
    """For each child, the parent zone sharing the most area with it (None if none overlaps)."""
    child_geoms = children.geometry.to_crs(metric_crs).values
    parent_geoms = parents.geometry.to_crs(metric_crs).values
    parent_ids = parents["zone_id"].tolist()
    tree = shapely.STRtree(parent_geoms)
    result: list[str | None] = []
    for zone_id, geom in zip(children["zone_id"], child_geoms, strict=True):
        hits = tree.query(geom, predicate="intersects")
        overlaps = [(shapely.area(shapely.intersection(geom, parent_geoms[i])), i) for i in hits]
        best = max(overlaps, default=(0.0, -1))
        if best[0] <= 0:
            log.warning("%s lies in no zone of its parent level", zone_id)
            result.append(None)
        else:
            result.append(parent_ids[best[1]])
    return result


def _parents_first(zones: gpd.GeoDataFrame, spec_path: Path) -> gpd.GeoDataFrame:
    """Check the hierarchy (unique ids, known parents, no cycles); order parents first."""
    duplicated = zones["zone_id"][zones["zone_id"].duplicated()].unique().tolist()
    if duplicated:
        raise SpecError(spec_path, f"zone ids repeat: {duplicated[:5]}")
    parent_of = dict(zip(zones["zone_id"], zones["parent_zone_id"], strict=True))
    unknown = sorted({p for p in parent_of.values() if p is not None and p not in parent_of})
    if unknown:
        raise SpecError(spec_path, f"parents that are no zone of this spec: {unknown[:5]}")

    def depth(zone_id: str) -> int:
        seen = [zone_id]
        while (parent := parent_of[seen[-1]]) is not None:
            if parent in seen:
                raise SpecError(spec_path, f"zone hierarchy has a cycle: {' -> '.join(seen)}")
            seen.append(parent)
        return len(seen) - 1

    zones = zones.assign(_depth=[depth(z) for z in zones["zone_id"]])
    zones = zones.sort_values("_depth", kind="stable").drop(columns="_depth")
    return zones.reset_index(drop=True)


def _read_streets(
    layer: StreetLayer, metric_crs: str, spec_path: Path, data_dir: Path
) -> gpd.GeoDataFrame:
    """The street register: one row per line, a non-empty ``name``, in the metric CRS."""
    frame = _read_layer(layer.path, layer.crs, spec_path, data_dir, columns=[layer.name_field])
    if layer.name_field not in frame.columns:
        raise SpecError(spec_path, f"{layer.path} has no attribute {layer.name_field!r}")
    names = frame[layer.name_field].astype("string").str.strip()
    frame = gpd.GeoDataFrame({"name": names}, geometry=frame.geometry.values, crs=frame.crs).to_crs(
        metric_crs
    )
    return frame[frame["name"].notna() & (frame["name"] != "")].reset_index(drop=True)
