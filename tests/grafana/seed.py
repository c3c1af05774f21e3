"""Fill the pipeline's internal tables of the dashboard test database from its real windows.

The evaluation fixture (shared/nlq/fixture.py) loads the serving tables from real data: SUMO
runs of cologne8 (traffic_5m) and Beijing PRSA (air_quality_1h), 20 alerts. The pipeline
tables the dashboards also read are filled here the way the jobs fill them, from those windows:

  stream_commits      one micro-batch per event-time window that closes, committed 30 s after
                      the window end, valid_rows = the windows merged; no dead letters (the
                      fixture holds no bad records, so the DLQ share is a true 0); timing by
                      the BATCH_* model below; offsets_behind = the next window's readings
                      that arrived in those 30 s (readings spread evenly over a window);
  sensor_watermarks   each sensor's newest window end, per query;
  anomaly_scores,     the real scoring job (streaming/jobs/score.py: Scorer, with the alert
  forecasts, alerts,  engine and rules.toml) run over the closed windows of two sensors per
  alert_outbox,       stream (SCORED: scoring is slow), then checkpointed (detector_state);
  scoring_progress,   its alerts join the fixture's;
  detector_state
  model_registry      the online detector's version, registered as production;
  data_quality_checks the data-quality DAG's checks (cityos/quality.py) for each fixture day.

Done once per fixture load and seed version: the marker table grafana_seed holds the fixture's
sha256 and SEED_VERSION it was seeded for.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from cityos.db import connect

log = logging.getLogger(__name__)

TRAFFIC_QUERY = "aggregate-traffic"  # streaming/jobs/aggregate.py: query_name(topic)
AIR_QUERY = "aggregate-environment"
SEED_MARKER = "grafana_seed"
SCORED = {  # sensors the scoring job is run for, and from when (about 1,000 windows in all)
    "traffic": (("cologne-tr-01", "cologne-tr-03"), datetime(2016, 12, 19, tzinfo=UTC)),
    # from the fixture's first hour: a detector forecasts after 200 windows (warmup), so the
    # stations forecast PM2.5 (and their zones with them) over the fixture's last 16 hours
    "air": (("beijing-aq-aotizhongxin", "beijing-aq-dongsi"), datetime(2016, 12, 13, tzinfo=UTC)),
}
SEED_VERSION = 4  # bump when the seeding changes: a test database seeded before is seeded again
# A batch's timing: seconds of work before its merge (fixed, and per merged window) and after
# it (merge, checkpoint commit). Shaped on a real run of tests/integration/test_commit_timing.py
# on the 2-core test machine: after the first batch, about 6 s before the merge and 0.5 s after
# it for 25 readings; the per-window part is an assumption (bigger batches take longer).
BATCH_BEFORE_MERGE_S = 5.5
BATCH_PER_WINDOW_S = 0.02
BATCH_AFTER_MERGE_S = 0.5
INTERNAL_TABLES = (
    "stream_commits",
    "sensor_watermarks",
    "anomaly_scores",
    "forecasts",
    "zone_forecasts",
    "scoring_progress",
    "detector_state",
    "alert_state",
    "model_registry",
    "data_quality_checks",
)


def _fixture_sha(conn: psycopg.Connection) -> str:
    from cityos.cli.nlq_eval import MARKER_TABLE

    row = conn.execute(f"SELECT sha256 FROM {MARKER_TABLE}").fetchone()  # noqa: S608
    return row[0] if row else ""


def _seeded_sha(conn: psycopg.Connection) -> str:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {SEED_MARKER} (sha256 text NOT NULL)")
    row = conn.execute(f"SELECT sha256 FROM {SEED_MARKER}").fetchone()  # noqa: S608
    return row[0] if row else ""


def seed(url: str) -> None:
    """Seed the pipeline tables of ``url`` unless already done for its fixture."""
    with connect(url, autocommit=True) as conn:
        # one session seeds, a concurrent one waits for it (released when conn closes)
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (SEED_MARKER,))
        want = f"{_fixture_sha(conn)}+seed{SEED_VERSION}"
        if _seeded_sha(conn) == want:
            return
        log.info("seeding the pipeline tables for the dashboard tests")
        with conn.transaction():
            # alerts raised by an earlier seeding (the fixture's own are never in the outbox)
            conn.execute("DELETE FROM alerts WHERE alert_id IN (SELECT alert_id FROM alert_outbox)")
            conn.execute("TRUNCATE alert_outbox, " + ", ".join(INTERNAL_TABLES))
            _commits_and_watermarks(conn)
        _score(conn)
        _quality(conn)
        with conn.transaction():
            conn.execute(f"DELETE FROM {SEED_MARKER}")  # noqa: S608
            conn.execute(f"INSERT INTO {SEED_MARKER} VALUES (%s)", (want,))  # noqa: S608


def _commits_and_watermarks(conn: psycopg.Connection) -> None:
    for query, table in ((TRAFFIC_QUERY, "traffic_5m"), (AIR_QUERY, "air_quality_1h")):
        conn.execute(
            "INSERT INTO stream_commits (query_name, batch_id, watermark, valid_rows,"
            " dead_letters, committed_at, batch_started_at, batch_duration_ms, offsets_behind)"
            " SELECT %(query)s, row_number() OVER w - 1, window_end, count, 0, committed,"
            "        committed - make_interval(secs => before_merge),"
            "        round(1000 * (before_merge + %(after)s)),"
            "        coalesce(round(lead(count) OVER w * 30"
            "                       / extract(epoch FROM window_end - window_start)), 0)"
            " FROM (SELECT window_start, window_end, count(*),"
            "              window_end + interval '30 seconds' AS committed,"
            "              %(before)s + %(per_window)s * count(*) AS before_merge"
            f"       FROM {table} GROUP BY window_start, window_end) b"
            " WINDOW w AS (ORDER BY window_end)",
            {
                "query": query,
                "before": BATCH_BEFORE_MERGE_S,
                "per_window": BATCH_PER_WINDOW_S,
                "after": BATCH_AFTER_MERGE_S,
            },
        )
        conn.execute(
            "INSERT INTO sensor_watermarks (query_name, sensor_id, max_event_time)"
            f" SELECT %s, sensor_id, max(window_end) FROM {table} GROUP BY sensor_id",
            (query,),
        )


def _score(conn: psycopg.Connection) -> None:
    from cityos.alerting.engine import AlertEngine
    from cityos.alerting.rules import load_rules
    from cityos.anomaly.detector import DetectorConfig
    from cityos.anomaly.registry import register
    from cityos.streaming.jobs.score import AIR, TRAFFIC, Scorer, online_version

    now = datetime(2016, 12, 23, tzinfo=UTC)
    for query, table, (sensors, since) in (
        (TRAFFIC_QUERY, TRAFFIC, SCORED["traffic"]),
        (AIR_QUERY, AIR, SCORED["air"]),
    ):
        # Scoring is ~0.2 s a window here: the chosen sensors are scored from `since`, the
        # others are marked as scored through their last window.
        conn.execute(
            "INSERT INTO scoring_progress (stream, sensor_id, scored_until)"
            " SELECT %s, sensor_id, CASE WHEN sensor_id = ANY(%s) THEN %s"
            f" ELSE max(window_end) END FROM {table.table} GROUP BY sensor_id",
            (table.stream, list(sensors), since),
        )
        scorer = Scorer(
            query, timedelta(0), (table,), AlertEngine(load_rules()), registry_check_s=0
        )
        while scorer.score(conn, now).windows:
            pass
        scorer.checkpoint(conn)
    # registered after scoring: the scorer would otherwise load it as a trained model
    register(
        conn,
        "anomaly",
        online_version(DetectorConfig()),
        Path("online"),
        {"kind": "online detector, per sensor and metric"},
        data_start=None,
        data_end=None,
        status="production",
        note="dashboard test database",
    )


def _quality(conn: psycopg.Connection) -> None:
    from cityos.quality import run_checks

    day = datetime(2016, 12, 18, tzinfo=UTC)
    while day < datetime(2016, 12, 20, tzinfo=UTC):
        run_checks(conn, day, day + timedelta(days=1), checked_at=day + timedelta(days=1))
        day += timedelta(days=1)
