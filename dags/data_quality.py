"""Hourly data quality of the serving tables, and ``sensor_offline`` alerts for silent sensors.

Each run checks exactly its data interval ``[data_interval_start, data_interval_end)``:
freshness, completeness, out-of-range readings and silence per sensor (``cityos.quality``),
upserted into ``data_quality_checks``; then the silence of every sensor goes to the alert engine
as a ``sensor_offline`` observation (0 minutes resolves a firing alert). Both tasks are
idempotent, so a re-run or a backfill rewrites the same rows.

The alert engine ignores an observation older than the last one it applied to an alert (a
replay), so ``alert_silent_sensors`` must run in data-time order: it ``depends_on_past`` (each
hour waits for the previous hour's to succeed; Airflow refuses a backfill with
``--run-backwards``, and asks for ``--reprocess-behavior``). ``check_sensors`` runs in any order.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task


@dag(
    dag_id="data_quality",
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=pendulum.datetime(2012, 1, 1, tz="UTC"),  # backfills of the replays (2012-17)
    catchup=False,
    max_active_runs=4,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    tags=["cityos", "quality", "alerting"],
    doc_md=__doc__,
)
def data_quality() -> None:
    """Check every sensor over the hour, then raise or resolve ``sensor_offline`` alerts."""

    @task
    def check_sensors(data_interval_start: datetime, data_interval_end: datetime) -> dict:
        """Freshness, completeness, out-of-range and silence per sensor, upserted."""
        from cityos.quality import check_interval
        from cityos.settings import load_settings

        return check_interval(load_settings(), data_interval_start, data_interval_end)

    # one alert-engine transaction at a time, the hours in order (see the module docstring)
    @task(max_active_tis_per_dag=1, depends_on_past=True)
    def alert_silent_sensors(data_interval_start: datetime, data_interval_end: datetime) -> dict:
        """Minutes of silence per sensor, as ``sensor_offline`` observations to the engine."""
        from cityos.quality import alert_offline
        from cityos.settings import load_settings

        return alert_offline(load_settings(), data_interval_start, data_interval_end)

    check_sensors() >> alert_silent_sensors()  # type: ignore[call-arg]


data_quality()
