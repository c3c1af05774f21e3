"""Retraining from the lake, on real events that went through the real pipeline.

Fifteen days of Beijing PRSA readings and an hour of the Cologne twin (SUMO) are published to
Kafka and streamed by the job into PostgreSQL and the lake (tests/anomaly/streamed.py). The lake's
windows must be the serving tables' windows; retraining reads the lake, registers, compares on a
held-out day and promotes only if better; it never replaces a newer production model, and a rerun
of the identical training changes nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from cityos.anomaly.detector import Detector, DetectorConfig
from cityos.anomaly.registry import find, production, set_status, versions
from cityos.anomaly.retrain import SERIES, _holdout, model_version, read_series, retrain
from cityos.db import connect, migrate
from cityos.settings import Settings
from cityos.streaming import lake
from cityos.streaming.lake_windows import LakeDataMissing, lake_serving
from cityos.topics import Topics
from tests.anomaly.streamed import Streamed, stream, stream_settings
from tests.jobs.conftest import spark  # noqa: F401 - the shared local SparkSession
from tests.sql import scalar

AIR_FROM = datetime(2014, 1, 1, tzinfo=UTC)
AIR_TO = datetime(2014, 1, 16, tzinfo=UTC)
TWIN_START = datetime(2014, 1, 15, 10, tzinfo=UTC)  # 18:00 in Beijing, 11:00 in Cologne
DAY = datetime(2014, 1, 15, tzinfo=UTC)


@pytest.fixture(scope="module")
def streamed(
    stack,
    database_url: str,
    kafka_bootstrap: str,
    spark,  # noqa: F811
    tmp_path_factory,
) -> Iterator[Streamed]:
    """One pipeline run shared by the module: its own schema, topics, state and lake."""
    from cityos.stack import delete_topics, ensure_topics

    schema = f"t_{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:8]}.")
    migrate(database_url, schema)
    ensure_topics(
        kafka_bootstrap,
        topics.all(),
        partitions=stack.config.kafka_partitions,
        retention_ms=stack.config.retention_ms,
    )
    settings = stream_settings(
        {
            "database_url": database_url,
            "database_schema": schema,
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": topics.prefix,
            "kafka_partitions": stack.config.kafka_partitions,
            "state_dir": tmp_path_factory.mktemp("retrain-state"),
        }
    )
    try:
        yield stream(settings, spark, AIR_FROM, AIR_TO, TWIN_START)
    finally:
        delete_topics(kafka_bootstrap, topics.all())
        with connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _conn(streamed: Streamed):
    s = streamed.settings
    return connect(s.database_url.get_secret_value(), s.database_schema, autocommit=True)


def _lake_series(conn, streamed: Streamed, spark, start: datetime, end: datetime):  # noqa: F811
    s = streamed.settings
    with lake_serving(conn, spark, s.lake_dir, Topics(s.topic_prefix), start, end) as read:
        return read_series(conn, start, end), read


def assert_same_series(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, points in want.items():
        mine = got[key]
        assert [(p[0], p[1]) for p in mine] == [(p[0], p[1]) for p in points], key
        for p, q in zip(mine, points, strict=True):
            assert math.isclose(p[2], q[2], rel_tol=1e-9, abs_tol=1e-9), (key, p, q)


def _rows(conn, table: str, start: datetime, end: datetime) -> int:
    query = sql.SQL("SELECT count(*) FROM {} WHERE window_start >= %s AND window_start < %s")
    return scalar(conn, query.format(sql.Identifier(table)), (start, end))


@pytest.mark.integration
def test_the_lake_windows_are_the_serving_windows(streamed: Streamed, spark) -> None:  # noqa: F811
    assert streamed.batches > 2  # windows were merged across micro-batches
    with _conn(streamed) as conn:
        serving = read_series(conn, AIR_FROM, AIR_TO)
        counts = {t: _rows(conn, t, AIR_FROM, AIR_TO) for t, _ in SERIES}
        from_lake, read = _lake_series(conn, streamed, spark, AIR_FROM, AIR_TO)
        assert {t: _rows(conn, t, AIR_FROM, AIR_TO) for t, _ in SERIES} == counts  # untouched

    assert_same_series(from_lake, serving)
    assert read.windows == counts
    assert counts["traffic_5m"] == 27 * 12  # the twin's hour: 27 detectors, 12 windows each
    assert counts["air_quality_1h"] >= 12 * 24 * 15 * 0.95 + 8  # Beijing's hours, Cologne's
    metrics = {m for _, m in serving}
    assert metrics == {m for _, ms in SERIES for m in ms}
    # the twin counted vehicles, so speeds are vehicle-weighted means of several readings
    counted = [v for (s, m), pts in serving.items() if m == "vehicle_count" for *_, v in pts]
    assert max(counted) > 0

    # a part of a day, starting inside a window: only windows starting in the interval
    start, end = TWIN_START + timedelta(minutes=17), TWIN_START + timedelta(minutes=47)
    with _conn(streamed) as conn:
        part, _ = _lake_series(conn, streamed, spark, start, end)
        assert_same_series(part, read_series(conn, start, end))
    assert {p[0].minute for pts in part.values() for p in pts} == {20, 25, 30, 35, 40, 45}


@pytest.mark.integration
def test_replayed_batches_and_compaction_change_nothing(
    streamed: Streamed,
    spark,  # noqa: F811
) -> None:
    s = streamed.settings
    assert s.lake_dir is not None  # filled in by Settings
    date_dir = s.lake_dir / Topics(s.topic_prefix).traffic / "date=2014-01-15"
    first = lake.batch_folders(date_dir)[0]
    shutil.copytree(first, date_dir / "batch=999")  # a batch replayed after a crash, twice
    start, end = DAY, DAY + timedelta(days=1)
    with _conn(streamed) as conn:
        serving = read_series(conn, start, end)
        twice, _ = _lake_series(conn, streamed, spark, start, end)
        assert_same_series(twice, serving)

        result = lake.compact_date(date_dir)  # what the retention DAG does to a day
        assert [p.name for p in date_dir.iterdir()] == ["batch=-1"]
        assert result.rows_after < result.rows_before
        compacted, read = _lake_series(conn, streamed, spark, start, end)
        assert_same_series(compacted, serving)
    assert read.files >= 1


@pytest.fixture
def registry(streamed: Streamed, tmp_path: Path) -> Iterator[Settings]:
    """The module's settings with an empty registry and a model folder of the test's own."""
    with _conn(streamed) as conn:
        conn.execute("DELETE FROM model_registry")
    yield streamed.settings.model_copy(update={"model_dir": tmp_path / "models"})
    with _conn(streamed) as conn:
        conn.execute("DELETE FROM model_registry")


def _row(conn, version: str) -> tuple:
    """Everything the registry holds of a version."""
    return conn.execute("SELECT * FROM model_registry WHERE version = %s", (version,)).fetchone()


def _files(folder: Path) -> dict[str, tuple]:
    """A version folder's files: bytes, inode and modification time (a rewrite changes them)."""
    return {
        p.name: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
    }


