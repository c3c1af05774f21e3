"""The streaming job's supervisor: restart a failed pipeline from its checkpoints, alert when it
keeps failing.

    Supervisor(settings).run()        # `cityos stream supervise`: until SIGINT/SIGTERM

It runs ``run_pipeline(settings, until="stopped", stop_event=...)``. When that raises (a query
failed, PostgreSQL stayed away, the broker vanished) or returns without being asked to stop, the
supervisor waits (exponential back-off: ``initial_s``, doubling, at most ``max_s``) and runs it
again: each query resumes from its checkpoint (``<state_dir>/checkpoints/<query>``), and a batch
merged before the failure is skipped as a whole (stream_commits), so a restart neither loses nor
double-counts events. A run that lasted ``healthy_after_s`` resets the back-off.

When ``max_failures`` failures fall within ``window_s``, it raises one alert per city (contract
``alerts``, kind ``manual``, severity ``critical``, metric ``pipeline_failures``) with the
transition queued in ``alert_outbox`` and published to the alerts topic when the broker answers;
the notifier takes it from there. Once a run has lasted ``healthy_after_s``, every open pipeline
alert in the database resolves, also one raised before this supervisor started (a restart of the
supervisor itself); when PostgreSQL does not answer then, it tries again with the back-off for as
long as the run lasts. It keeps restarting meanwhile: an operator who fixes the cause sees the
pipeline come back.

Why not a rule in ``rules.toml``: the engine's observations need a subject (a sensor, zone or
intersection) and its persistence counts observations per subject; a pipeline failure has no such
subject and its persistence is "N failures in a window", counted here. The alert still goes
through the engine's ``record`` (outbox), and is resolved by its ``resolve_open``, so its
transitions reach Kafka and the notifier like any other.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from cityos import metrics
from cityos.alerting.engine import OPEN, record, resolve_open
from cityos.alerting.events import ALERT_COLUMNS, Alert, AlertEvent
from cityos.db import connect
from cityos.settings import Settings

log = logging.getLogger(__name__)

ALERT_PREFIX = "pipeline_failing"
RunPipeline = Callable[..., Any]  # run_pipeline(settings, until=..., stop_event=...)


@dataclass(frozen=True)
class Backoff:
    """Waits between restarts: ``initial_s * factor**(n-1)`` after the n-th failure in a row."""

    initial_s: float = 5.0
    factor: float = 2.0
    max_s: float = 300.0

    def delay(self, failures_in_a_row: int) -> float:
        if failures_in_a_row < 1:
            return 0.0
        return min(self.initial_s * self.factor ** (failures_in_a_row - 1), self.max_s)


@dataclass(frozen=True)
class Failure:
    at: float  # monotonic
    error: str


def _default_run(settings: Settings, **kwargs: Any) -> Any:
    """``run_pipeline`` on the process's SparkSession, with the metrics listener attached."""
    from cityos.streaming.jobs.aggregate import run_pipeline
    from cityos.streaming.spark import spark_session

    spark = spark_session(settings, "cityos-aggregate")
    metrics.attach_listener(spark)
    return run_pipeline(settings, spark=spark, **kwargs)


def _first_line(err: BaseException | str, limit: int = 300) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:limit]


