"""Spark for the job's tests: one local session per test run (startup is slow on 2 cores)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from pydantic import SecretStr

from cityos import events
from cityos.settings import SHARED_DIR, Settings
from cityos.streaming.sources.replay import PRSA_FIELDS

PRSA_DIR = SHARED_DIR / "data" / "beijing-air-quality-prsa"
FIXTURE = SHARED_DIR / "nlq" / "fixture.py"
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from cityos.streaming.spark import spark_session

    state = tmp_path_factory.mktemp("spark-state")
    settings = Settings(
        kafka_bootstrap="localhost:9",  # unit tests never reach it
        database_url=SecretStr("postgresql://unused@localhost/unused"),
        state_dir=state,
        spark_master="local[2]",
        spark_shuffle_partitions=2,
    )
    session = spark_session(settings, "cityos-tests")
    yield session
    # the integration tests of this run reuse the session; pyspark stops it at exit


@pytest.fixture(scope="session")
def nlq_fixture():
    """The evaluation team's reference loader, imported by path (it is not a package)."""
    spec = importlib.util.spec_from_file_location("nlq_fixture", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prsa_december(station: str, first_day: int = 14, last_day: int = 22) -> pd.DataFrame:
    """Real PRSA hourly rows of a station, December 2016, with a UTC ``observed`` column."""
    df = pd.read_csv(PRSA_DIR / f"PRSA_Data_{station}_20130301-20170228.csv")
    df = df[(df.year == 2016) & (df.month == 12) & df.day.between(first_day, last_day)].copy()
    df["observed"] = [
        datetime(int(r.year), int(r.month), int(r.day), int(r.hour), tzinfo=SHANGHAI).astimezone(
            UTC
        )
        for r in df.itertuples()
    ]
    return df


def val(value: float) -> float | None:
    return None if pd.isna(value) else float(value)


def prsa_event(sensor_id: str, row: pd.Series) -> events.Event:
    """The AirQualityObserved of one row of :func:`prsa_december` (``iterrows``): the fields the
    Beijing replay sends, from the same column map, without the humidity it derives."""
    fields = {arg: val(row[column]) for column, arg in PRSA_FIELDS.items()}
    return events.air_quality(sensor_id, row.observed.to_pydatetime(), **fields)


@pytest.fixture(scope="session")
def prsa_dir() -> Path:
    return PRSA_DIR
