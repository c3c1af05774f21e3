"""Replays of real sensor data into Kafka: Beijing PRSA air quality, Los Angeles METR-LA speeds.

A replay reads a dataset into time-ordered records, optionally shifts them to the present
(``rebase``), and publishes them paced by ``speed`` (data seconds per wall second; 3600 = one
hour of data per second; ``inf`` = as fast as possible).

``rebase`` (on by default, for live demos): at real-time speed the first record lands at now;
when compressed (speed > 1) the records are shifted so the *last* record of the range lands at
now, so the replay catches up with the clock instead of stamping events in the future (which
the pipeline rejects). ``rebase=False`` keeps the data's own times (exact replays).

Dataset notes (see the SOURCE.md files):

* Beijing: 'hour' is the start of the hourly window, local time UTC+8. CO is µg/m³ as
  published (the contract's unit too). Relative humidity is a 0..1 fraction from temperature
  and dew point (Magnus formula, a = 17.625, b = 243.04 °C). Wind speed is WSPM (m/s).
* METR-LA (LOS-LOOP): rows have no timestamps; row i is 2012-03-01 00:00 Los Angeles time
  + 5 min · i. Speeds are mph, converted to km/h. Loops report speed only, so intensity and
  occupancy are null. A zero (or empty) speed means "no reading" in METR-LA, not standstill:
  those records are skipped (counted as ``missing``), so downstream sees a gap rather than a
  false traffic jam.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from cityos import events
from cityos.streaming.sources.registry import SensorRow
from cityos.topics import Topics

log = logging.getLogger(__name__)

MPH_TO_KMH = 1.609344
LA_FREEWAY_LIMIT_KMH = round(65 * MPH_TO_KMH, 2)  # California's default freeway limit, 65 mph
BEIJING_TZ = ZoneInfo("Asia/Shanghai")
LA_TZ = ZoneInfo("America/Los_Angeles")
METR_LA_FIRST = datetime(2012, 3, 1, tzinfo=LA_TZ)
METR_LA_STEP = timedelta(minutes=5)
# PRSA station name -> KDD Cup 2018 station id in the coordinates file (SOURCE.md)
PRSA_STATIONS = {
    "Aotizhongxin": "aotizhongxin_aq",
    "Changping": "pingchang_aq",
    "Dingling": "dingling_aq",
    "Dongsi": "dongsi_aq",
    "Guanyuan": "guanyuan_aq",
    "Gucheng": "gucheng_aq",
    "Huairou": "huairou_aq",
    "Nongzhanguan": "nongzhanguan_aq",
    "Shunyi": "shunyi_aq",
    "Tiantan": "tiantan_aq",
    "Wanliu": "wanliu_aq",
    "Wanshouxigong": "wanshouxigong_aq",
}
# PRSA column -> AirQualityObserved builder argument
PRSA_FIELDS = {
    "PM2.5": "pm25",
    "PM10": "pm10",
    "NO2": "no2",
    "O3": "o3",
    "SO2": "so2",
    "CO": "co",
    "TEMP": "temperature",
    "WSPM": "wind_speed",
}


@dataclass(frozen=True)
class Record:
    """One reading in data time; ``build`` makes the event for a time shift."""

    at: datetime
    topic: str  # 'traffic' | 'environment' (a Topics attribute)
    build: Callable[[timedelta], events.Event]


@dataclass
class ReplayStats:
    records: int = 0
    sent: int = 0
    missing: int = 0
    first: datetime | None = None
    last: datetime | None = None


def relative_humidity(temp_c: float | None, dew_point_c: float | None) -> float | None:
    """Magnus formula, as a 0..1 fraction; None when either input is missing."""
    if temp_c is None or dew_point_c is None:
        return None
    ratio = math.exp(17.625 * dew_point_c / (243.04 + dew_point_c)) / math.exp(
        17.625 * temp_c / (243.04 + temp_c)
    )
    return min(1.0, max(0.0, ratio))


def _value(v: Any) -> float | None:
    return None if pd.isna(v) else float(v)


# --------------------------------------------------------------------------- Beijing
def beijing_dir(data_dir: Path) -> Path:
    return data_dir / "beijing-air-quality-prsa"


def beijing_sensors(data_dir: Path) -> list[SensorRow]:
    coords = pd.read_csv(beijing_dir(data_dir) / "Beijing_AirQuality_Stations_cn.csv")
    coords = coords.set_index("stationId")
    return [
        SensorRow(
            f"beijing-aq-{station.lower()}",
            "beijing",
            "air_quality",
            station,
            latitude=float(coords.at[kdd, "latitude"]),
            longitude=float(coords.at[kdd, "longitude"]),
        )
        for station, kdd in sorted(PRSA_STATIONS.items())
    ]


def beijing_records(
    data_dir: Path, since: datetime | None = None, until: datetime | None = None
) -> tuple[list[Record], int]:
    """Hourly readings of the 12 stations with since <= window start < until."""
    records: list[Record] = []
    for station in sorted(PRSA_STATIONS):
        path = next(beijing_dir(data_dir).glob(f"PRSA_Data_{station}_*.csv"))
        df = pd.read_csv(path)
        local = pd.to_datetime(df[["year", "month", "day", "hour"]])
        df["at"] = local.dt.tz_localize(BEIJING_TZ).dt.tz_convert(UTC)
        if since is not None:
            df = df[df["at"] >= since]
        if until is not None:
            df = df[df["at"] < until]
        sensor_id = f"beijing-aq-{station.lower()}"
        for row in df.itertuples(index=False):
            values = {arg: _value(getattr(row, _attr(col))) for col, arg in PRSA_FIELDS.items()}
            values["relative_humidity"] = relative_humidity(values["temperature"], _value(row.DEWP))
            at = row.at.to_pydatetime()
            records.append(Record(at, "environment", _air_builder(sensor_id, at, values)))
    return records, 0


def _attr(column: str) -> str:
    """pandas itertuples renames columns that are not identifiers ('PM2.5' -> '_5')."""
    return {"PM2.5": "_5"}.get(column, column)


def _air_builder(sensor_id: str, at: datetime, values: dict[str, Any]) -> Callable:
    return lambda shift: events.air_quality(sensor_id, at + shift, **values)


# --------------------------------------------------------------------------- METR-LA
def metr_la_dir(data_dir: Path) -> Path:
    return data_dir / "metr-la-los-loop"


def metr_la_sensors(data_dir: Path) -> list[SensorRow]:
    locations = pd.read_csv(metr_la_dir(data_dir) / "graph_sensor_locations.csv")
    return [
        SensorRow(
            f"la-{int(r.sensor_id)}",
            "los-angeles",
            "traffic",
            f"METR-LA loop {int(r.sensor_id)}",
            latitude=float(r.latitude),
            longitude=float(r.longitude),
            speed_limit_kmh=LA_FREEWAY_LIMIT_KMH,
        )
        for r in locations.itertuples(index=False)
    ]


def metr_la_records(
    data_dir: Path, since: datetime | None = None, until: datetime | None = None
) -> tuple[list[Record], int]:
    """5-minute speeds of the 207 loops; zero/empty speeds skipped and counted as missing."""
    speeds = pd.read_csv(metr_la_dir(data_dir) / "los_speed.csv")
    records, missing = [], 0
    for i, row in enumerate(speeds.itertuples(index=False, name=None)):
        at = (METR_LA_FIRST + METR_LA_STEP * i).astimezone(UTC)
        if (since is not None and at < since) or (until is not None and at >= until):
            continue
        for sensor, mph in zip(speeds.columns, row, strict=True):
            if pd.isna(mph) or mph <= 0:
                missing += 1
                continue
            records.append(
                Record(at, "traffic", _loop_builder(f"la-{sensor}", at, float(mph) * MPH_TO_KMH))
            )
    return records, missing


def _loop_builder(sensor_id: str, at: datetime, kmh: float) -> Callable:
    return lambda shift: events.traffic_flow(
        sensor_id,
        at + shift,
        at + shift + METR_LA_STEP,
        intensity=None,
        occupancy=None,
        average_speed_kmh=kmh,
    )


@dataclass(frozen=True)
class Dataset:
    city_id: str
    sensors: Callable[[Path], list[SensorRow]]
    records: Callable[..., tuple[list[Record], int]]


DATASETS = {
    "beijing": Dataset("beijing", beijing_sensors, beijing_records),
    "metr-la": Dataset("los-angeles", metr_la_sensors, metr_la_records),
}


# --------------------------------------------------------------------------- replay
def time_shift(
    records: list[Record], *, rebase: bool, speed: float, now: datetime | None = None
) -> timedelta:
    """How far to move the data's times (see the module docstring)."""
    if not rebase or not records:
        return timedelta(0)
    now = now or datetime.now(UTC)
    anchor = records[-1].at if speed > 1 else records[0].at
    return now - anchor


