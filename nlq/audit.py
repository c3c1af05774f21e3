"""Every question asked through ``/api/v1/ask`` and the reply it got, in the table ``nlq_audit``.

Who asked (token name and role), what, for which ``as_of``, the reply's kind, SQL and row count,
how long answering took, the reply exactly as sent, and the error id when answering failed.
Text is stored as received except for what PostgreSQL cannot hold (NUL, lone surrogates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cityos.nlq.auth import Principal


@dataclass(frozen=True)
class AskRecord:
    principal: Principal
    question: str
    as_of: datetime | None  # None when the request's as_of could not be read
    reply: dict[str, Any]
    latency_ms: float
    error_id: str | None = None


def iso_utc(value: datetime | None) -> str | None:
    """An instant as ISO-8601 UTC with a ``Z``, as the API writes every time."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def storable(value: Any) -> Any:
    """``value`` made storable in PostgreSQL text and jsonb: strings without NUL or lone
    surrogates, infinities and NaN as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def record_ask(conn: psycopg.Connection, record: AskRecord) -> None:
    reply = record.reply
    rows = reply.get("rows")
    conn.execute(
        "INSERT INTO nlq_audit (token_id, token_name, role, question, as_of, reply_kind, sql,"
        " row_count, latency_ms, reply, error_id)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            record.principal.token_id,
            record.principal.name,
            record.principal.role,
            storable(record.question),
            record.as_of,
            reply["kind"],
            storable(reply.get("sql")),
            len(rows) if isinstance(rows, list) else None,
            record.latency_ms,
            Jsonb(storable(reply)),
            record.error_id,
        ),
    )


def recent_questions(conn: psycopg.Connection, token_name: str, limit: int) -> list[dict[str, Any]]:
    """The latest questions asked under ``token_name``, newest first, for the console's history."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT asked_at, question, as_of, reply_kind AS kind, reply ->> 'answer' AS answer,"
            " sql, row_count FROM nlq_audit WHERE token_name = %s"
            " ORDER BY asked_at DESC, audit_id DESC LIMIT %s",
            (token_name, limit),
        )
        rows = cur.fetchall()
    return [
        {**row, "asked_at": iso_utc(row["asked_at"]), "as_of": iso_utc(row["as_of"])}
        for row in rows
    ]
