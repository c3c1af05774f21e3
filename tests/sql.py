"""One row or one value from PostgreSQL in a test.

``conn.execute(q).fetchone()[0]`` fails on a missing row with "'NoneType' object is not
subscriptable", and mypy rightly flags it; these name the query instead.
"""

from __future__ import annotations

from typing import Any

import psycopg

Params = tuple[Any, ...] | list[Any] | dict[str, Any]


def one(conn: psycopg.Connection[Any], query: Any, params: Params | None = None) -> Any:
    """The query's first row (a tuple, or what the connection's row factory makes)."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, f"no row from {query!r}"
    return row


def scalar(conn: psycopg.Connection[Any], query: Any, params: Params | None = None) -> Any:
    """The first column of the query's first row."""
    return one(conn, query, params)[0]