class Supervisor:
    """Runs the pipeline, restarts it with back-off, alerts on repeated failure (module doc)."""

    def __init__(
        self,
        settings: Settings,
        run: RunPipeline | None = None,
        *,
        stop_event: threading.Event | None = None,
        backoff: Backoff | None = None,
        max_failures: int = 5,
        window_s: float = 900.0,
        healthy_after_s: float = 300.0,
        max_restarts: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self.settings = settings
        self._run = run or _default_run
        self.stop = stop_event or threading.Event()
        self.backoff = backoff or Backoff()
        self.max_failures = max_failures
        self.window_s = window_s
        self.healthy_after_s = healthy_after_s
        self.max_restarts = max_restarts  # None: for ever (tests bound it)
        self._clock = clock
        self._wait = wait or self.stop.wait  # the back-off pause; True: stop was asked for
        self.failures: deque[Failure] = deque()
        self.in_a_row = 0
        self.restarts = 0
        self.alert_ids: list[str] = []  # the open pipeline alerts, as last raised (a cache)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Supervisor:
        """Knobs from the proposed ``supervisor_*`` settings (the defaults until they exist)."""
        knobs: dict[str, Any] = {
            "backoff": Backoff(
                initial_s=settings.supervisor_backoff_s,
                max_s=settings.supervisor_backoff_max_s,
            ),
            "max_failures": settings.supervisor_max_failures,
            "window_s": settings.supervisor_window_s,
            "healthy_after_s": settings.supervisor_healthy_after_s,
        }
        return cls(settings, **{**knobs, **overrides})

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        """Until ``stop`` is set (or ``max_restarts`` is used up: the last error is raised)."""
        while not self.stop.is_set():
            began = self._clock()
            ended = threading.Event()  # this run's end, for its watch
            watch = threading.Thread(target=self._watch, args=(ended,), daemon=True)
            watch.start()
            error: BaseException | None = None
            try:
                self._run(self.settings, until="stopped", stop_event=self.stop)
            except Exception as err:  # noqa: BLE001 - any failure is the supervisor's to handle
                error = err
            finally:
                ended.set()
            if self.stop.is_set():
                log.info("pipeline stopped on request")
                return
            if error is None:
                error_text = "the pipeline ended without being asked to stop"
            else:
                error_text = f"{type(error).__name__}: {_first_line(error)}"
                log.error("pipeline failed: %s", error_text, exc_info=error)
            self._failed(error_text, ran_s=self._clock() - began)
            if self.max_restarts is not None and self.restarts >= self.max_restarts:
                log.error("pipeline failed %d times: the supervisor gives up", self.in_a_row)
                if error is not None:
                    raise error
                return
            delay = self.backoff.delay(self.in_a_row)
            log.warning(
                "restarting the pipeline from its checkpoints in %.1f s (failure %d in a row, "
                "%d within %.0f min)",
                delay,
                self.in_a_row,
                len(self.failures),
                self.window_s / 60,
            )
            if self._wait(delay):
                return
            self.restarts += 1
            metrics.SUPERVISOR_RESTARTS.inc()

    def _failed(self, error: str, ran_s: float) -> None:
        now = self._clock()
        if ran_s >= self.healthy_after_s:
            self.in_a_row = 0  # it had recovered: start the back-off over
        self.in_a_row += 1
        self.failures.append(Failure(now, error))
        while self.failures and now - self.failures[0].at > self.window_s:
            self.failures.popleft()
        metrics.SUPERVISOR_FAILURES.set(len(self.failures))
        if len(self.failures) >= self.max_failures and not self.alert_ids:
            self._alert(error)

    def _watch(self, ended: threading.Event) -> None:
        """A run's watch: once it has lasted ``healthy_after_s``, the back-off is over and the
        open pipeline alerts resolve, tried again with the back-off until they are (or it ends)."""
        if ended.wait(self.healthy_after_s):
            return
        log.info("pipeline healthy for %.0f s", self.healthy_after_s)
        self.in_a_row = 0
        tries = 0
        while True:
            try:
                resolve_pipeline_alerts(self.settings)
            except psycopg.Error as err:
                tries += 1
                delay = self.backoff.delay(tries)
                log.error(
                    "pipeline alerts not resolved, trying again in %.1f s: %s",
                    delay,
                    _first_line(err),
                )
                if ended.wait(delay):
                    return
            else:
                self.alert_ids = []
                return

    def _alert(self, error: str) -> None:
        minutes = self.window_s / 60
        message = (
            f"The streaming pipeline failed {len(self.failures)} times in {minutes:.0f} minutes "
            f"and is being restarted; last error: {error}. Run `cityos doctor` to see why."
        )
        log.critical("%s", message)
        try:
            self.alert_ids = raise_pipeline_alert(
                self.settings,
                failures=len(self.failures),
                threshold=self.max_failures,
                message=message,
            )
        except psycopg.Error as err:
            log.critical(
                "pipeline alert not stored (PostgreSQL: %s); this log line is the alert",
                _first_line(err),
            )


# ----------------------------------------------------------------------------- the alert
def raise_pipeline_alert(
    settings: Settings,
    *,
    failures: int,
    threshold: int,
    message: str,
    now: datetime | None = None,
) -> list[str]:
    """One firing ``manual`` alert per city (the pipeline serves them all), unless one is open
    already; queued for the alerts topic. Returns the ids of the open pipeline alerts."""
    now = now or datetime.now(UTC)
    ids: list[str] = []
    url = settings.database_url.get_secret_value()
    with connect(url, settings.database_schema) as conn, conn.transaction(), conn.cursor() as cur:
        cities = [r[0] for r in cur.execute("SELECT city_id FROM cities ORDER BY city_id")]
        if not cities:
            log.critical("no city in `cities` to attach the pipeline alert to: %s", message)
        for city in cities:
            open_id = cur.execute(
                "SELECT alert_id FROM alerts WHERE alert_id LIKE %s AND city_id = %s"
                " AND status = ANY(%s)",
                (f"{ALERT_PREFIX}:%", city, list(OPEN)),
            ).fetchone()
            if open_id is not None:
                ids.append(open_id[0])
                continue
            alert = Alert(
                alert_id=f"{ALERT_PREFIX}:{city}:{now.strftime('%Y%m%dT%H%M%SZ')}",
                kind="manual",
                severity="critical",
                status="firing",
                city_id=city,
                metric="pipeline_failures",
                value=float(failures),
                threshold=float(threshold),
                message=message,
                started_at=now,
                updated_at=now,
            )
            cur.execute(
                f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS)})"  # noqa: S608 - our names
                f" VALUES ({', '.join(['%s'] * len(ALERT_COLUMNS))})"
                " ON CONFLICT (alert_id) DO NOTHING",
                [getattr(alert, name) for name in ALERT_COLUMNS],
            )
            record(cur, AlertEvent("firing", alert, now))
            ids.append(alert.alert_id)
    _publish(settings)
    return ids


