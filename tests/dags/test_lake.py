"""streaming/lake.py on a real lake slice (Beijing PRSA readings in the streaming job's layout)."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from cityos.settings import Settings
from cityos.streaming import lake
from tests.dags.realdata import air_events, lake_rows, write_batch, write_day
from tests.jobs.conftest import spark  # noqa: F401 - the shared local SparkSession

DAY = datetime(2014, 1, 15, tzinfo=UTC)


def _table(folder: Path) -> pa.Table:
    """Every lake row under a folder, in Kafka order, columns sorted (comparable)."""
    table = pa.concat_tables(
        [pq.ParquetFile(f).read() for f in lake.data_files(folder)], promote_options="permissive"
    )
    table = table.select(sorted(table.column_names))
    return table.sort_by([("partition", "ascending"), ("offset", "ascending")])


@pytest.fixture
def topic_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "lake" / "environment"
    write_day(folder, DAY, first_batch=0, per_batch=timedelta(hours=1))
    return folder


def test_compaction_keeps_every_row_in_one_folder(topic_dir: Path) -> None:
    date_dir = topic_dir / "date=2014-01-15"
    before = _table(date_dir)
    assert before.num_rows == 12 * 24  # 12 stations, hourly
    assert len(lake.batch_folders(date_dir)) == 24

    result = lake.compact_date(date_dir)

    assert [p.name for p in date_dir.iterdir()] == ["batch=-1"]
    assert result.batches == 24 and result.files_before >= 24 and result.files_after == 1
    assert result.rows_before == result.rows_after == before.num_rows
    after = _table(date_dir)
    assert after.equals(before)  # same rows, same values
    event_times = pq.ParquetFile(lake.data_files(date_dir)[0]).read()["event_time"].to_pylist()
    assert event_times == sorted(event_times)
    assert not [p for p in topic_dir.iterdir() if p.name.startswith(".")]  # nothing left over


def test_compacted_lake_reads_as_a_hive_dataset(topic_dir: Path) -> None:
    lake.compact_date(topic_dir / "date=2014-01-15")
    table = ds.dataset(topic_dir, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 288
    assert set(table["batch"].to_pylist()) == {-1}
    assert table.schema.field("event_time").type == pa.timestamp("us", tz="UTC")


def test_compaction_is_idempotent_and_takes_late_batches(topic_dir: Path) -> None:
    date_dir = topic_dir / "date=2014-01-15"
    lake.compact_date(date_dir)
    compacted = _table(date_dir)

    again = lake.compact_date(date_dir)
    assert again.skipped and _table(date_dir).equals(compacted)

    late = lake_rows(
        air_events(DAY + timedelta(hours=23), DAY + timedelta(days=1), ["Dongsi"]),
        "environment",
        first_offset=10_000,
    )
    write_batch(topic_dir, "2014-01-15", 99, late)
    result = lake.compact_date(date_dir)
    assert not result.skipped and result.rows_after == 288 + len(late)
    assert [p.name for p in date_dir.iterdir()] == ["batch=-1"]


def test_rows_replayed_into_two_batches_are_kept_once(topic_dir: Path) -> None:
    date_dir = topic_dir / "date=2014-01-15"
    shutil.copytree(date_dir / "batch=3", date_dir / "batch=40")  # a batch that landed twice
    before = _table(date_dir)
    result = lake.compact_date(date_dir)
    assert before.num_rows > 288
    assert result.rows_before == before.num_rows and result.rows_after == 288
    assert _table(date_dir).num_rows == 288


def test_a_failed_swap_leaves_the_date_as_it_was(topic_dir: Path, monkeypatch) -> None:
    date_dir = topic_dir / "date=2014-01-15"
    before = _table(date_dir)

    def broken(a: Path, b: Path) -> None:
        raise lake.LakeError("no exchange here")

    monkeypatch.setattr(lake, "exchange", broken)
    with pytest.raises(lake.LakeError):
        lake.compact_date(date_dir)
    assert _table(date_dir).equals(before)
    assert len(lake.batch_folders(date_dir)) == 24
    # the staged folder is hidden from readers and cleaned up by the next run
    assert lake.clean_stale(topic_dir) == 1


def _late_batch(topic_dir: Path, batch: int) -> list[dict]:
    """A batch of the day's last hour, as the streaming job writes it during a compaction."""
    rows = lake_rows(
        air_events(DAY + timedelta(hours=23), DAY + timedelta(days=1), ["Dongsi"]),
        "environment",
        first_offset=10_000,
    )
    write_batch(topic_dir, "2014-01-15", batch, rows)
    return rows


