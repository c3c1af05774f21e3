"""Helpers of the reliability tests: run the streaming job live or as a killable process, record
what the sources publish, and compute the serving tables independently with pandas.

Run as a module it is the job process the SIGKILL test kills::

    python -m tests.integration.pipeline_tools available   # or: stopped (until SIGTERM)

It reads every setting from ``CITYOS_*`` variables (see :func:`settings_env`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from kafka import KafkaConsumer
from psycopg import sql

from cityos import events
from cityos.db import connect
from cityos.settings import REPO_ROOT, Settings
from cityos.streaming.jobs.sinks import DEFAULT_SPEED_LIMIT_KMH
from cityos.streaming.jobs.windows import AIR_MEASURES
from cityos.streaming.producer import DeliveryStats

log = logging.getLogger(__name__)

AIR_COLUMNS = AIR_MEASURES  # event field -> air_quality_1h column (a naming table)


# ----------------------------------------------------------------------------- waiting
def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError naming ``what`` if not."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


# ----------------------------------------------------------------------------- recording sources
@dataclass
class Recorder:
    """A stand-in producer for a source run whose events are published later: keeps them all."""

    sent: list[tuple[str, events.Event]] = field(default_factory=list)
    stats: DeliveryStats = field(default_factory=DeliveryStats)

    def send(self, topic: str, event: events.Event) -> None:
        self.sent.append((topic, event))
        self.stats.ok()

    def flush(self, timeout: float | None = None) -> None:
        """Nothing is queued."""


class RecordingProducer:
    """A real producer (``cityos.streaming.producer``) that also keeps every event it was given."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._lock = threading.Lock()
        self.sent: list[tuple[str, events.Event]] = []

    @property
    def stats(self) -> Any:
        return self._producer.stats

    def send(self, topic: str, event: events.Event) -> None:
        with self._lock:
            self.sent.append((topic, event))
        self._producer.send(topic, event)

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout)

    def close(self) -> None:
        self._producer.close()

    def events_of(self, topic: str) -> list[events.Event]:
        with self._lock:
            return [e for t, e in self.sent if t == topic]


# ----------------------------------------------------------------------------- Kafka and PostgreSQL
def consume_all(bootstrap: str, topic: str, idle_ms: int = 5000) -> list[Any]:
    """Every record of ``topic`` from the start (large records included)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        consumer_timeout_ms=idle_ms,
        fetch_max_bytes=16 << 20,
        max_partition_fetch_bytes=8 << 20,
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def committed(database_url: str, schema: str) -> dict[str, tuple[int, int, int]]:
    """query name -> (batches, valid rows, dead letters) merged so far, from stream_commits."""
    with connect(database_url, schema) as conn:
        rows = conn.execute(
            "SELECT query_name, count(*), sum(valid_rows), sum(dead_letters)"
            " FROM stream_commits GROUP BY query_name"
        ).fetchall()
    return {name: (int(n), int(valid), int(dead)) for name, n, valid, dead in rows}


def table(database_url: str, schema: str, name: str) -> pd.DataFrame:
    """A serving table indexed by (sensor_id, window_start), sorted."""
    with connect(database_url, schema) as conn:
        cur = conn.execute(
            sql.SQL("SELECT * FROM {} ORDER BY sensor_id, window_start").format(
                sql.Identifier(name)
            )
        )
        assert cur.description is not None
        df = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    df["window_start"] = pd.to_datetime(df.window_start, utc=True)
    return df.set_index(["sensor_id", "window_start"])


def registered_speed_limits(database_url: str, schema: str) -> dict[str, float]:
    """The posted limit the sources registered per traffic sensor (sensor_speed_limits)."""
    with connect(database_url, schema) as conn:
        return dict(conn.execute("SELECT sensor_id, speed_limit_kmh FROM sensor_speed_limits"))


# ----------------------------------------------------------------------------- settings
def own_settings(settings: Settings, schema: str, state_dir: Path, **changes: object) -> Settings:
    """The test's settings with its own schema, checkpoints and lake."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return settings.model_copy(
        update={
            "state_dir": state_dir,
            "lake_dir": state_dir / "lake",
            "database_schema": schema,
            **changes,
        }
    )


# ----------------------------------------------------------------------------- events
def minute_reading(sensor: str, start: datetime, vehicles: int) -> events.Event:
    """One lane's one-minute detector reading: occupancy and speed follow the vehicle count
    (no speed in a minute without a vehicle)."""
    return events.traffic_flow(
        sensor,
        start,
        start + timedelta(minutes=1),
        intensity=vehicles,
        occupancy=round(0.02 + 0.013 * vehicles, 4),
        average_speed_kmh=None if vehicles == 0 else 48.0 - 2.5 * vehicles,
        lane_id=0,
    )


