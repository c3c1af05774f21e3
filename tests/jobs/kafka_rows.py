"""Build Kafka-shaped batch DataFrames (what the Kafka source yields) from events or raw bytes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cityos import events

KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"
)
NOW = datetime(2016, 12, 19, 12, 0, tzinfo=UTC)  # the batch's processing time in unit tests


def record(value: Any, key: str | bytes | None = None) -> tuple[bytes | None, bytes | None]:
    """(key, value) bytes: events are encoded as producers do; bytes are sent as they are."""
    if isinstance(value, dict):
        raw = events.encode(value) if _finite(value) else _json_with_nan(value)
        key = events.key_of(value) if key is None else key
    else:
        raw = value
    if isinstance(key, str):
        key = key.encode()
    return key, raw


def _finite(event: dict) -> bool:
    return all(
        not (isinstance(v, float) and v != v or v in (float("inf"), float("-inf")))
        for v in event.values()
        if isinstance(v, float)
    )


def _json_with_nan(event: dict) -> bytes:
    import json

    return json.dumps(event).encode()  # writes NaN / Infinity, as a sloppy producer would


def kafka_frame(spark, records: list[tuple[bytes | None, bytes | None]], topic: str = "traffic"):
    rows = [
        (key, value, topic, 0, offset, NOW.replace(tzinfo=None))
        for offset, (key, value) in enumerate(records)
    ]
    return spark.createDataFrame(rows, KAFKA_SCHEMA)
