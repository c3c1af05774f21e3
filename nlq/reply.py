"""What the understanding pipeline hands the service: one of four reply kinds, plus action drafts.

The JSON shapes are those of ``shared/contracts/nlq-api.md``. The pipeline never stores anything:
an ``ActionDraft`` becomes a stored, validated action (with an ``action_id``) in
``cityos.nlq.actions``, and the service turns every reply into JSON with ``to_json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Answer:
    """A question answered with the Spark SQL that was executed and its rows."""

    sql: str
    columns: list[str]
    rows: list[list[Scalar]]
    answer: str
    interpretation: str
    # for the console: what the rows are ('time_series' draws a chart) and the places involved
    shape: Literal["scalar", "table", "time_series"] = "table"
    places: list[dict[str, str]] = field(default_factory=list)  # {"kind": "zone", "id": "..."}

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "answer",
            "sql": self.sql,
            "columns": self.columns,
            "rows": self.rows,
            "answer": self.answer,
            "interpretation": self.interpretation,
            "shape": self.shape,
            "places": self.places,
        }


@dataclass(frozen=True)
class Clarification:
    answer: str
    options: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "clarification", "answer": self.answer, "options": self.options}


@dataclass(frozen=True)
class Refusal:
    answer: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": "refusal", "answer": self.answer, "reason": self.reason}


@dataclass(frozen=True)
class ActionDraft:
    """An instruction as understood, before validation and storage.

    kind 'signal_timing': target {"intersection_id"}, params {"phase_index", "green_s"} with the
    new ABSOLUTE green time (a relative instruction is already resolved against signal_phases).
    kind 'alert': target {"alert_id"} (acknowledge/resolve) or {"zone_id"} (raise), params
    {"operation", and for raise "severity", "message"}.
    """

    kind: Literal["signal_timing", "alert"]
    target: dict[str, str]
    params: dict[str, Any]
    summary: str  # "phase 0 at Neusser Str. / Wilhelmstr.: 32 s -> 60 s of green"
    question: str


Reply = Answer | Clarification | Refusal | ActionDraft


class Answerer(Protocol):
    """The understanding pipeline as the service sees it."""

    def ask(self, question: str, as_of: datetime) -> Reply: ...
