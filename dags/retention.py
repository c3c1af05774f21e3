"""Daily lake upkeep: compact the day's small batch folders, then expire old dates.

The streaming job writes one Parquet folder per micro-batch (``<lake>/<topic>/date=D/batch=N``).
Once the day ``[data_interval_start, data_interval_end)`` can get no more events (the longest
allowed lateness plus a margin after its end, :data:`SETTLE`), ``compact_lake`` rewrites its
dates as one folder each, atomically; ``expire_lake`` deletes dates older than
``CITYOS_LAKE_RETENTION_DAYS`` before the interval's end. Both are idempotent
(``streaming/lake.py``), take a lock per topic folder (a concurrent run waits for it rather than
deleting the other's staged folders), and ``depends_on_past``: backfills run them day by day, in
order (Airflow refuses ``--run-backwards`` and asks for ``--reprocess-behavior``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pendulum
from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
from airflow.sdk import CronDataIntervalTimetable, dag, task

# air quality may arrive 2 h late (CITYOS_AIR_WATERMARK); compact only a day that is complete
SETTLE = timedelta(hours=3)


@dag(
    dag_id="retention",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2012, 1, 1, tz="UTC"),  # backfills of the replays (2012-17)
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["cityos", "lake"],
    doc_md=__doc__,
)
def retention() -> None:
    """Wait for the day's late data, compact its lake dates, expire dates past retention."""
    wait_for_late_data = TimeDeltaSensor(
        task_id="wait_for_late_data",
        delta=SETTLE,
        mode="reschedule",
        poke_interval=300,
        doc_md="Wait until the interval's end plus SETTLE: no event of the day can still come.",
    )

    @task(depends_on_past=True)
    def compact_lake(data_interval_start: datetime, data_interval_end: datetime) -> dict:
        """Each topic's dates of the interval -> one folder of big files, swapped in atomically."""
        from cityos.settings import load_settings
        from cityos.streaming.lake import compact_lake as compact

        return compact(load_settings(), data_interval_start, data_interval_end)

    @task(depends_on_past=True)
    def expire_lake(data_interval_end: datetime) -> dict:
        """Delete lake dates older than the retention before the interval's end."""
        from cityos.settings import load_settings
        from cityos.streaming.lake import expire_lake as expire

        return expire(load_settings(), data_interval_end)

    wait_for_late_data >> compact_lake() >> expire_lake()  # type: ignore[call-arg]


retention()
