"""Connections and versioned migrations.

Migrations are numbered SQL files in ``migrations/``, applied in order, each once, inside a
transaction, recorded in ``schema_migrations`` of the target schema. A schema other than
``public`` (tests use one per test) gets the same tables, found through ``search_path``.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def psycopg_url(url: str) -> str:
    """psycopg takes postgresql:// URLs; accept the postgres:// spelling too."""
    return "postgresql://" + url.split("://", 1)[1]


def connect(url: str, schema: str | None = None, **kwargs: object) -> psycopg.Connection:
    """A connection whose search_path starts at ``schema`` (when given), in UTC.

    timestamptz values come back in the session's TimeZone: pinned, they are UTC whatever the
    server's, database's or role's setting, so formatted ids ("...Z") and arithmetic across a
    DST change mean what they say. A client's ``PGTZ`` is sent after these options and would
    win: the zone the server reports is checked, and set (and committed) again if it is not
    UTC, at the cost of one round trip for such a client only."""
    options = "-c TimeZone=UTC" + (f" -c search_path={schema},public" if schema else "")
    conn = psycopg.connect(psycopg_url(url), options=options, **kwargs)  # type: ignore[arg-type]
    if conn.info.parameter_status("TimeZone") != "UTC":
        conn.execute("SET TimeZone = 'UTC'")
        if not conn.autocommit:
            conn.commit()  # a rollback of the caller's first transaction must not undo it
    return conn


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("cityos.db") / "migrations"
    found = sorted(p.name for p in folder.iterdir() if _MIGRATION.match(p.name))
    return [(name, (folder / name).read_text()) for name in found]


def migrate(url: str, schema: str = "public") -> list[str]:
    """Apply pending migrations to ``schema``; returns the names applied now."""
    applied_now: list[str] = []
    with connect(url, schema=schema, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        for name, text in _migrations():
            if name in done:
                continue
            with conn.transaction():
                conn.execute(text)  # type: ignore[arg-type]
                conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            log.info("applied migration %s to schema %s", name, schema)
            applied_now.append(name)
    return applied_now