def test_a_batch_written_during_compaction_is_moved_not_lost(topic_dir: Path, monkeypatch) -> None:
    date_dir = topic_dir / "date=2014-01-15"
    swap = lake.exchange
    late: list[dict] = []

    def streaming_job_writes_then_swap(a: Path, b: Path) -> None:
        if not late:
            late.extend(_late_batch(topic_dir, 99))  # after the read, before the swap
        swap(a, b)

    monkeypatch.setattr(lake, "exchange", streaming_job_writes_then_swap)
    result = lake.compact_date(date_dir)

    assert result.rows_after == 288 and late
    assert sorted(p.name for p in date_dir.iterdir()) == ["batch=-1", "batch=99"]
    assert _table(date_dir).num_rows == 288 + len(late)
    assert not [p for p in topic_dir.iterdir() if p.name.startswith(".")]
    assert lake.compact_date(date_dir).rows_after == 288 + len(late)  # the next run takes it


def test_a_concurrent_run_waits_instead_of_deleting_a_compaction_in_progress(
    topic_dir: Path, monkeypatch
) -> None:
    """A second run (an overlapping backfill run) cleans stale folders of the same topic while a
    compaction has swapped but not yet moved the batches written meanwhile: it must wait."""
    write_day(topic_dir, DAY + timedelta(days=1), 100, timedelta(hours=6), first_offset=50_000)
    date_dir = topic_dir / "date=2014-01-15"
    swap = lake.exchange
    late: list[dict] = []
    other: dict[str, object] = {}

    def other_run() -> None:
        try:
            other["result"] = lake.compact([topic_dir], DAY + timedelta(days=1), DAY + timedelta(2))
        except Exception as err:  # reported by the assertion below
            other["error"] = err

    thread = threading.Thread(target=other_run)

    def swap_while_another_run_starts(a: Path, b: Path) -> None:
        if b != date_dir:  # the other run's own swap
            return swap(a, b)
        late.extend(_late_batch(topic_dir, 99))
        swap(a, b)  # the late batch is now in the hidden swapped-out folder
        thread.start()
        thread.join(timeout=2)  # without the lock it deletes that folder meanwhile
        return None

    monkeypatch.setattr(lake, "exchange", swap_while_another_run_starts)
    lake.compact_date(date_dir)
    thread.join(timeout=60)

    assert _table(date_dir).num_rows == 288 + len(late)  # nothing lost
    assert "error" not in other and not thread.is_alive()
    assert [r.folder.name for r in other["result"]] == ["date=2014-01-16"]  # type: ignore[attr-defined]
    assert [p.name for p in (topic_dir / "date=2014-01-16").iterdir()] == ["batch=-1"]


def test_exchange_swaps_two_full_folders(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "x").mkdir(parents=True)
    (b / "y").mkdir(parents=True)
    lake.exchange(a, b)
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]


def test_compact_only_touches_the_interval(tmp_path: Path) -> None:
    topic_dir = tmp_path / "environment"
    write_day(topic_dir, DAY, 0, timedelta(hours=6))
    write_day(topic_dir, DAY + timedelta(days=1), 4, timedelta(hours=6), first_offset=1000)
    results = lake.compact([topic_dir], DAY + timedelta(days=1), DAY + timedelta(days=2))
    assert [r.folder.name for r in results] == ["date=2014-01-16"]
    assert len(lake.batch_folders(topic_dir / "date=2014-01-15")) == 4


def test_expire_deletes_dates_before_the_retention(tmp_path: Path) -> None:
    topic_dir = tmp_path / "environment"
    for offset_days in (0, 29, 30, 31, 45):
        day = DAY - timedelta(days=offset_days)
        rows = lake_rows(air_events(day, day + timedelta(hours=1), ["Dongsi"]), "environment")
        write_batch(topic_dir, day.date().isoformat(), 0, rows)
    end = DAY + timedelta(days=1)  # the run of 2014-01-15 keeps its 30 dates: 2013-12-17 on

    removed = lake.expire([topic_dir], keep_days=30, end=end)

    assert sorted(p.name for p in removed) == [
        "date=2013-12-01",
        "date=2013-12-15",
        "date=2013-12-16",
    ]
    kept = sorted(d.isoformat() for d in lake.date_folders(topic_dir))
    assert kept == ["2013-12-17", "2014-01-15"]
    assert lake.expire([topic_dir], keep_days=30, end=end) == []  # idempotent
    with pytest.raises(lake.LakeError):
        lake.expire([topic_dir], keep_days=0, end=end)


