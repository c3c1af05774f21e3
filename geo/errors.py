"""The one exception root of the geo library, and the errors that carry data.

geo/ imports nothing of CityOS, so ``GeoError`` derives from ``Exception`` directly; the CLI
(``cityos.cli.geo``) turns it into a message and an exit code.
"""

from __future__ import annotations

from pathlib import Path


class GeoError(Exception):
    """Root of every error the geo library raises on purpose."""


class SpecError(GeoError):
    """A city spec file is missing, malformed, or asks for something the data does not have."""

    def __init__(self, spec: Path | str, problem: str) -> None:
        self.spec = str(spec)
        self.problem = problem
        super().__init__(f"city spec {self.spec}: {problem}")


class PointError(GeoError):
    """A sensor or intersection row cannot be registered; ``row`` is the offending input."""

    def __init__(self, table: str, row: object, problem: str) -> None:
        self.table = table
        self.row = row
        super().__init__(f"{table}: {problem} in row {row!r}")
