"""The serving windows of an interval, recomputed from the lake's raw events.

The lake (``streaming/lake.py``) keeps every valid event the streaming job merged, with its Kafka
coordinates. :func:`lake_serving` turns the events of ``[start, end)`` into ``traffic_5m`` and
``air_quality_1h`` rows with the streaming job's own code, so they are the serving tables'
numbers by construction, not by a second formula:

1. **events**: the interval's ``<lake>/<topic>/date=D/batch=N`` folders (a compacted
   ``batch=-1`` included; hidden folders and Spark's markers skipped), one row per Kafka
   ``(topic, partition, offset)`` — a batch replayed after a crash can land twice;
2. **partial sums** per window: ``windows.traffic_partials`` / ``air_partials``, collected with
   ``sinks.partial_rows``, exactly as a micro-batch does;
3. **serving rows**: the job's merge (``sinks.merge_traffic`` / ``merge_air``: the
   vehicle-weighted speed, the occupancy, the congestion index from the sensor's speed limit, the
   city's AQI) adds the sums into accumulators and serves the rows — here into temporary tables
   named like the real ones, which ``pg_temp`` placed first in the search path makes the ones
   every unqualified name means, inside a transaction that is always rolled back.

Inside the ``with`` block, any query of the connection that names ``traffic_5m`` or
``air_quality_1h`` reads the lake's windows of the interval (the sensor registry, speed limits and
cities are the real tables); after it nothing of the database has changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from cityos.streaming import lake
from cityos.streaming.lake import LakeError
from cityos.topics import Topics

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


class LakeDataMissing(LakeError):
    """The lake holds no events of an interval that was asked of it."""


@dataclass(frozen=True)
class ServingTable:
    """A serving table the lake can rebuild: its topic, partials and the job's merge."""

    table: str
    topic: str  # cityos.topics.Topics attribute
    accumulator: str
    partials: Callable[[DataFrame], DataFrame]
    partial_columns: tuple[str, ...]
    merge: Callable[[psycopg.Cursor, list[tuple[Any, ...]], str], None]


def serving_tables() -> tuple[ServingTable, ...]:
    """The two windowed tables (imported on call: pyspark is loaded only by those who read)."""
    from cityos.streaming.jobs.sinks import (
        AIR_PARTIALS,
        TRAFFIC_PARTIALS,
        merge_air,
        merge_traffic,
    )
    from cityos.streaming.jobs.windows import air_partials, traffic_partials

    return (
        ServingTable(
            "traffic_5m",
            "traffic",
            "traffic_5m_acc",
            traffic_partials,
            TRAFFIC_PARTIALS,
            merge_traffic,
        ),
        ServingTable(
            "air_quality_1h",
            "environment",
            "air_quality_1h_acc",
            air_partials,
            AIR_PARTIALS,
            merge_air,
        ),
    )


@dataclass
class LakeRead:
    """What one :func:`lake_serving` read: folders, files and windows per table, seconds."""

    lake_dir: Path
    start: datetime
    end: datetime
    files: int = 0
    windows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # spark (read+windows), postgres

    def summary(self) -> dict[str, Any]:
        return {
            "source": "lake",
            "lake_dir": str(self.lake_dir),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "files": self.files,
            "windows": dict(self.windows),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def event_files(topic_dir: Path, start: datetime, end: datetime) -> list[Path]:
    """Parquet files of the dates holding events of ``[start, end)`` (missing dates: none)."""
    folders = lake.date_folders(topic_dir)
    return [
        f
        for day in lake.dates_in(start, end)
        if day in folders
        for batch in lake.batch_folders(folders[day])
        for f in lake.data_files(batch)
    ]


def read_events(spark: SparkSession, files: Sequence[Path], topic_key: str) -> DataFrame:
    """The lake rows of ``files``, once per Kafka coordinate, with the job's column types."""
    from pyspark.sql import types as T

    from cityos.streaming.jobs.spec import TOPIC_SPECS, topic_fields

    schema = T.StructType(
        [
            T.StructField("topic", T.StringType()),
            T.StructField("partition", T.IntegerType()),
            T.StructField("offset", T.LongType()),
            T.StructField("event_time", T.TimestampType()),
            T.StructField("sensor_id", T.StringType()),
            *(T.StructField(n, t) for n, t in topic_fields(TOPIC_SPECS[topic_key]).items()),
        ]
    )
    rows = spark.read.schema(schema).parquet(*(str(f) for f in files))
    return rows.dropDuplicates(list(lake.DEDUP_KEYS))


def lake_partials(
    spark: SparkSession,
    lake_dir: Path,
    topics: Topics,
    start: datetime,
    end: datetime,
    read: LakeRead | None = None,
) -> dict[str, list[tuple[Any, ...]]]:
    """table -> partial-sum rows of the windows starting in ``[start, end)``, from the lake."""
    from pyspark.sql import functions as F

    from cityos.streaming.jobs.sinks import partial_rows

    read = read or LakeRead(lake_dir, start, end)
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table in serving_tables():
        files = event_files(lake_dir / getattr(topics, table.topic), start, end)
        read.files += len(files)
        if not files:
            out[table.table] = []
            continue
        events = read_events(spark, files, table.topic)
        windows = table.partials(events).where(
            (F.col("window_start") >= F.lit(start)) & (F.col("window_start") < F.lit(end))
        )
        out[table.table] = partial_rows(windows, table.partial_columns)
    return out


def _shadow(cur: psycopg.Cursor, tables: Sequence[ServingTable]) -> None:
    """Empty temporary copies of the serving and accumulator tables (keys, checks, defaults),
    found first by every unqualified name until the transaction ends."""
    for t in tables:
        for name in (t.table, t.accumulator):
            cur.execute(
                sql.SQL("CREATE TEMP TABLE {0} (LIKE {1}.{0} INCLUDING ALL) ON COMMIT DROP").format(
                    sql.Identifier(name), sql.Identifier(_schema_of(cur, name))
                )
            )
    cur.execute(
        "SELECT set_config('search_path', 'pg_temp, ' || current_setting('search_path'), true)"
    )


def _schema_of(cur: psycopg.Cursor, table: str) -> str:
    found = cur.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(%s)",
        (table,),
    ).fetchone()
    if found is None:
        raise LakeError(f"no table {table} in the search path: are the migrations applied?")
    return found[0]


@contextmanager
def lake_serving(
    conn: psycopg.Connection,
    spark: SparkSession,
    lake_dir: Path,
    topics: Topics,
    start: datetime,
    end: datetime,
) -> Iterator[LakeRead]:
    """Within the block, ``traffic_5m`` and ``air_quality_1h`` of ``conn`` hold the windows of
    ``[start, end)`` computed from the lake; rolled back at the end (see the module docstring)."""
    start, end = lake.plain_utc(start), lake.plain_utc(end)
    read = LakeRead(lake_dir, start, end)
    began = time.monotonic()
    partials = lake_partials(spark, lake_dir, topics, start, end, read)
    read.seconds["spark"] = time.monotonic() - began
    began = time.monotonic()
    tables = serving_tables()
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        _shadow(cur, tables)
        for table in tables:
            rows = partials[table.table]
            if rows:
                table.merge(cur, rows, "copy")
            read.windows[table.table] = len(rows)
        read.seconds["postgres"] = time.monotonic() - began
        log.info(
            "lake %s, %s .. %s: %d files -> %s windows (spark %.2f s, postgres %.2f s)",
            lake_dir,
            start.isoformat(),
            end.isoformat(),
            read.files,
            read.windows,
            read.seconds["spark"],
            read.seconds["postgres"],
        )
        yield read
