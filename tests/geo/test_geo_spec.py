"""City specs: bad specs stop with a message naming the problem; any city loads from a spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from cityos.geo import CityGeo, SpecError, city_spec_path, load_city, read_spec

STADTTEILE = "cologne-districts/stadtteile-shapefile/Stadtteil.shp"
HEADER = """
city_id = "cologne"
name = "Cologne"
timezone = "Europe/Berlin"
aqi_standard = "eu_eaqi"
metric_crs = "EPSG:25832"
"""
DISTRICTS = """
[[zones]]
path = "cologne-districts/stadtbezirke.geojson"
level = "district"
zone_id = "cologne-stb-{STB_NR}"
name = "{STB_NAME}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "city.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_parent_by_spatial_containment_matches_the_numbering(
    tmp_path: Path, data_dir: Path, cologne: CityGeo
) -> None:
    """parent_within finds each Stadtteil's Stadtbezirk by area: the same as STT_NR's digit."""
    spec = write(
        tmp_path,
        HEADER
        + DISTRICTS
        + f"""
[[zones]]
path = "{STADTTEILE}"
level = "subdistrict"
zone_id = "cologne-stt-{{STT_NR}}"
name = "{{STT_NAME}}"
parent_within = "district"
""",
    )
    city = load_city(spec, data_dir, streets=False)
    spatial = dict(zip(city.zones["zone_id"], city.zones["parent_zone_id"], strict=True))
    by_number = dict(zip(cologne.zones["zone_id"], cologne.zones["parent_zone_id"], strict=True))
    subdistricts = [z for z in spatial if z.startswith("cologne-stt-")]
    assert len(subdistricts) == 86
    assert {z: spatial[z] for z in subdistricts} == {z: by_number[z] for z in subdistricts}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER + "colour = 'red'\n", "colour: Extra inputs are not permitted"),
        (HEADER.replace("Europe/Berlin", "Europe/Cologne"), "unknown IANA time zone"),
        (HEADER.replace("EPSG:25832", "EPSG:4326"), "not a projected CRS in metres"),
        (HEADER.replace("eu_eaqi", "uk_daqi"), "aqi_standard"),
        (HEADER + "[[zones]]\npath = 'x'\n", "zones.0.level: Field required"),
        (HEADER + DISTRICTS.replace("{STB_NR}", "{STB_NR.real}"), "use {ATTRIBUTE}"),
        ("city_id = ", "not valid TOML"),
    ],
)
def test_bad_spec_is_named(tmp_path: Path, text: str, message: str) -> None:
    spec = write(tmp_path, text)
    with pytest.raises(SpecError, match="city spec .*city.toml") as caught:
        read_spec(spec)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("layer_change", "message"),
    [
        (("stadtbezirke.geojson", "stadtbezirke-2019.geojson"), "does not exist"),
        (("{STB_NAME}", "{BEZIRK}"), "has no attribute ['BEZIRK']; it has ["),
        (('level = "district"', 'level = "district"\nparent = "cologne-stb-0"'), "cologne-stb-0"),
        (('"cologne-stb-{STB_NR}"', '"cologne-stb"'), "zone ids repeat"),
    ],
)
def test_spec_that_does_not_fit_the_data(
    tmp_path: Path, data_dir: Path, layer_change: tuple[str, str], message: str
) -> None:
    spec = write(tmp_path, HEADER + DISTRICTS.replace(*layer_change))
    with pytest.raises(SpecError) as caught:
        load_city(spec, data_dir)
    assert message in str(caught.value)


def test_dissolved_layer_takes_constants_only(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        HEADER
        + """
[[zones]]
path = "cologne-districts/umweltzone.geojson"
level = "special"
dissolve = true
zone_id = "cologne-lez-{OBJECTID}"
name = "LEZ"
""",
    )
    with pytest.raises(SpecError, match="must be constants"):
        read_spec(spec)


def test_lookup_without_the_key(tmp_path: Path, data_dir: Path) -> None:
    text = city_spec_path("beijing").read_text(encoding="utf-8")
    spec = write(tmp_path, text.replace('110119 = "Yanqing"', '110120 = "Yanqing"'))
    with pytest.raises(SpecError, match="adcode='110119' is not in the lookup table"):
        load_city(spec, data_dir)


def test_unknown_city_name() -> None:
    with pytest.raises(SpecError, match="no such city; known: beijing, cologne, los-angeles"):
        city_spec_path("paris")
