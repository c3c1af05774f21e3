"""Small per-batch frames whose values are data, not code; times travel as epoch micros."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def literal_frame(spark: SparkSession, columns: list[str], rows: list[tuple]) -> DataFrame:
    """A small DataFrame held in the plan as one JSON literal, parsed in the JVM.

    ``spark.createDataFrame(list)`` is backed by a Python RDD: every micro-batch that broadcasts
    it starts Python workers to unpickle the rows. One ``F.lit`` per value (the previous way)
    stays in the JVM but costs a Py4J call per value and an analysis of a thousand-element
    array: with 1,000 sensors, 4.6-11.5 s of every micro-batch, growing batch after batch
    (the benchmark's end-to-end phase, instrumented); with this, its steady rate went from
    4.1-5.1k to 11.6k events/s. Values: text, or UTC datetimes (carried as epoch micros).
    """
    if not rows:  # typed as text, like the sensor ids it stands for
        return spark.range(0).select(*(F.lit(None).cast("string").alias(c) for c in columns))
    times = {c for i, c in enumerate(columns) if isinstance(rows[0][i], datetime)}
    fields = ", ".join(f"`{c}`: {'bigint' if c in times else 'string'}" for c in columns)
    data = json.dumps(
        [
            {
                c: ((v - _EPOCH) // timedelta(microseconds=1) if c in times else v)
                for c, v in zip(columns, row, strict=True)
            }
            for row in rows
        ]
    )
    parsed = spark.range(1).select(F.inline(F.from_json(F.lit(data), f"array<struct<{fields}>>")))
    return parsed.select(
        *(F.timestamp_micros(c).alias(c) if c in times else F.col(c) for c in columns)
    )


def as_utc(micros: int) -> datetime:
    """Spark's unix_micros -> aware UTC datetime (no dependence on the Python process zone)."""
    return _EPOCH + timedelta(microseconds=micros)
