"""geo: a city's zones, street gazetteer and coordinate systems (imported as ``cityos.geo``).

A library: it imports nothing else of CityOS. Callers hand it spec paths, a data dir and a
psycopg connection. The usual round trip::

    city = load_city(city_spec_path("cologne"), data_dir)   # files -> CityGeo
    write_city(conn, city)                                   # -> cities, zones
    zones, streets = city.zone_index(), city.street_index()
    zones.smallest_zone(6.9583, 50.9413)                     # 'cologne-stt-103'
    streets.intersection_name(6.95677, 50.97416)             # 'Neusser Str. / ...'
    register_sensors(conn, [{"sensor_id": ..., ...}], zones)

See geo/README.md for the spec format.
"""

from cityos.geo.errors import GeoError, PointError, SpecError
from cityos.geo.index import StreetIndex, ZoneIndex
from cityos.geo.spec import CitySpec, available_cities, city_spec_path, read_spec
from cityos.geo.store import (
    POINT_TABLES,
    WriteSummary,
    read_zones,
    register_intersections,
    register_points,
    register_sensors,
    write_city,
)
from cityos.geo.zones import City, CityGeo, geojson_text, load_city

__all__ = [
    "POINT_TABLES",
    "City",
    "CityGeo",
    "CitySpec",
    "GeoError",
    "PointError",
    "SpecError",
    "StreetIndex",
    "WriteSummary",
    "ZoneIndex",
    "available_cities",
    "city_spec_path",
    "geojson_text",
    "load_city",
    "read_spec",
    "read_zones",
    "register_intersections",
    "register_points",
    "register_sensors",
    "write_city",
]