@pytest.mark.integration
def test_retrain_trains_from_the_lake_promotes_and_is_idempotent(
    streamed: Streamed,
    registry: Settings,
    spark,  # noqa: F811
) -> None:
    settings, lookback = registry, timedelta(days=7)
    with _conn(streamed) as conn:
        expected = read_series(conn, DAY - lookback, DAY)
        expected_next = read_series(
            conn, DAY + timedelta(days=1) - lookback, DAY + timedelta(days=1)
        )
    first = retrain(settings, DAY - timedelta(days=1), DAY, lookback=lookback, spark=spark)
    assert first["promoted"] and first["reason"] == "no model in production"
    assert first["status"] == "production" and not first["unchanged"]
    assert first["read"]["source"] == "lake"
    assert first["read"]["lake_dir"] == str(settings.lake_dir)
    assert first["series"] == len(expected) > 12 * 4  # the stations' measured metrics
    assert first["sensors"] == 12
    assert first["candidate"]["mase"] > 0 and first["candidate"]["points"] > 0
    assert settings.model_dir is not None  # filled in by Settings
    folder = settings.model_dir / "anomaly" / first["version"]
    assert (folder / "model.json").exists() and (folder / "states.parquet").exists()
    assert [p.name for p in folder.parent.iterdir()] == [first["version"]]  # nothing staged left
    with _conn(streamed) as conn:
        recorded, files = _row(conn, first["version"]), _files(folder)

    # a rerun (Clear, a retry) of the identical training: the same version, nothing changes
    again = retrain(settings, DAY - timedelta(days=1), DAY, lookback=lookback, spark=spark)
    assert again["version"] == first["version"]
    assert again["unchanged"] and not again["promoted"] and again["status"] == "production"
    with _conn(streamed) as conn:
        assert _row(conn, first["version"]) == recorded  # promoted_at, note, range, metrics
        rows = conn.execute("SELECT version, data_start, data_end FROM model_registry").fetchall()
    assert rows == [(first["version"], DAY - lookback, DAY)]
    assert _files(folder) == files  # production's files were not rewritten

    # another look-back for the same interval is another training: another version, whose row
    # and files both record its own range; production (trained up to the same end) is left alone
    shorter = retrain(
        settings, DAY - timedelta(days=1), DAY, lookback=timedelta(days=6), spark=spark
    )
    assert shorter["version"] != first["version"]
    assert shorter["status"] == "candidate" and not shorter["promoted"]
    assert shorter["production"] is None and first["version"] in shorter["reason"]
    with _conn(streamed) as conn:
        row = find(conn, "anomaly", shorter["version"])
        assert _row(conn, first["version"]) == recorded
        assert production(conn, "anomaly").version == first["version"]  # type: ignore[union-attr]
    assert row is not None and (row.data_start, row.data_end) == (DAY - timedelta(days=6), DAY)
    model = json.loads((row.path / "model.json").read_text())
    assert model["data_start"] == row.data_start.isoformat()  # type: ignore[union-attr]
    assert _files(folder) == files

    # the next day (the twin's hour in it): compared with production on the held-out day
    nxt = retrain(settings, DAY, DAY + timedelta(days=1), lookback=lookback, spark=spark)
    assert nxt["production_version"] == first["version"]
    assert nxt["series"] == len(expected_next)  # with the twin's detectors and stations
    assert nxt["sensors"] == 12 + 27 + 8
    mine, theirs = nxt["candidate"]["mase"], nxt["production"]["mase"]
    assert nxt["production"]["points"] == nxt["candidate"]["points"]
    assert nxt["promoted"] == (mine < theirs)
    with _conn(streamed) as conn:
        live = production(conn, "anomaly")
        statuses = {v.version: v.status for v in versions(conn, "anomaly")}
    assert live is not None
    assert live.version == (nxt["version"] if nxt["promoted"] else first["version"])
    assert statuses[nxt["version"]] == ("production" if nxt["promoted"] else "rejected")
    assert statuses[shorter["version"]] == "candidate"
    assert sorted(statuses.values()).count("production") == 1


