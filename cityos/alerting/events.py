"""What the ``alerts`` Kafka topic carries: one event per change of an alert's lifecycle.

An alert is a row of the contract's ``alerts`` table; every transition of it (firing,
acknowledged, resolved, and updates of a firing alert's reading or severity) is published as an
:class:`AlertEvent`, keyed by ``alert_id`` so one alert's events stay in order on one partition.
``event_id`` is stable for a transition, so consumers (the notifier) can de-duplicate replays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

EventType = Literal["firing", "updated", "acknowledged", "resolved"]
EVENT_TYPES: tuple[EventType, ...] = ("firing", "updated", "acknowledged", "resolved")

ALERT_COLUMNS = (
    "alert_id",
    "kind",
    "severity",
    "status",
    "city_id",
    "zone_id",
    "sensor_id",
    "intersection_id",
    "metric",
    "value",
    "threshold",
    "message",
    "started_at",
    "updated_at",
    "resolved_at",
)


@dataclass(frozen=True)
class Alert:
    """One row of ``alerts`` (contract v1)."""

    alert_id: str
    kind: str
    severity: str
    status: str
    city_id: str
    message: str
    started_at: datetime
    updated_at: datetime
    zone_id: str | None = None
    sensor_id: str | None = None
    intersection_id: str | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    resolved_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Alert:
        values: dict[str, Any] = {name: row.get(name) for name in ALERT_COLUMNS}
        return cls(**values)


@dataclass(frozen=True)
class AlertEvent:
    """A transition of one alert, as published on the ``alerts`` topic."""

    type: EventType
    alert: Alert
    at: datetime

    @property
    def event_id(self) -> str:
        return f"{self.alert.alert_id}:{self.type}:{self.at.isoformat()}"

    @property
    def key(self) -> bytes:
        return self.alert.alert_id.encode()

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "type": self.type,
                "at": self.at,
                "alert": asdict(self.alert),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> AlertEvent:
        data = orjson.loads(raw)
        if data.get("type") not in EVENT_TYPES:
            raise ValueError(f"unknown alert event type {data.get('type')!r}")
        alert = dict(data["alert"])
        for name in ("started_at", "updated_at", "resolved_at"):
            if alert.get(name) is not None:
                alert[name] = datetime.fromisoformat(alert[name])
        return cls(
            type=data["type"],
            alert=Alert.from_row(alert),
            at=datetime.fromisoformat(data["at"]),
        )
