"""A batch's report, read from Spark's progress (the fields of StreamingQueryProgress.json).

The progress dicts are shaped as pyspark hands them to a listener: offsets are the Kafka
source's JSON text, and a Java null arrives as the text "None". The real listener is exercised
end to end in tests/integration/test_commit_timing.py.
"""

from __future__ import annotations

from cityos.streaming.jobs.sinks import BatchReport


def progress(sources: list[dict], **fields: object) -> dict:
    return {
        "name": "aggregate-t.traffic",
        "batchId": 7,
        "batchDuration": 6576,
        "durationMs": {"triggerExecution": 6576},
        "sources": sources,
        **fields,
    }


def kafka(end: str, latest: str) -> dict:
    return {
        "description": "KafkaV2[Subscribe[t.traffic]]",
        "endOffset": end,
        "latestOffset": latest,
    }


def test_offsets_behind_sum_the_partitions_left_behind() -> None:
    report = BatchReport.of(
        progress(
            [kafka('{"t.traffic":{"0":25,"1":20,"2":5}}', '{"t.traffic":{"0":40,"1":20,"2":12}}')]
        )
    )
    assert report == BatchReport("aggregate-t.traffic", 7, 6576, 15 + 0 + 7)


def test_a_batch_that_read_everything_is_zero_behind() -> None:
    offsets = '{"t.traffic":{"0":72}}'
    assert BatchReport.of(progress([kafka(offsets, offsets)])).offsets_behind == 0


def test_no_latest_offsets_is_unknown_not_zero() -> None:
    report = BatchReport.of(progress([kafka('{"t.traffic":{"0":72}}', "None")]))
    assert report.offsets_behind is None and report.duration_ms == 6576


def test_duration_falls_back_to_the_trigger_execution() -> None:
    report = BatchReport.of(progress([], batchDuration=None))
    assert report.duration_ms == 6576 and report.offsets_behind is None