@pytest.mark.integration
def test_an_older_interval_never_touches_a_newer_production_model(
    streamed: Streamed,
    registry: Settings,
    spark,  # noqa: F811
) -> None:
    """A rerun or backfill of an older day, and a run whose held-out period production has
    learnt: registered as candidates; production and the other versions stay as they were."""
    settings, lookback, day = registry, timedelta(days=7), timedelta(days=1)
    older = retrain(settings, DAY - day, DAY, lookback=lookback, spark=spark)
    newer = retrain(settings, DAY, DAY + day, lookback=lookback, spark=spark)
    with _conn(streamed) as conn:
        if not newer["promoted"]:
            set_status(conn, "anomaly", newer["version"], "production", note="by hand")
        before = {v: _row(conn, v) for v in (older["version"], newer["version"])}
    assert before[older["version"]][3] == "archived"  # status

    # a backfill of the older day with another look-back: its own version, not compared
    backfill = retrain(settings, DAY - day, DAY, lookback=timedelta(days=6), spark=spark)
    assert backfill["version"] != older["version"]
    assert backfill["status"] == "candidate" and not backfill["promoted"]
    assert backfill["production"] is None
    assert f"not newer than production {newer['version']}" in backfill["reason"]

    # newer than production, but production learnt the held-out period: no fair comparison
    late = DAY + timedelta(hours=30)
    overlap = retrain(settings, late - day, late, lookback=lookback, spark=spark)
    assert overlap["status"] == "candidate" and not overlap["promoted"]
    assert overlap["production"] is None and "learnt part of the held-out" in overlap["reason"]

    with _conn(streamed) as conn:
        assert production(conn, "anomaly").version == newer["version"]  # type: ignore[union-attr]
        assert {v: _row(conn, v) for v in before} == before  # statuses, notes, promoted_at
        statuses = {v.version: v.status for v in versions(conn, "anomaly")}
    assert statuses[backfill["version"]] == statuses[overlap["version"]] == "candidate"


