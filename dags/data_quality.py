"""Hourly data quality of the serving tables, and ``sensor_offline`` alerts for silent sensors.

Each run checks exactly its data interval ``[data_interval_start, data_interval_end)``:
freshness, completeness, out-of-range readings and silence per sensor (``cityos.quality``),
upserted into ``data_quality_checks``; then the silence of every sensor goes to the alert engine
as a ``sensor_offline`` observation (0 minutes resolves a firing alert). Both tasks are
idempotent, so a re-run or a backfill (``airflow dags backfill data_quality -s ... -e ...``)
rewrites the same rows.
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

    @task(max_active_tis_per_dag=1)  # one alert-engine transaction at a time
    def alert_silent_sensors(data_interval_start: datetime, data_interval_end: datetime) -> dict:
        """Minutes of silence per sensor, as ``sensor_offline`` observations to the engine."""
        from cityos.quality import alert_offline
        from cityos.settings import load_settings

        return alert_offline(load_settings(), data_interval_start, data_interval_end)

    check_sensors() >> alert_silent_sensors()  # type: ignore[call-arg]


data_quality()
