"""Daily retraining of the per-sensor anomaly models from the lake.

``cityos.anomaly.retrain.retrain`` reads the lake for the data interval and the detectors'
lookback (``CITYOS_RETRAIN_LOOKBACK_DAYS``, 14): the raw events of those dates, turned into the
serving tables' windows by the streaming job's own code (``streaming/lake_windows.py``). It
trains candidate models, evaluates them against the production model on a held-out period,
registers them and promotes them only if better; its summary (metrics, versions, what was read
from the lake) is the task's return value (XCom). A lake without events of the interval fails the
task, naming the folder and the interval (it is retried: the streaming job may be behind).
Backfills reach back as far as the lake keeps dates (``CITYOS_LAKE_RETENTION_DAYS``).

The run waits until four hours after the interval's end (:data:`SETTLE`): air quality may arrive
2 h late (``CITYOS_AIR_WATERMARK``), and the ``retention`` DAG compacts the day's lake folders
three hours after its end; training at midnight would hold out a day missing its last hours, and
a rerun with them would be another version.

Each run compares with the production model of the runs before it, so ``retrain``
``depends_on_past``: a backfill trains the days in order (Airflow refuses ``--run-backwards``),
and a day that fails holds the later ones until it is cleared. A rerun of an older day never
touches a newer production model, and a rerun of the identical training changes nothing
(``anomaly/retrain.py``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pendulum
from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
from airflow.sdk import CronDataIntervalTimetable, dag, task

# the retention DAG's settle time (3 h: late air quality) and an hour for its compaction
SETTLE = timedelta(hours=4)


@dag(
    dag_id="retrain_anomaly_models",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2012, 1, 1, tz="UTC"),  # backfills of the replays (2012-17)
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    tags=["cityos", "anomaly", "ml"],
    doc_md=__doc__,
)
def retrain_anomaly_models() -> None:
    """Wait for the day's late data and compaction; train, evaluate, register and (if better)
    promote the anomaly models of the interval."""
    wait_for_late_data = TimeDeltaSensor(
        task_id="wait_for_late_data",
        delta=SETTLE,
        mode="reschedule",
        poke_interval=300,
        doc_md="Wait until the interval's end plus SETTLE: the day is complete and compacted.",
    )

    @task(execution_timeout=timedelta(hours=2), depends_on_past=True)
    def retrain(data_interval_start: datetime, data_interval_end: datetime) -> dict:
        """Candidate models from the lake's windows of the interval (and the lookback before
        it); registered, and promoted only when better."""
        from cityos.anomaly.retrain import retrain as run_retrain
        from cityos.settings import load_settings

        return run_retrain(load_settings(), data_interval_start, data_interval_end)

    wait_for_late_data >> retrain()  # type: ignore[call-arg]


retrain_anomaly_models()
