"""Cologne and Beijing into a real PostgreSQL: counts, parent links, idempotence, points."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cityos.db import connect
from cityos.geo import (
    CityGeo,
    PointError,
    ZoneIndex,
    city_spec_path,
    load_city,
    read_zones,
    register_intersections,
    register_sensors,
    write_city,
)
from cityos.settings import SHARED_DIR
from tests.sql import scalar

pytestmark = pytest.mark.integration

DATA_DIR = SHARED_DIR / "data"
# table -> a fingerprint of every row, to prove that a second load changes nothing
FINGERPRINT = {
    "cities": "SELECT md5(string_agg(c::text, '|' ORDER BY city_id)) FROM cities c",
    "zones": "SELECT md5(string_agg(z::text, '|' ORDER BY zone_id)) FROM zones z",
}


@pytest.fixture(scope="module")
def cities() -> dict[str, CityGeo]:
    return {
        name: load_city(city_spec_path(name), DATA_DIR)
        for name in ("cologne", "beijing", "los-angeles")
    }


@pytest.fixture
def conn(database_url: str, pg_schema: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(database_url, schema=pg_schema, autocommit=True) as connection:
        yield connection


def test_load_cities_and_zones(conn: psycopg.Connection[Any], cities: dict[str, CityGeo]) -> None:
    first = [write_city(conn, city) for city in cities.values()]
    assert [s.inserted for s in first] == [1 + 96, 1 + 16, 1]

    assert scalar(conn, "SELECT count(*) FROM cities") == 3
    levels = conn.execute(
        "SELECT city_id, level, count(*), round(sum(area_km2)) FROM zones"
        " GROUP BY city_id, level ORDER BY city_id, level"
    ).fetchall()
    assert [row[:3] for row in levels] == [
        ("beijing", "district", 16),
        ("cologne", "district", 9),
        ("cologne", "special", 1),
        ("cologne", "subdistrict", 86),
    ]
    assert levels[0][3] == pytest.approx(16_400, rel=0.01)
    assert levels[1][3] == pytest.approx(405, abs=2)

    # every subdistrict has a parent, and it is a district of the same city
    links = conn.execute(
        "SELECT c.zone_id, p.zone_id, p.level, p.city_id = c.city_id FROM zones c"
        " LEFT JOIN zones p ON p.zone_id = c.parent_zone_id WHERE c.level = 'subdistrict'"
    ).fetchall()
    assert len(links) == 86
    assert all(
        parent is not None and level == "district" and same for _, parent, level, same in links
    )
    assert dict((c, p) for c, p, _, _ in links)["cologne-stt-103"] == "cologne-stb-1"
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM zones WHERE level <> 'subdistrict'"
            " AND parent_zone_id IS NOT NULL",
        )
        == 0
    )
    row = conn.execute(
        "SELECT name, local_name, level FROM zones WHERE zone_id = 'beijing-110105'"
    ).fetchone()
    assert row == ("Chaoyang", "朝阳区", "district")

    # loading again changes nothing: no row touched, every value the same
    before = {t: scalar(conn, q) for t, q in FINGERPRINT.items()}
    again = [write_city(conn, city) for city in cities.values()]
    assert [(s.inserted, s.updated) for s in again] == [(0, 0)] * 3
    assert [s.unchanged for s in again] == [97, 17, 1]
    assert {t: scalar(conn, q) for t, q in FINGERPRINT.items()} == before


def test_changed_spec_updates_in_place(
    conn: psycopg.Connection[Any], cities: dict[str, CityGeo]
) -> None:
    cologne = cities["cologne"]
    write_city(conn, cologne)
    renamed = cologne.zones.copy()
    renamed.loc[renamed["zone_id"] == "cologne-lez", "name"] = "Environmental zone"
    summary = write_city(conn, CityGeo(cologne.city, cologne.metric_crs, renamed, None))
    assert (summary.inserted, summary.updated, summary.unchanged) == (0, 1, 96)
    assert scalar(conn, "SELECT name FROM zones WHERE zone_id = 'cologne-lez'") == (
        "Environmental zone"
    )


def test_zones_read_back_index_the_same(
    conn: psycopg.Connection[Any], cities: dict[str, CityGeo]
) -> None:
    cologne = cities["cologne"]
    write_city(conn, cologne)
    stored = read_zones(conn, "cologne")
    assert len(stored) == 96
    from_db, from_files = ZoneIndex(stored), cologne.zone_index()
    probes = [(6.9583, 50.9413), (6.9540688, 50.9629887), (7.05, 50.9), (7.0982, 50.7374)]
    for lon, lat in probes:
        assert from_db.zones_at(lon, lat) == from_files.zones_at(lon, lat)


def test_register_sensors_and_intersections(
    conn: psycopg.Connection[Any], cities: dict[str, CityGeo]
) -> None:
    cologne = cities["cologne"]
    write_city(conn, cologne)
    zones, streets = cologne.zone_index(), cologne.street_index()
    lon, lat = 6.954068841355787, 50.962988681896036  # cologne8 signal 32319828
    intersection = {
        "intersection_id": "32319828",
        "city_id": "cologne",
        "name": streets.intersection_name(lon, lat),
        "latitude": lat,
        "longitude": lon,
    }
    sensor = {
        "sensor_id": "cologne-tr-test",
        "city_id": "cologne",
        "kind": "traffic",
        "name": "test loop",
        "road_name": streets.road_name(lon, lat),
        "intersection_id": "32319828",
        "latitude": lat,
        "longitude": lon,
    }
    assert register_intersections(conn, [intersection], zones).inserted == 1
    assert register_sensors(conn, [sensor], zones).inserted == 1
    row = conn.execute(
        "SELECT i.name, i.zone_id, s.zone_id, s.road_name, s.latitude FROM intersections i"
        " JOIN sensors s USING (intersection_id)"
    ).fetchone()
    assert row == (
        "Neusser Str. / Wilhelmstr.",
        "cologne-stt-501",
        "cologne-stt-501",
        "Neusser Str.",
        round(lat, 7),
    )
    again = register_sensors(conn, [sensor], zones)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 1)

    with pytest.raises(PointError, match="unknown columns"):
        register_sensors(conn, [{**sensor, "zone": "x"}], zones)
    with pytest.raises(PointError, match="not in the zone index's cities"):
        register_sensors(conn, [{**sensor, "city_id": "beijing"}], zones)
    # a decimal comma (German CSV files), a missing value read as text, a flag
    with pytest.raises(PointError, match="longitude '6,95' is not a number"):
        register_sensors(conn, [{**sensor, "longitude": "6,95"}], zones)
    with pytest.raises(PointError, match="latitude 'n/a' is not a number"):
        register_intersections(conn, [{**intersection, "latitude": "n/a"}], zones)
    with pytest.raises(PointError, match="latitude True is not a number"):
        register_sensors(conn, [{**sensor, "latitude": True}], zones)
    assert scalar(conn, "SELECT count(*) FROM sensors") == 1


def test_cli_load_and_list(database_url: str, pg_schema: str) -> None:
    """`cityos geo load cologne` against the test schema, twice; `cityos geo zones` lists it."""
    url = f"{database_url}?options=-csearch_path%3D{pg_schema}"
    env = {**os.environ, "CITYOS_DATABASE_URL": url, "CITYOS_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    cityos = str(Path(sys.executable).parent / "cityos")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cityos, "geo", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    first = run("load", "cologne", "--data-dir", str(DATA_DIR))
    assert first.returncode == 0, first.stderr
    assert "97 rows new" in first.stdout
    assert "subdistrict" in first.stdout
    second = run("load", str(city_spec_path("cologne")))
    assert second.returncode == 0, second.stderr
    assert "0 rows new, 0 changed, 97 unchanged" in second.stdout
    listing = run("zones", "cologne", "--level", "district")
    assert listing.returncode == 0, listing.stderr
    assert "cologne-stb-9" in listing.stdout and "Mülheim" in listing.stdout
    assert "cologne-stt-" not in listing.stdout

    bad = run("load", "paris")
    assert bad.returncode == 2
    assert "no such city" in bad.stderr
