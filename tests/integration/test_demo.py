"""`make demo`'s job, end to end on the test stack: the Cologne twin (real SUMO) and the Beijing
replay, each from a process of their own, through Kafka and the live Spark job into PostgreSQL,
the lake, the scorer and the charts.

Shorter than the real demo (half a simulated hour; the last five days of the Beijing episode),
the same code path otherwise.
"""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime

import pytest
from rich.console import Console

from cityos import demo
from tests.integration.pipeline_tools import own_settings
from tests.jobs.conftest import spark  # noqa: F401 - the shared session


@pytest.fixture
def demo_settings(settings, pg_schema, tmp_path):
    return own_settings(settings, pg_schema, tmp_path, model_dir=tmp_path / "models")


@pytest.mark.integration
def test_the_demo_runs_the_twin_and_the_replay_through_the_whole_pipeline(
    demo_settings,
    stack,
    spark,  # noqa: F811
) -> None:
    screen = io.StringIO()
    report = demo.run_demo(
        lambda: demo_settings,
        hours=0.5,
        speedup=math.inf,
        console=Console(file=screen, width=120),
        stack=stack,
        beijing_from=datetime(2016, 12, 16, 16, tzinfo=UTC),
    )

    # the sources' counts came back from their process, and everything sent was handled
    assert report.simulated_s >= 1800
    assert report.traffic_events > 0 and report.environment_events > 0
    assert report.replay_events == 12 * 5 * 24  # 12 stations, 5 days of hours
    assert report.failed == 0
    assert report.delivered == (
        report.traffic_events + report.environment_events + report.replay_events
    )
    assert report.processed == report.delivered
    assert report.dead_letters and not any(report.dead_letters.values())

    rows = report.table_rows
    assert rows["intersections"] == 8 and rows["sensors"] == 35 + 12
    assert rows["traffic_5m"] > 0 and rows["air_quality_1h"] > 0
    assert report.latest_traffic and report.latest_air
    # the last days of December 2016's smog episode: AQI alerts, and their windows were scored
    assert report.alert_counts and report.scored["anomaly scores"] > 0
    assert any("AQI" in alert[4] for alert in report.alerts)
    assert {p.name for p in report.charts} == {
        "cologne-congestion.png",
        "cologne-sensors.png",
        "beijing-aqi.png",
    }
    assert all(p.stat().st_size > 10_000 for p in report.charts)
    assert "Spark" in screen.getvalue()