def publish(
    records: list[Record],
    producer: Any,
    topics: Topics,
    *,
    speed: float = math.inf,
    rebase: bool = True,
    missing: int = 0,
    stop: threading.Event | None = None,
    now: datetime | None = None,
) -> ReplayStats:
    """Send the records in time order, paced to ``speed`` data seconds per wall second."""
    stop = stop or threading.Event()
    records = sorted(records, key=lambda r: r.at)
    stats = ReplayStats(records=len(records), missing=missing)
    if not records:
        return stats
    shift = time_shift(records, rebase=rebase, speed=speed, now=now)
    stats.first, stats.last = records[0].at + shift, records[-1].at + shift
    wall0, data0, last_log = time.monotonic(), records[0].at, time.monotonic()
    for record in _until(records, stop):
        if math.isfinite(speed):
            ahead = wall0 + (record.at - data0).total_seconds() / speed - time.monotonic()
            if ahead > 0:
                stop.wait(ahead)
                if stop.is_set():
                    break
        producer.send(getattr(topics, record.topic), record.build(shift))
        stats.sent += 1
        if time.monotonic() - last_log >= 10:
            last_log = time.monotonic()
            log.info(
                "replay at %s: %d of %d sent",
                events.iso(record.at + shift),
                stats.sent,
                stats.records,
            )
    return stats


def _until(records: list[Record], stop: threading.Event) -> Iterator[Record]:
    for record in records:
        if stop.is_set():
            return
        yield record
