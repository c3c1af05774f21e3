"""load_city on the real Cologne and Beijing files: ids, names, hierarchy, areas, CRS."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import shapely

from cityos.geo import CityGeo, available_cities, city_spec_path, geojson_text, load_city

CATHEDRAL = (6.9583, 50.9413)  # Kölner Dom, WGS-84


def test_shipped_cities() -> None:
    assert available_cities() == ["beijing", "cologne", "los-angeles"]


def test_cologne_city_row(cologne: CityGeo) -> None:
    c = cologne.city
    assert (c.city_id, c.name, c.local_name, c.timezone, c.aqi_standard) == (
        "cologne",
        "Cologne",
        "Köln",
        "Europe/Berlin",
        "eu_eaqi",
    )


def test_cologne_levels_and_ids(cologne: CityGeo) -> None:
    zones = cologne.zones
    assert zones["level"].value_counts().to_dict() == {
        "subdistrict": 86,
        "district": 9,
        "special": 1,
    }
    districts = zones[zones["level"] == "district"]
    assert sorted(districts["zone_id"]) == [f"cologne-stb-{n}" for n in range(1, 10)]
    assert dict(zip(districts["zone_id"], districts["name"], strict=True))["cologne-stb-9"] == (
        "Mülheim"
    )
    subdistricts = zones[zones["level"] == "subdistrict"]
    assert all(re.fullmatch(r"cologne-stt-\d{3}", z) for z in subdistricts["zone_id"])
    assert zones["zone_id"].is_unique
    assert (zones["city_id"] == "cologne").all()


def test_every_subdistrict_has_its_district_as_parent(cologne: CityGeo) -> None:
    zones = cologne.zones
    district_ids = set(zones.loc[zones["level"] == "district", "zone_id"])
    subdistricts = zones[zones["level"] == "subdistrict"]
    for zone_id, parent in zip(
        subdistricts["zone_id"], subdistricts["parent_zone_id"], strict=True
    ):
        assert parent in district_ids
        assert parent == f"cologne-stb-{zone_id.removeprefix('cologne-stt-')[0]}"
    assert zones.loc[zones["level"] != "subdistrict", "parent_zone_id"].isna().all()


def test_parents_come_before_children(cologne: CityGeo) -> None:
    position = {z: i for i, z in enumerate(cologne.zones["zone_id"])}
    for zone_id, parent in zip(
        cologne.zones["zone_id"], cologne.zones["parent_zone_id"], strict=True
    ):
        if parent is not None:
            assert position[parent] < position[zone_id]


def test_subdistricts_lie_in_their_district(cologne: CityGeo) -> None:
    """A wrong reprojection of the shapefile (false easting!) would put them elsewhere."""
    zones = cologne.zones.set_index("zone_id")
    for zone_id, row in zones[zones["level"] == "subdistrict"].iterrows():
        inside = row.geometry.representative_point()
        assert zones.loc[row["parent_zone_id"]].geometry.covers(inside), zone_id


def test_low_emission_zone_is_one_special_zone(cologne: CityGeo) -> None:
    lez = cologne.zones[cologne.zones["zone_id"] == "cologne-lez"].iloc[0]
    assert (lez["level"], lez["name"], lez["local_name"]) == (
        "special",
        "Low-emission zone",
        "Umweltzone",
    )
    assert lez["parent_zone_id"] is None
    assert 95 < lez["area_km2"] < 110  # six polygons, ~101 km² together


def test_cologne_areas(cologne: CityGeo) -> None:
    by_level = cologne.zones.groupby("level")["area_km2"].sum()
    assert by_level["district"] == pytest.approx(405, abs=2)  # the city: 405.0 km²
    assert by_level["subdistrict"] == pytest.approx(by_level["district"], abs=0.1)
    innenstadt = cologne.zones.set_index("zone_id").loc["cologne-stb-1", "area_km2"]
    assert innenstadt == pytest.approx(16.4, abs=0.2)


def test_geometry_is_rounded_ccw_wgs84_geojson(cologne: CityGeo) -> None:
    assert cologne.zones.crs == "EPSG:4326"
    minx, miny, maxx, maxy = cologne.zones.total_bounds
    assert 6.7 < minx < maxx < 7.2 and 50.8 < miny < maxy < 51.1
    for geom in cologne.zones.geometry:
        text = geojson_text(geom)
        parsed = json.loads(text)
        assert parsed["type"] in ("Polygon", "MultiPolygon")
        assert max(len(d) for d in re.findall(r"\.(\d+)", text)) <= 7
        assert shapely.geometry.shape(parsed).equals_exact(geom, tolerance=0)
        assert geom.is_valid
        polygons = geom.geoms if geom.geom_type == "MultiPolygon" else [geom]
        assert all(p.exterior.is_ccw for p in polygons)


def test_cathedral_falls_in_innenstadt_altstadt_nord(cologne: CityGeo) -> None:
    index = cologne.zone_index()
    assert index.smallest_zone(*CATHEDRAL) == "cologne-stt-103"
    assert index.zones_at(*CATHEDRAL) == ["cologne-stt-103", "cologne-stb-1", "cologne-lez"]
    names = cologne.zones.set_index("zone_id")["name"]
    assert names["cologne-stt-103"] == "Altstadt/Nord"
    assert names["cologne-stb-1"] == "Innenstadt"


def test_beijing_districts(beijing: CityGeo) -> None:
    zones = beijing.zones.set_index("zone_id")
    assert len(zones) == 16
    assert (zones["level"] == "district").all()
    assert zones["parent_zone_id"].isna().all()
    assert zones.loc["beijing-110108", ["name", "local_name"]].tolist() == ["Haidian", "海淀区"]
    assert zones.loc["beijing-110105", ["name", "local_name"]].tolist() == ["Chaoyang", "朝阳区"]
    assert all(re.fullmatch(r"beijing-1101\d\d", z) for z in zones.index)
    assert zones["area_km2"].sum() == pytest.approx(16_400, rel=0.01)
    assert beijing.city.aqi_standard == "china_hj633"
    assert beijing.city.timezone == "Asia/Shanghai"
    # Tiananmen Square lies in Dongcheng (GCJ-02 vs WGS-84 is a few hundred metres: well inside)
    assert beijing.zone_index().smallest_zone(116.3975, 39.9033) == "beijing-110101"


def test_los_angeles_is_a_city_row_only(data_dir: Path) -> None:
    city = load_city(city_spec_path("los-angeles"), data_dir)
    assert city.city.city_id == "los-angeles"
    assert city.city.aqi_standard == "us_epa"
    assert len(city.zones) == 0
    assert city.zone_index().smallest_zone(-118.25, 34.05) is None


def test_loading_is_deterministic(data_dir: Path, cologne: CityGeo) -> None:
    again = load_city(city_spec_path("cologne"), data_dir, streets=False)
    assert again.streets is None
    assert again.zones["zone_id"].tolist() == cologne.zones["zone_id"].tolist()
    assert [geojson_text(g) for g in again.zones.geometry] == [
        geojson_text(g) for g in cologne.zones.geometry
    ]
