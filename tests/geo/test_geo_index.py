"""ZoneIndex and StreetIndex on the real Cologne zones and street register."""

from __future__ import annotations

import pytest
import shapely

from cityos.geo import CityGeo, GeoError, ZoneIndex

CATHEDRAL = (6.9583, 50.9413)
# Traffic signals of the RESCO cologne8 network (SUMO ids), converted with the net's projection.
SIGNALS = {
    "32319828": (6.954068841355787, 50.962988681896036),
    "280120513": (6.95889780279431, 50.96757555037515),
    "26110729": (6.959767794839774, 50.97423090955554),
}


def test_point_outside_every_zone(cologne: CityGeo) -> None:
    index = cologne.zone_index()
    assert index.smallest_zone(7.0982, 50.7374) is None  # Bonn
    assert index.zones_at(7.0982, 50.7374) == []


def test_bad_coordinates_raise(cologne: CityGeo) -> None:
    index = cologne.zone_index()
    with pytest.raises(GeoError, match="longitude/latitude"):
        index.smallest_zone(50.9413, 196.9583)
    with pytest.raises(GeoError):
        index.smallest_zone(float("nan"), 50.0)


def test_point_on_a_shared_border_goes_to_the_smaller_zone(cologne: CityGeo) -> None:
    subdistricts = cologne.zones[cologne.zones["level"] == "subdistrict"].set_index("zone_id")
    a, b = subdistricts.loc["cologne-stt-101"], subdistricts.loc["cologne-stt-102"]
    shared = set(map(tuple, shapely.get_coordinates(a.geometry))) & set(
        map(tuple, shapely.get_coordinates(b.geometry))
    )
    assert shared, "Altstadt/Süd and Neustadt/Süd share border vertices"
    lon, lat = sorted(shared)[0]
    index = cologne.zone_index()
    hits = index.zones_at(lon, lat)
    assert {"cologne-stt-101", "cologne-stt-102"} <= set(hits)
    smaller = min(
        ("cologne-stt-101", "cologne-stt-102"),
        key=lambda z: (subdistricts.loc[z, "area_km2"], z),
    )
    assert index.smallest_zone(lon, lat) == smaller
    # the answer does not depend on the order the zones came in
    reversed_index = ZoneIndex(cologne.zones.iloc[::-1])
    assert reversed_index.smallest_zone(lon, lat) == smaller


def test_bulk_lookup_matches_single(cologne: CityGeo) -> None:
    index = cologne.zone_index()
    points = [CATHEDRAL, *SIGNALS.values(), (7.0982, 50.7374)]
    lons, lats = zip(*points, strict=True)
    assert index.smallest_zones(lons, lats) == [index.smallest_zone(*p) for p in points]
    assert index.smallest_zones(lons, lats)[-1] is None


def test_level_filter(cologne: CityGeo) -> None:
    districts = ZoneIndex(cologne.zones, levels=["district"])
    assert len(districts) == 9
    assert districts.smallest_zone(*CATHEDRAL) == "cologne-stb-1"


def test_signals_lie_in_nippes(cologne: CityGeo) -> None:
    index = cologne.zone_index()
    for lon, lat in SIGNALS.values():
        assert index.smallest_zone(lon, lat) in ("cologne-stt-501", "cologne-stt-504")
        assert "cologne-stb-5" in index.zones_at(lon, lat)


def test_nearest_streets_of_the_cathedral(cologne: CityGeo) -> None:
    names = cologne.street_index().nearest_streets(*CATHEDRAL, n=3)
    assert len(names) == len(set(names)) == 3
    assert {"Domkloster", "Trankgasse"} <= set(names)


def test_intersection_names_major_street_first(cologne: CityGeo) -> None:
    streets = cologne.street_index()
    assert streets.intersection_name(*SIGNALS["32319828"]) == "Neusser Str. / Wilhelmstr."
    assert streets.intersection_name(*SIGNALS["280120513"]) == "Niehler Str. / Xantener Str."
    assert streets.road_name(*SIGNALS["26110729"]) in ("Niehler Str.", "Friedrich-Karl-Str.")


def test_no_street_nearby(cologne: CityGeo) -> None:
    streets = cologne.street_index()
    assert streets.road_name(7.0982, 50.7374) is None  # Bonn: no Cologne street within 50 m
    assert streets.nearest_streets(7.0982, 50.7374, n=2, max_distance_m=500) == []
    with pytest.raises(GeoError, match="fewer than two streets"):
        streets.intersection_name(7.0982, 50.7374)
