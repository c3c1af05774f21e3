"""The model registry: versioned model folders plus a row per version in ``model_registry``.

A version's folder holds ``model.json`` (version, detector configuration, training data range,
metrics) and ``states.parquet``: one trained detector state per (sensor, metric), with the end of
the data it has seen. Exactly one version of a family is ``production`` (a partial unique index
enforces it); promotion archives the previous one in the same transaction. The streaming job
polls :func:`production` and seeds its detectors from the new version's states, so a version's
folder is written once, under a hidden name renamed into place, and never rewritten.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cityos.anomaly.detector import Detector, DetectorConfig, DetectorError
from cityos.errors import CityOSError

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
STATES_FILE = "states.parquet"


class RegistryError(CityOSError):
    """A model version that is missing, unreadable or in the wrong state."""


@dataclass(frozen=True)
class ModelVersion:
    family: str
    version: str
    path: Path
    status: str
    metrics: dict[str, Any]
    data_start: datetime | None
    data_end: datetime | None
    created_at: datetime | None = None
    promoted_at: datetime | None = None
    note: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ModelVersion:
        return cls(**{**row, "path": Path(row["path"])})


def save_model(
    folder: Path,
    version: str,
    config: DetectorConfig,
    states: Iterable[tuple[str, str, Detector, datetime]],
    *,
    data_start: datetime,
    data_end: datetime,
    metrics: Mapping[str, Any],
) -> Path:
    """Write a version's folder: model.json and the trained states (sensor, metric, state, end).

    A version's files are never rewritten (the streaming job may be reading them): the folder is
    written under a hidden name beside it and renamed into place, complete; a folder that exists
    already is refused with :class:`RegistryError`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if folder.exists():
        raise RegistryError(f"model folder {folder} exists: a version's files are never rewritten")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = folder.parent / f".{folder.name}-{uuid.uuid4().hex[:8]}"
    staged.mkdir()
    try:
        rows = [(s, m, d.to_bytes(), end) for s, m, d, end in states]
        table = pa.table(
            {
                "sensor_id": pa.array([r[0] for r in rows], pa.string()),
                "metric": pa.array([r[1] for r in rows], pa.string()),
                "state": pa.array([r[2] for r in rows], pa.binary()),
                "seen_until": pa.array([r[3] for r in rows], pa.timestamp("us", tz="UTC")),
            }
        )
        pq.write_table(table, staged / STATES_FILE)
        (staged / MODEL_FILE).write_text(
            json.dumps(
                {
                    "version": version,
                    "config": asdict(config),
                    "data_start": data_start.isoformat(),
                    "data_end": data_end.isoformat(),
                    "metrics": dict(metrics),
                    "states": len(rows),
                },
                indent=2,
            )
        )
        staged.rename(folder)  # atomic; fails (ENOTEMPTY) if another run put the folder there
    except OSError as err:
        shutil.rmtree(staged, ignore_errors=True)
        raise RegistryError(f"cannot write model folder {folder}: {err}") from err
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return folder


class SeedStates:
    """The trained states of one version, by (sensor, metric), read once when it is adopted."""

    def __init__(self, states: dict[tuple[str, str], tuple[bytes, datetime]]) -> None:
        self._states = states

    @classmethod
    def open(cls, model: ModelVersion) -> SeedStates:
        import pyarrow.parquet as pq

        path = model.path / STATES_FILE
        try:
            table = pq.read_table(path).to_pydict()
        except (OSError, ValueError) as err:
            raise RegistryError(
                f"model {model.family}/{model.version}: cannot read {path}: {err}"
            ) from err
        states = {
            (s, m): (raw, end)
            for s, m, raw, end in zip(
                table["sensor_id"],
                table["metric"],
                table["state"],
                table["seen_until"],
                strict=True,
            )
        }
        return cls(states)

    def get(self, sensor: str, metric: str) -> tuple[Detector, datetime] | None:
        """The trained state of a series, or None (also for a state an older detector saved:
        the series then starts fresh, as one the model never saw)."""
        found = self._states.get((sensor, metric))
        if found is None:
            return None
        try:
            return Detector.from_bytes(found[0]), found[1]
        except DetectorError as err:
            log.warning("%s/%s: seed state not usable (%s)", sensor, metric, err)
            return None

    def __len__(self) -> int:
        return len(self._states)


# ----------------------------------------------------------------------------- the table
def register(
    conn: psycopg.Connection,
    family: str,
    version: str,
    path: Path,
    metrics: Mapping[str, Any],
    *,
    data_start: datetime | None,
    data_end: datetime | None,
    status: str = "candidate",
    note: str | None = None,
) -> ModelVersion:
    """Record a version; registering the same version again updates its path, metrics, training
    range and note (never its status: see :func:`set_status`)."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "INSERT INTO model_registry (family, version, path, status, metrics, data_start,"
            " data_end, note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (family, version) DO UPDATE SET path = excluded.path,"
            " metrics = excluded.metrics, data_start = excluded.data_start,"
            " data_end = excluded.data_end, note = excluded.note RETURNING *",
            (family, version, str(path), status, Jsonb(dict(metrics)), data_start, data_end, note),
        )
        return ModelVersion.from_row(cur.fetchone())  # type: ignore[arg-type]


def set_status(
    conn: psycopg.Connection, family: str, version: str, status: str, note: str | None = None
) -> ModelVersion:
    """Mark a version; ``production`` archives the family's current production version."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        if status == "production":
            cur.execute(
                "UPDATE model_registry SET status = 'archived' WHERE family = %s"
                " AND status = 'production' AND version <> %s",
                (family, version),
            )
        cur.execute(
            "UPDATE model_registry SET status = %s, note = coalesce(%s, note),"
            " promoted_at = CASE WHEN %s = 'production' THEN now() ELSE promoted_at END"
            " WHERE family = %s AND version = %s RETURNING *",
            (status, note, status, family, version),
        )
        row = cur.fetchone()
    if row is None:
        raise RegistryError(f"no model {family}/{version} in the registry")
    log.info("model %s/%s is now %s", family, version, status)
    return ModelVersion.from_row(row)


def find(conn: psycopg.Connection, family: str, version: str) -> ModelVersion | None:
    """A registered version, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM model_registry WHERE family = %s AND version = %s", (family, version)
        )
        row = cur.fetchone()
    return ModelVersion.from_row(row) if row else None


def production(conn: psycopg.Connection, family: str) -> ModelVersion | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM model_registry WHERE family = %s AND status = 'production'", (family,)
        )
        row = cur.fetchone()
    return ModelVersion.from_row(row) if row else None


def versions(conn: psycopg.Connection, family: str) -> list[ModelVersion]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM model_registry WHERE family = %s ORDER BY created_at DESC", (family,)
        )
        return [ModelVersion.from_row(r) for r in cur.fetchall()]
