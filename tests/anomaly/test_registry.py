"""anomaly/registry.py: a version's files are written once and atomically; its row follows them."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cityos.anomaly.detector import Detector, DetectorConfig
from cityos.anomaly.registry import (
    ModelVersion,
    RegistryError,
    SeedStates,
    find,
    register,
    save_model,
    set_status,
)
from cityos.db import connect

END = datetime(2014, 1, 15, tzinfo=UTC)


def _trained(sensor: str) -> tuple[str, str, Detector, datetime]:
    detector = Detector(DetectorConfig())
    hour = timedelta(hours=1)
    for i in range(48):
        detector.update(END - (48 - i) * hour, 10 + 5 * math.sin(i * math.pi / 12))
    return sensor, "pm25", detector, END


def _save(folder: Path, *sensors: str) -> Path:
    return save_model(
        folder,
        folder.name,
        DetectorConfig(),
        [_trained(s) for s in sensors],
        data_start=END - timedelta(days=2),
        data_end=END,
        metrics={"series": len(sensors)},
    )


def test_a_version_folder_is_written_once_and_never_rewritten(tmp_path: Path) -> None:
    folder = tmp_path / "anomaly" / "v1"
    _save(folder, "a", "b")
    files = {p.name: (p.read_bytes(), p.stat().st_ino) for p in folder.iterdir()}
    assert sorted(files) == ["model.json", "states.parquet"]
    assert [p.name for p in folder.parent.iterdir()] == ["v1"]  # nothing staged left behind

    # the streaming job may be reading it: another save to the same version is refused
    with pytest.raises(RegistryError, match=r"v1 exists: a version's files are never rewritten"):
        _save(folder, "c")
    assert {p.name: (p.read_bytes(), p.stat().st_ino) for p in folder.iterdir()} == files
    assert [p.name for p in folder.parent.iterdir()] == ["v1"]
    model = ModelVersion("anomaly", "v1", folder, "production", {}, None, END)
    assert len(SeedStates.open(model)) == 2  # what the streaming job reads


def test_a_failed_write_leaves_no_version_folder(tmp_path: Path) -> None:
    folder = tmp_path / "anomaly" / "v2"

    class Broken(Detector):
        def to_bytes(self) -> bytes:
            raise OSError("disk full")

    with pytest.raises(RegistryError, match="disk full"):
        save_model(
            folder,
            "v2",
            DetectorConfig(),
            [("a", "pm25", Broken(DetectorConfig()), END)],
            data_start=END - timedelta(days=1),
            data_end=END,
            metrics={},
        )
    assert list(folder.parent.iterdir()) == []  # no half-written folder, visible or hidden


@pytest.mark.integration
def test_registering_again_records_the_new_path_and_range(
    database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    with connect(database_url, pg_schema, autocommit=True) as conn:
        register(
            conn,
            "anomaly",
            "v1",
            tmp_path / "old",
            {"series": 1},
            data_start=END - timedelta(days=14),
            data_end=END,
        )
        set_status(conn, "anomaly", "v1", "production", note="first")
        again = register(
            conn,
            "anomaly",
            "v1",
            tmp_path / "new",
            {"series": 2},
            data_start=END - timedelta(days=3),
            data_end=END,
            note="again",
        )
        row = find(conn, "anomaly", "v1")
        assert find(conn, "anomaly", "v9") is None
    assert again == row and row is not None
    assert (row.path, row.data_start, row.metrics) == (
        tmp_path / "new",
        END - timedelta(days=3),
        {"series": 2},
    )
    assert row.status == "production"  # registering never changes a status
