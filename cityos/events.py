"""The three source events: builders, encoding and validation, shared by producers and Spark.

Field names follow smart-data-models (cityos/schemas/*.v1.json). ``refDevice`` is the sensor id
and the Kafka key. Times are ISO-8601 UTC with a ``Z`` suffix. The JSON Schemas say what each
field may hold; :func:`validate` adds what a schema cannot say (finite numbers, period order
and length, plausible event times), so a producer and the Spark job reject the same events for
the same reasons.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import orjson

SCHEMA_VERSION = 1
TRAFFIC = "TrafficFlowObserved"
AIR = "AirQualityObserved"
NOISE = "NoiseLevelObserved"
EVENT_TYPES = (TRAFFIC, AIR, NOISE)

# the event-time field of each type (what windows and watermarks use)
EVENT_TIME_FIELD = {TRAFFIC: "dateObservedFrom", AIR: "dateObserved", NOISE: "dateObservedFrom"}
# types that describe a period [from, to)
PERIOD_TYPES = (TRAFFIC, NOISE)
MAX_PERIOD = timedelta(hours=1)

Event = dict[str, Any]


# --------------------------------------------------------------------------- time
def iso(ts: datetime) -> str:
    """ISO-8601 UTC with 'Z', milliseconds only when present: '2016-12-19T07:00:00Z'."""
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: event times must be timezone-aware")
    ts = ts.astimezone(UTC)
    text = ts.isoformat(timespec="milliseconds" if ts.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Inverse of :func:`iso`; accepts any RFC 3339 offset and returns UTC."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return ts.astimezone(UTC)


def _event_id(kind: str, ref_device: str, start: datetime) -> str:
    """Deterministic: a re-sent reading has the same id, so sinks can deduplicate."""
    return f"{kind}:{ref_device}:{start.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def _num(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


# --------------------------------------------------------------------------- builders
def traffic_flow(
    ref_device: str,
    start: datetime,
    end: datetime,
    *,
    intensity: int | None,
    occupancy: float | None,
    average_speed_kmh: float | None,
    lane_id: int | None = None,
) -> Event:
    """One detector reading over [start, end): vehicles counted, occupancy 0..1, mean km/h."""
    event: Event = {
        "id": _event_id(TRAFFIC, ref_device, start),
        "type": TRAFFIC,
        "schemaVersion": SCHEMA_VERSION,
        "refDevice": ref_device,
        "dateObservedFrom": iso(start),
        "dateObservedTo": iso(end),
        "intensity": None if intensity is None else int(intensity),
        "occupancy": _num(occupancy, 4),
        "averageVehicleSpeed": _num(average_speed_kmh, 2),
    }
    if lane_id is not None:
        event["laneId"] = lane_id
    return event


def air_quality(
    ref_device: str,
    observed: datetime,
    *,
    pm25: float | None = None,
    pm10: float | None = None,
    no2: float | None = None,
    o3: float | None = None,
    so2: float | None = None,
    co: float | None = None,
    temperature: float | None = None,
    relative_humidity: float | None = None,
    wind_speed: float | None = None,
) -> Event:
    """One station reading; concentrations µg/m³ (CO too), humidity 0..1, wind m/s."""
    return {
        "id": _event_id(AIR, ref_device, observed),
        "type": AIR,
        "schemaVersion": SCHEMA_VERSION,
        "refDevice": ref_device,
        "dateObserved": iso(observed),
        "pm25": _num(pm25, 2),
        "pm10": _num(pm10, 2),
        "no2": _num(no2, 2),
        "o3": _num(o3, 2),
        "so2": _num(so2, 2),
        "co": _num(co, 2),
        "temperature": _num(temperature, 2),
        "relativeHumidity": _num(relative_humidity, 4),
        "windSpeed": _num(wind_speed, 2),
    }


def noise_level(
    ref_device: str, start: datetime, end: datetime, *, laeq: float, lamax: float | None = None
) -> Event:
    """Equivalent and maximum A-weighted sound level over [start, end), dB(A)."""
    return {
        "id": _event_id(NOISE, ref_device, start),
        "type": NOISE,
        "schemaVersion": SCHEMA_VERSION,
        "refDevice": ref_device,
        "dateObservedFrom": iso(start),
        "dateObservedTo": iso(end),
        "LAeq": _num(laeq, 2),
        "LAmax": _num(lamax, 2),
    }


def stamp_produced(event: Event, now: datetime | None = None) -> Event:
    """A copy with ``producedAt`` set (the producer calls this just before sending)."""
    return {**event, "producedAt": iso(now or datetime.now(UTC))}


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON. NaN/inf cannot be encoded faithfully, so they are refused."""
    for key, value in event.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"field {key!r} is {value!r}: not representable in JSON")
    return orjson.dumps(event)