# ----------------------------------------------------------------------------- expected tables
def expected_traffic(evts: list[events.Event], limits: dict[str, float]) -> pd.DataFrame:
    """traffic_5m from the raw events, by the project's definitions (docs/serving, fixture)."""
    df = pd.DataFrame(evts)
    df["window_start"] = pd.to_datetime(df.dateObservedFrom, utc=True).dt.floor("5min")
    speed = df.averageVehicleSpeed.astype(float)
    weighted = speed.notna() & (df.intensity > 0)
    df["sv"] = (speed * df.intensity).where(weighted, 0.0)
    df["vw"] = df.intensity.where(weighted, 0)
    g = (
        df.groupby(["refDevice", "window_start"])
        .agg(
            vehicle_count=("intensity", "sum"),
            sv=("sv", "sum"),
            vw=("vw", "sum"),
            occupancy=("occupancy", "mean"),
            readings=("intensity", "size"),
        )
        .reset_index()
    )
    g["avg_speed_kmh"] = (g.sv / g.vw).where(g.vw > 0)
    limit = g.refDevice.map(lambda s: limits.get(s, DEFAULT_SPEED_LIMIT_KMH))
    index = (1 - g.avg_speed_kmh / limit).clip(0, 1)
    g["congestion_index"] = index.where(g.avg_speed_kmh.notna(), g.occupancy)
    g = g.rename(columns={"refDevice": "sensor_id"}).set_index(["sensor_id", "window_start"])
    return g.sort_index()


def expected_air(evts: list[events.Event]) -> pd.DataFrame:
    """air_quality_1h means from the raw AirQualityObserved events (noise is not aggregated)."""
    df = pd.DataFrame([e for e in evts if e["type"] == events.AIR])
    df["window_start"] = pd.to_datetime(df.dateObserved, utc=True).dt.floor("1h")
    for name in AIR_COLUMNS:
        if name not in df:
            df[name] = math.nan
    g = df.groupby(["refDevice", "window_start"])[list(AIR_COLUMNS)].mean()
    g.index = g.index.set_names(["sensor_id", "window_start"])
    return g.rename(columns=AIR_COLUMNS).astype(float).sort_index()


def assert_same_index(got: pd.DataFrame, want: pd.DataFrame, what: str) -> None:
    missing = sorted(set(want.index) - set(got.index))[:5]
    extra = sorted(set(got.index) - set(want.index))[:5]
    assert not missing and not extra, f"{what}: windows missing {missing}, unexpected {extra}"


def assert_close(got: pd.Series, want: pd.Series, what: str, rel: float = 1e-9) -> None:
    """Equal within ``rel`` (absolute below 1: float sums depend on their order), NULL exactly
    where NULL is expected."""
    got, want = got.astype(float), want.astype(float)
    both = got.notna() & want.notna()
    nulls = got.isna() != want.isna()
    assert not nulls.any(), f"{what}: NULL mismatch at {list(got[nulls].index[:5])}"
    off = ~((got[both] - want[both]).abs() <= rel * want[both].abs().clip(lower=1.0))
    assert not off.any(), (
        f"{what}: {int(off.sum())} values differ, e.g. "
        f"{pd.DataFrame({'got': got[both][off], 'want': want[both][off]}).head(5)}"
    )


# ----------------------------------------------------------------------------- the job, live
class LiveJob:
    """``run_pipeline(until="stopped")`` in a background thread of this process."""

    def __init__(self, settings: Settings, spark: Any) -> None:
        self.settings, self.spark = settings, spark
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-job", daemon=True)

    def _run(self) -> None:
        from cityos.streaming.jobs.aggregate import run_pipeline

        try:
            run_pipeline(self.settings, until="stopped", spark=self.spark, stop_event=self.stop)
        except BaseException as err:  # noqa: BLE001 - reported by the test through .error
            log.exception("live job died")
            self.error = err

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def cause(self) -> str:
        """The root error of a failure, without the Spark plan and the Python traceback."""
        text = str(self.error)
        found = re.findall(r"^\s*(\w[\w.]*(?:Error|Exception): .*)$", text, re.MULTILINE)
        return f"{type(self.error).__name__}: {found[-1] if found else text[:500]}"

    def __enter__(self) -> LiveJob:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=120)


# ----------------------------------------------------------------------------- the job, a process
def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``load_settings()`` in a child process equal ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        # complex fields (lists) are JSON in the environment, as pydantic-settings reads them
        env[f"CITYOS_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


@contextlib.contextmanager
def job_process(settings: Settings, until: str, log_path: Path) -> Iterator[subprocess.Popen]:
    """The job as a child process in a session of its own (so a kill takes its JVM along)."""
    with log_path.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "tests.integration.pipeline_tools", until],
            cwd=REPO_ROOT,
            env=settings_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (Python driver and Spark JVM): a crash."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def main() -> None:
    from cityos.settings import load_settings
    from cityos.streaming.jobs.aggregate import main as live
    from cityos.streaming.jobs.aggregate import run_pipeline

    parser = argparse.ArgumentParser(description="the streaming job, for the reliability tests")
    parser.add_argument("until", choices=["available", "stopped"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings()
    if args.until == "stopped":
        live(settings)
    else:
        run_pipeline(settings, until="available")
    log.info("job finished")


if __name__ == "__main__":
    main()
