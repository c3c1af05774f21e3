"""City specs: one small TOML file per city says what to load and how to name it.

A spec is data, not code, so a new city is a new file (``geo/cities/<name>.toml``), never a new
branch. ``geo/README.md`` documents the format with the Cologne spec as the example. The models
below forbid unknown keys, so a typo in a spec stops the load with the key's name instead of
being silently ignored.
"""

from __future__ import annotations

import re
import string
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyproj
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cityos.geo.errors import SpecError

Level = Literal["district", "subdistrict", "special"]
AqiStandard = Literal["us_epa", "china_hj633", "eu_eaqi"]

_CITY_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_FORMATTER = string.Formatter()


def template_fields(template: str) -> set[str]:
    """Attribute names a template reads: ``'cologne-stt-{STT_NR:0>3}'`` -> ``{'STT_NR'}``.

    Only plain names and indexing (``{STT_NR[0]}``) are allowed; attribute access would let a
    spec reach into Python objects.
    """
    fields: set[str] = set()
    for _, field, _, _ in _FORMATTER.parse(template):
        if field is None:
            continue
        if not field or "." in field or "__" in field:
            raise ValueError(f"template {template!r}: use {{ATTRIBUTE}} or {{ATTRIBUTE[i]}}")
        fields.add(field.split("[", 1)[0])
    return fields


class Lookup(BaseModel):
    """A value looked up in a table by one attribute, e.g. a Beijing district's pinyin name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", description="attribute whose value is the key")
    map: dict[str, str] = Field(description="attribute value (as text) -> result")

    def fields(self) -> set[str]:
        return {self.from_}

    def render(self, attrs: dict[str, Any]) -> str:
        key = str(attrs[self.from_])
        if key not in self.map:
            raise ValueError(f"{self.from_}={key!r} is not in the lookup table")
        return self.map[key]


class Template(BaseModel):
    """A str.format template over the feature's attributes, e.g. ``cologne-stb-{STB_NR}``."""

    model_config = ConfigDict(extra="forbid")

    text: str

    @field_validator("text")
    @classmethod
    def _valid(cls, text: str) -> str:
        template_fields(text)
        return text

    def fields(self) -> set[str]:
        return template_fields(self.text)

    def render(self, attrs: dict[str, Any]) -> str:
        try:
            return self.text.format_map(attrs)
        except (IndexError, ValueError, TypeError) as err:
            raise ValueError(f"template {self.text!r}: {err}") from err


class ZoneLayer(BaseModel):
    """One file of zones, all of one level."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file relative to the data dir (anything GDAL reads)")
    level: Level
    crs: str | None = Field(
        default=None, description="the CRS the coordinates really are in, if the file says none"
    )
    zone_id: Template | Lookup
    name: Template | Lookup
    local_name: Template | Lookup | None = None
    parent: Template | Lookup | None = Field(
        default=None, description="the parent's zone_id, formed from attributes"
    )
    parent_within: Level | None = Field(
        default=None, description="the parent is the zone of this level covering most of it"
    )
    dissolve: bool = Field(default=False, description="union every feature into one zone")

    @field_validator("zone_id", "name", "local_name", "parent", mode="before")
    @classmethod
    def _template_or_lookup(cls, value: Any) -> Any:
        """A TOML string is a template; a TOML table is a lookup."""
        return {"text": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> ZoneLayer:
        if self.parent is not None and self.parent_within is not None:
            raise ValueError("give either parent or parent_within, not both")
        if self.dissolve and self.attribute_fields():
            raise ValueError(
                "a dissolved layer becomes one zone: its zone_id, name, local_name and parent "
                f"must be constants, but they read {sorted(self.attribute_fields())}"
            )
        return self

    def attribute_fields(self) -> set[str]:
        """Every attribute the layer's templates and lookups read."""
        values = (self.zone_id, self.name, self.local_name, self.parent)
        return set().union(*(v.fields() for v in values if v is not None))


class StreetLayer(BaseModel):
    """The street register behind the gazetteer (nearest streets, intersection names)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    name_field: str
    crs: str | None = None


class CitySpec(BaseModel):
    """A city: its row in ``cities``, the CRS for areas and distances, its zone layers."""

    model_config = ConfigDict(extra="forbid")

    city_id: str
    name: str
    local_name: str | None = None
    timezone: str
    aqi_standard: AqiStandard
    metric_crs: str = Field(description="projected CRS in metres for areas and distances")
    zones: list[ZoneLayer] = Field(default_factory=list)
    streets: StreetLayer | None = None

    @field_validator("city_id")
    @classmethod
    def _city_id(cls, value: str) -> str:
        if not _CITY_NAME.match(value):
            raise ValueError("use lowercase letters, digits and '-', e.g. 'los-angeles'")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown IANA time zone {value!r}") from err
        return value

    @field_validator("metric_crs")
    @classmethod
    def _metric_crs(cls, value: str) -> str:
        try:
            crs = pyproj.CRS.from_user_input(value)
        except pyproj.exceptions.CRSError as err:
            raise ValueError(f"unknown CRS {value!r}") from err
        units = {axis.unit_name for axis in crs.axis_info}
        if not crs.is_projected or units != {"metre"}:
            raise ValueError(f"{value} is not a projected CRS in metres")
        return value


def read_spec(path: Path | str) -> CitySpec:
    """Parse and validate a spec file; every problem is a SpecError naming the file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise SpecError(path, f"cannot read it ({err.strerror})") from err
    except tomllib.TOMLDecodeError as err:
        raise SpecError(path, f"not valid TOML ({err})") from err
    try:
        return CitySpec.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
        )
        raise SpecError(path, problems) from err


def cities_dir() -> Path:
    """The folder of the specs that ship with CityOS."""
    return Path(str(resources.files("cityos.geo") / "cities"))


def available_cities() -> list[str]:
    """Names accepted by :func:`city_spec_path`, e.g. ``['beijing', 'cologne', 'los-angeles']``."""
    return sorted(p.stem for p in cities_dir().glob("*.toml"))


def city_spec_path(name: str) -> Path:
    """The shipped spec of a city by name (``cologne`` -> ``geo/cities/cologne.toml``)."""
    if not _CITY_NAME.match(name):
        raise SpecError(name, "a city name is lowercase letters, digits and '-'")
    path = cities_dir() / f"{name}.toml"
    if not path.is_file():
        raise SpecError(path, f"no such city; known: {', '.join(available_cities())}")
    return path