def resolve_pipeline_alerts(settings: Settings, now: datetime | None = None) -> list[str]:
    """Resolve every open pipeline alert in the database (the pipeline recovered), whichever
    supervisor raised it; queued for the alerts topic and published. Returns their ids."""
    now = now or datetime.now(UTC)
    url = settings.database_url.get_secret_value()
    with connect(url, settings.database_schema) as conn, conn.transaction(), conn.cursor() as cur:
        events = resolve_open(cur, f"{ALERT_PREFIX}:", now)
    ids = [event.alert.alert_id for event in events]
    if ids:
        log.info("pipeline alerts resolved: %s", ", ".join(ids))
        _publish(settings)
    return ids


def _publish(settings: Settings) -> None:
    """Move the outbox to the alerts topic now (the job that usually does it is down)."""
    from cityos.alerting.engine import OutboxPublisher
    from cityos.topics import Topics

    try:
        publisher = OutboxPublisher(
            settings.kafka_bootstrap, Topics(settings.topic_prefix).alerts, timeout_s=5.0
        )
        with connect(settings.database_url.get_secret_value(), settings.database_schema) as conn:
            sent = publisher.publish_pending(conn)
        log.info("published %d alert events to the alerts topic", sent)
    except Exception as err:  # noqa: BLE001 - Kafka may be the failing part; the outbox keeps it
        log.warning("alert events stay in the outbox (%s)", _first_line(err))


# ----------------------------------------------------------------------------- entry point
def main(settings: Settings | None = None, **options: Any) -> None:
    """`cityos stream supervise`: the supervised live job (metrics on ``metrics_port`` when
    set), stopped cleanly by SIGINT/SIGTERM."""
    from cityos.settings import get_settings

    settings = settings or get_settings()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics.serve_metrics(settings.metrics_port, settings.metrics_host)
    Supervisor.from_settings(settings, stop_event=stop, **options).run()