def test_a_detector_is_never_scored_on_points_it_has_learnt() -> None:
    """Points before the last learnt one would be stamped as the latest and forecast at the
    wrong time of day: refused, not scored."""
    start = datetime(2014, 1, 1, tzinfo=UTC)
    hour = timedelta(hours=1)
    points = [
        (start + i * hour, start + (i + 1) * hour, 10 + 5 * math.sin(i * math.pi / 12))
        for i in range(24 * 6)
    ]
    seen, unseen = points[: 24 * 5], points[24 * 5 :]
    detector = Detector(DetectorConfig())
    for w_start, _, value in seen:
        detector.update(w_start, value)
    with pytest.raises(ValueError, match="not after the detector's last learnt point"):
        _holdout(detector, seen[-24:])
    with pytest.raises(ValueError, match="not after"):
        _holdout(detector, seen[-1:])  # the last learnt point itself
    errors, _ = _holdout(detector, unseen)
    assert len(errors) == len(unseen)


def test_the_version_names_everything_that_defines_the_training() -> None:
    day = timedelta(days=1)

    def name(config: DetectorConfig | None = None, **changes: Any) -> str:
        given = {"interval_start": DAY - day, "lookback": 14 * day, "holdout": day}
        given |= {"data": "ab" * 32, **changes}
        return model_version(config or DetectorConfig(), interval_end=DAY, **given)

    first = name()
    assert first.startswith("20140115T0000Z-") and first.endswith("-" + "ab" * 3)
    assert name() == first  # the identical training: the same version
    others = {
        name(interval_start=DAY - 2 * day),
        name(lookback=7 * day),
        name(holdout=day / 2),
        name(data="cd" * 32),  # late events reached the lake since
        name(DetectorConfig(hidden=DetectorConfig().hidden + 1)),
    }
    assert first not in others and len(others) == 5


@pytest.mark.integration
def test_a_lake_without_the_interval_fails_naming_folder_and_interval(
    streamed: Streamed,
    spark,  # noqa: F811
    tmp_path: Path,
) -> None:
    empty = tmp_path / "lake"
    settings = streamed.settings.model_copy(update={"lake_dir": empty})
    # the serving tables hold the interval's windows; the lake does not: no training
    with pytest.raises(LakeDataMissing, match=rf"{empty}.*2014-01-14T00:00:00\+00:00 \.\. "):
        retrain(settings, DAY - timedelta(days=1), DAY, lookback=timedelta(days=7), spark=spark)
    later = DAY + timedelta(days=10)
    with pytest.raises(LakeDataMissing, match="holds no events of the interval"):
        retrain(streamed.settings, later - timedelta(days=1), later, spark=spark)


@pytest.mark.integration
def test_an_interval_without_room_for_a_holdout_is_refused(streamed: Streamed) -> None:
    with pytest.raises(ValueError, match="not longer than the held-out"):
        retrain(
            streamed.settings,
            DAY - timedelta(hours=1),
            DAY,
            lookback=timedelta(hours=12),
            holdout=timedelta(days=1),
        )


@pytest.mark.integration
def test_a_lookback_longer_than_the_lake_keeps_is_refused(streamed: Streamed) -> None:
    """`cityos anomaly retrain --lookback-days 29` with a 30-day retention: the lake may have
    expired its first dates; refused, naming the setting, rather than trained on less."""
    assert streamed.settings.lake_retention_days == 30
    with pytest.raises(
        ValueError, match=r"longer than the lake keeps dates \(CITYOS_LAKE_RETENTION_DAYS=30\)"
    ):
        retrain(streamed.settings, DAY - timedelta(days=1), DAY, lookback=timedelta(days=29))
