"""PostgreSQL access shared by every part: connections and versioned migrations."""

from cityos.db.core import connect, migrate, psycopg_url

__all__ = ["connect", "migrate", "psycopg_url"]
