"""The benchmark's arithmetic and report: percentiles, batch attribution, the table. No timing."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from cityos.cli.bench import results_table
from cityos.streaming.bench import (
    TARGETS,
    BatchIndex,
    Params,
    Progress,
    first_offsets,
    percentile,
    read_batch_offsets,
    sink_rows,
    summarize,
)

# the offset log of a real query checkpoint (Spark 4.1.1, Kafka source V1), metadata shortened
OFFSETS_FILE = """v1
{"batchWatermarkMs":0,"batchTimestampMs":1795871139522,"conf":{"spark.sql.shuffle.partitions":"4"}}
{"b.e2e.traffic":{"0":%d,"1":%d,"2":%d,"3":%d}}
"""


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    rng = random.Random(q)
    values = [rng.expovariate(1.0) for _ in range(997)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_small_samples() -> None:
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_rejects_bad_input(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_summarize() -> None:
    summary = summarize([float(i) for i in range(1, 101)])
    assert summary["n"] == 100
    assert summary["p50_s"] == pytest.approx(50.5)
    assert summary["p95_s"] == pytest.approx(95.05)
    assert summary["max_s"] == 100.0


def test_batch_offsets_read_from_checkpoint_files(tmp_path: Path) -> None:
    for batch, ends in {0: (10, 0, 5, 7), 1: (20, 4, 5, 9), 10: (25, 4, 6, 9)}.items():
        (tmp_path / str(batch)).write_text(OFFSETS_FILE % ends)
    (tmp_path / ".1.crc").write_text("checksum")  # Hadoop writes these beside the log
    ends = read_batch_offsets(tmp_path, "b.e2e.traffic")
    assert ends == {
        0: {0: 10, 1: 0, 2: 5, 3: 7},
        1: {0: 20, 1: 4, 2: 5, 3: 9},
        10: {0: 25, 1: 4, 2: 6, 3: 9},
    }


def test_batch_index_attributes_offsets_to_ranges() -> None:
    # batch 10 after 1: ids sort numerically, not as text
    index = BatchIndex({0: {0: 10, 1: 0}, 1: {0: 20, 1: 4}, 10: {0: 25, 1: 4}})
    assert index.batch_of(0, 0) == 0
    assert index.batch_of(0, 9) == 0
    assert index.batch_of(0, 10) == 1
    assert index.batch_of(0, 24) == 10
    assert index.batch_of(1, 0) == 1  # partition 1 had nothing in batch 0
    assert index.batch_of(1, 3) == 1
    assert index.batch_of(0, 25) is None  # not read by any batch yet
    assert index.batch_of(1, 4) is None
    assert index.batch_of(7, 0) is None  # a partition no batch saw


def test_progress_span_covers_first_start_to_last_end() -> None:
    progress = Progress()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def event(name: str, start: datetime, ms: int, rows: int) -> SimpleNamespace:
        stamp = start.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return SimpleNamespace(
            name=name, timestamp=stamp, durationMs={"triggerExecution": ms}, numInputRows=rows
        )

    progress.add(event("q", t0, 1500, 100))
    progress.add(event("q", t0 + timedelta(seconds=2), 3000, 50))
    progress.add(event("q", t0 + timedelta(seconds=9), 100, 0))  # an empty batch: not counted
    progress.add(event("other", t0 - timedelta(seconds=5), 1000, 7))
    assert progress.span("q") == (5.0, 150)
    assert progress.span() == (10.0, 157)
    assert progress.span("missing") == (0.0, 0)
    # steady state: from the second batch with rows (t0+2 s) to the last end (t0+5 s)
    assert progress.steady("q") == (3.0, 50)
    assert progress.steady("other") == (0.0, 0)  # one batch only: no steady state yet


def test_sink_rows_have_distinct_window_keys() -> None:
    sensors = [f"load-tr-{i:05d}" for i in range(7)]
    rows = sink_rows(sensors, 100)
    assert len(rows) == 100
    assert len({(r[0], r[1]) for r in rows}) == 100
    assert all(r[2] - r[1] == timedelta(minutes=5) and r[1].tzinfo is UTC for r in rows)


@pytest.mark.parametrize(
    ("sizes", "n", "expected"),
    [
        ({0: (0, 100), 1: (0, 100)}, 50, {0: (0, 25), 1: (0, 25)}),
        ({0: (0, 100), 1: (5, 15), 2: (0, 100)}, 90, {0: (0, 40), 1: (5, 15), 2: (0, 40)}),
        ({0: (0, 100), 1: (0, 100), 2: (0, 100)}, 10, {0: (0, 3), 1: (0, 3), 2: (0, 4)}),
        ({0: (7, 9), 1: (0, 0)}, 1000, {0: (7, 9), 1: (0, 0)}),  # fewer than asked
    ],
)
def test_first_offsets_take_evenly_from_partitions(sizes, n, expected) -> None:  # noqa: ANN001
    assert first_offsets(sizes, n) == expected


def test_quick_is_smaller_than_default() -> None:
    quick, full = Params.quick(), Params()
    assert quick.producer_events < full.producer_events
    assert quick.e2e_events < full.e2e_events
    assert quick.latency_seconds < full.latency_seconds


def test_table_shows_every_figure_and_target_verdicts() -> None:
    report = {
        "run": "bench1",
        "machine": {"cores": 2, "load_avg_1m": 3.2},
        "targets": TARGETS,
        "results": {
            "producer": [
                {
                    "client": "confluent",
                    "events": 10,
                    "seconds": 1.0,
                    "events_per_s": 10.0,
                    "mb_per_s": 0.1,
                }
            ],
            "end_to_end": {
                "raw": [
                    {
                        "reader": "spark",
                        "events": 10,
                        "seconds": 1.0,
                        "events_per_s": 100.0,
                        "mb_per_s": 1.0,
                    }
                ],
                "pipeline": {"events": 10, "batches": 2, "seconds": 1.0, "events_per_s": 60.0},
                "pipeline_vs_spark_raw": 0.6,
            },
            "steps": {
                "events": 10,
                "reps": 3,
                "steps": [
                    {"step": "read", "median_s": 0.5, "events_per_s": 20.0, "vs_read": 1.0},
                    {"step": "parse", "median_s": 2.0, "events_per_s": 5.0, "vs_read": 0.25},
                ],
            },
            "latency": {
                "n": 5,
                "achieved_rate": 900.0,
                "target_rate": 1000.0,
                "seconds": 10.0,
                "trigger_seconds": 2.0,
                "p50_s": 1.0,
                "p95_s": 6.0,
            },
            "sink": [{"method": "copy", "rows": 5, "seconds": 0.1, "rows_per_s": 50.0}],
        },
    }
    console = Console(record=True, width=250)
    console.print(results_table(report))
    text = console.export_text()
    assert "producer confluent" in text
    assert "raw consume, spark" in text
    assert ">= 50,000 ev/s: NOT met" in text
    assert ">= 0.5: met" in text
    assert "p95 <= 5.0 s: NOT met" in text
    assert "merge_batch, copy" in text
    assert "one batch as a Spark job, read (median of 3)" in text
    assert "one batch as a Spark job, + parse" in text and "0.25 of read" in text
    json.dumps(report)  # the report is plain JSON