def key_of(event: Mapping[str, Any]) -> bytes:
    """The Kafka key: the sensor id."""
    return str(event["refDevice"]).encode()


# --------------------------------------------------------------------------- validation
@cache
def schema(event_type: str) -> dict[str, Any]:
    name = f"{event_type}.v{SCHEMA_VERSION}.json"
    text = (resources.files("cityos") / "schemas" / name).read_text()
    return orjson.loads(text)


@cache
def _validator(event_type: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(schema(event_type))


def _non_finite(event: Mapping[str, Any]) -> list[str]:
    return [
        f"{key}: {value!r} is not a finite number"
        for key, value in event.items()
        if isinstance(value, float) and not math.isfinite(value)
    ]


def _period(event: Mapping[str, Any]) -> list[str]:
    start, end = parse_time(event["dateObservedFrom"]), parse_time(event["dateObservedTo"])
    if end <= start:
        return ["dateObservedTo: not after dateObservedFrom"]
    if end - start > MAX_PERIOD:
        return [f"dateObservedTo: period of {end - start} is longer than {MAX_PERIOD}"]
    return []


def _event_time(
    event: Mapping[str, Any], now: datetime, max_future_skew_s: float, earliest: datetime
) -> list[str]:
    field = EVENT_TIME_FIELD[event["type"]]
    ts = parse_time(event[field])
    if ts > now + timedelta(seconds=max_future_skew_s):
        return [f"{field}: {event[field]} is more than {max_future_skew_s:g} s in the future"]
    if ts < earliest:
        return [f"{field}: {event[field]} is before {iso(earliest)}"]
    return []


def validate(
    event: Any,
    *,
    now: datetime | None = None,
    max_future_skew_s: float = 3600,
    earliest: datetime = datetime(2000, 1, 1, tzinfo=UTC),
) -> list[str]:
    """Reasons the event is invalid; an empty list means it is valid.

    The schema check stops at its first failure (fastjsonschema); the semantic checks run
    only on schema-valid events, since they rely on the fields being well-formed.
    """
    if not isinstance(event, dict):
        return [f"event is a JSON {type(event).__name__}, not an object"]
    reasons = _non_finite(event)
    event_type = event.get("type")
    if event_type not in EVENT_TYPES:
        return [*reasons, f"type: {event_type!r} is not one of {', '.join(EVENT_TYPES)}"]
    try:
        _validator(event_type)(event)
    except fastjsonschema.JsonSchemaValueException as err:
        return [*reasons, err.message]
    if reasons:
        return reasons
    if event_type in PERIOD_TYPES:
        reasons += _period(event)
    reasons += _event_time(event, now or datetime.now(UTC), max_future_skew_s, earliest)
    return reasons


def parse(raw: bytes | None, *, max_bytes: int = 64 * 1024) -> tuple[Event | None, list[str]]:
    """Kafka value bytes -> (event, reasons-it-cannot-even-be-validated)."""
    if raw is None:
        return None, ["value is empty (tombstone)"]
    if len(raw) > max_bytes:
        return None, [f"value is {len(raw)} bytes, more than {max_bytes}"]
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        return None, [f"not JSON: {err}"]
    if not isinstance(event, dict):
        return None, [f"event is a JSON {type(event).__name__}, not an object"]
    return event, []


def check(raw: bytes | None, *, max_bytes: int = 64 * 1024, **limits: Any) -> list[str]:
    """Parse and validate raw bytes: the full producer-side/DLQ decision in one call."""
    event, reasons = parse(raw, max_bytes=max_bytes)
    return reasons if event is None else validate(event, **limits)