def test_a_retention_shorter_than_the_retrain_data_is_refused() -> None:
    def settings(**values: int) -> Settings:
        return Settings.model_validate(
            {"kafka_bootstrap": "localhost:9092", "database_url": "postgresql://u@h/db", **values}
        )

    # the retrain reads 14 days, holds out 24 h, and a rerun after the next expiry needs a day
    with pytest.raises(ValidationError, match=r"CITYOS_LAKE_RETENTION_DAYS=15 .* at least 16"):
        settings(lake_retention_days=15)
    assert settings(lake_retention_days=16).lake_retention_days == 16
    with pytest.raises(ValidationError, match="CITYOS_RETRAIN_LOOKBACK_DAYS=29"):
        settings(retrain_lookback_days=29)  # the default retention is 30 days
    with pytest.raises(ValidationError, match="CITYOS_RETRAIN_HOLDOUT_HOURS=25"):
        settings(lake_retention_days=16, retrain_holdout_hours=25)


def test_dates_in_an_interval() -> None:
    assert lake.dates_in(DAY, DAY + timedelta(days=1)) == [DAY.date()]
    assert lake.dates_in(DAY + timedelta(hours=23), DAY + timedelta(hours=25)) == [
        DAY.date(),
        (DAY + timedelta(days=1)).date(),
    ]
    assert lake.dates_in(DAY, DAY) == []


def test_spark_int96_timestamps_come_back_as_utc_microseconds(tmp_path: Path) -> None:
    """Spark writes timestamps as INT96; the compacted file keeps the same instants."""
    rows = lake_rows(air_events(DAY, DAY + timedelta(hours=3), ["Dongsi"]), "environment")
    folder = tmp_path / "environment" / "date=2014-01-15" / "batch=0"
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    naive = table.set_column(
        table.schema.get_field_index("event_time"),
        "event_time",
        table["event_time"].cast(pa.timestamp("ns")),
    )
    pq.write_table(naive, folder / "part-0.parquet", use_deprecated_int96_timestamps=True)
    assert pq.ParquetFile(folder / "part-0.parquet").schema.column(4).physical_type == "INT96"

    lake.compact_date(folder.parent)

    out = pq.ParquetFile(lake.data_files(folder.parent)[0]).read()
    assert out.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert out["event_time"].to_pylist() == [r["event_time"] for r in rows]


@pytest.mark.integration
def test_spark_reads_a_compacted_lake_as_it_read_the_batches(tmp_path: Path, spark) -> None:  # noqa: F811
    """The streaming job's own writers (stage_batch, write_lake) make the batches, after two
    written as before staging (no key/value columns); Spark reads both states.

    The session is the run's shared one (``tests/jobs/conftest.py``, with the project's jars):
    a session of its own would be the one every later test's ``getOrCreate`` returns."""
    from pyspark.sql import functions as F

    from cityos.streaming.jobs.sinks import stage_batch, staging_folder, write_lake

    rows = lake_rows(air_events(DAY, DAY + timedelta(days=1)), "environment")
    judged = spark.createDataFrame(pd_frame(rows)).withColumnRenamed("kafka_timestamp", "timestamp")
    judged = judged.withColumns(
        {  # as the job's judged rows: all valid, bytes for DLQ only
            "reason": F.lit(None).cast("string"),
            "key": F.lit(None).cast("binary"),
            "value": F.lit(None).cast("binary"),
        }
    )
    topic_dir = tmp_path / "environment"
    for batch in range(6):  # four hours a batch
        lo, hi = DAY + timedelta(hours=4 * batch), DAY + timedelta(hours=4 * (batch + 1))
        part = judged.where((F.col("event_time") >= lo) & (F.col("event_time") < hi))
        if batch < 2:  # as the job wrote the lake before staging: no key and value columns
            folder = topic_dir / "date=2014-01-15" / f"batch={batch}"
            part.drop("reason", "key", "value").withColumnRenamed(
                "timestamp", "kafka_timestamp"
            ).write.parquet(str(folder))
            continue
        staged = staging_folder(topic_dir, batch)
        stage_batch(part, staged)
        write_lake(staged, topic_dir, batch, ["2014-01-15"])

    def summary() -> tuple[list[tuple], Any]:
        df = spark.read.parquet(str(topic_dir))
        agg = df.groupBy("date").agg(
            F.count("*"),
            F.sum("offset"),
            F.sum(F.unix_micros("event_time")),
            F.sum(F.nanvl("pm25", F.lit(None).cast("double"))),  # pandas made gaps NaN
            F.countDistinct("sensor_id"),
        )
        return [tuple(r) for r in agg.collect()], df.schema["event_time"].dataType

    before = summary()
    assert before[0][0][1] == 288
    lake.compact_date(topic_dir / "date=2014-01-15")
    assert summary() == before


def pd_frame(rows: list[dict]):  # type: ignore[no-untyped-def]
    import pandas as pd

    return pd.DataFrame(rows)
