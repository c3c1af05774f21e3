"""What each source topic carries, and the Spark schemas derived from the JSON Schemas.

The JSON Schemas in ``cityos/schemas`` are the single definition of an event; this module turns
them into two Spark schemas per topic: a typed one (the fast path) and an all-string one used only
to tell a wrong type from a missing field when the typed parse fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from pyspark.sql import types as T

from cityos import events

CORRUPT = "_corrupt"  # from_json's column for records that failed the typed parse


@dataclass(frozen=True)
class TopicSpec:
    """A source topic: the event types it may carry and its allowed lateness setting."""

    base: str  # attribute of cityos.topics.Topics
    event_types: tuple[str, ...]
    lateness_setting: str  # name of the Settings field with the allowed lateness


TOPIC_SPECS: dict[str, TopicSpec] = {
    "traffic": TopicSpec("traffic", (events.TRAFFIC,), "traffic_watermark"),
    "environment": TopicSpec("environment", (events.AIR, events.NOISE), "air_watermark"),
}

_JSON_TO_SPARK: dict[str, T.DataType] = {
    "string": T.StringType(),
    "integer": T.LongType(),
    "number": T.DoubleType(),
}


@dataclass(frozen=True)
class Field:
    """One property of an event type, as far as validation needs it."""

    name: str
    json_type: str  # string | integer | number
    nullable: bool
    required: bool
    const: Any = None
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    is_time: bool = False


def _field(name: str, prop: dict[str, Any], required: bool) -> Field:
    if "const" in prop:
        const = prop["const"]
        json_type = "string" if isinstance(const, str) else "integer"
        return Field(name, json_type, False, required, const=const)
    types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    return Field(
        name,
        next(t for t in types if t != "null"),
        "null" in types,
        required,
        minimum=prop.get("minimum"),
        maximum=prop.get("maximum"),
        min_length=prop.get("minLength"),
        max_length=prop.get("maxLength"),
        is_time=prop.get("format") == "date-time",
    )


@cache
def fields(event_type: str) -> tuple[Field, ...]:
    schema = events.schema(event_type)
    required = set(schema.get("required", ()))
    return tuple(_field(n, p, n in required) for n, p in schema["properties"].items())


@cache
def topic_fields(spec: TopicSpec) -> dict[str, T.DataType]:
    """Union of the properties of the topic's event types, name -> Spark type (first wins)."""
    merged: dict[str, T.DataType] = {}
    for event_type in spec.event_types:
        for f in fields(event_type):
            merged.setdefault(f.name, _JSON_TO_SPARK[f.json_type])
    return merged


def typed_schema(spec: TopicSpec) -> T.StructType:
    cols = [T.StructField(n, t) for n, t in topic_fields(spec).items()]
    return T.StructType([*cols, T.StructField(CORRUPT, T.StringType())])


def string_schema(spec: TopicSpec) -> T.StructType:
    return T.StructType([T.StructField(n, T.StringType()) for n in topic_fields(spec)])
