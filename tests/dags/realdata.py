"""Real data for the DAG tests: Beijing PRSA readings as lake folders and serving rows, METR-LA
loop speeds as traffic windows (shifted in time onto the Beijing hours, as a replay rebases).

The lake slice is laid out as the streaming job writes it (``streaming/jobs/sinks.py``): per
topic ``date=D/batch=N`` folders, a few ``part-*.snappy.parquet`` files per batch (one per
Kafka partition here), Spark's ``_SUCCESS`` marker and ``.crc`` side files, and the lake's
columns (Kafka coordinates, ``event_time``, ``sensor_id`` and the event's fields).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cityos import events
from cityos.settings import SHARED_DIR
from cityos.streaming.sources.replay import (
    METR_LA_STEP,
    beijing_records,
    beijing_sensors,
    metr_la_records,
    metr_la_sensors,
)

DATA_DIR = SHARED_DIR / "data"
PARTITIONS = 4
AIR_FIELDS = (
    "pm25",
    "pm10",
    "no2",
    "o3",
    "so2",
    "co",
    "temperature",
    "relativeHumidity",
    "windSpeed",
)


AIR_SPAN = (datetime(2013, 11, 1, tzinfo=UTC), datetime(2014, 2, 1, tzinfo=UTC))


@cache
def _air_records() -> list[tuple[datetime, events.Event]]:
    """The PRSA readings of AIR_SPAN, read once per session (12 CSVs take about 10 s)."""
    records, _ = beijing_records(DATA_DIR, *AIR_SPAN)
    return sorted(
        ((r.at, r.build(timedelta(0))) for r in records),
        key=lambda pair: (pair[0], pair[1]["refDevice"]),
    )


def air_events(
    since: datetime,
    until: datetime,
    stations: Iterable[str] | None = None,
) -> list[events.Event]:
    """Real PRSA readings (hourly, 12 stations) with ``since <= hour < until`` (in AIR_SPAN)."""
    if since < AIR_SPAN[0] or until > AIR_SPAN[1]:
        raise ValueError(f"outside the cached span {AIR_SPAN}: {since} .. {until}")
    wanted = None if stations is None else {f"beijing-aq-{s.lower()}" for s in stations}
    return [
        dict(e)
        for at, e in _air_records()
        if since <= at < until and (wanted is None or e["refDevice"] in wanted)
    ]


# ----------------------------------------------------------------------------- lake
def lake_rows(
    evs: Sequence[events.Event],
    topic: str,
    first_offset: int = 0,
) -> list[dict[str, Any]]:
    """Events as lake rows, with made-up but consistent Kafka coordinates."""
    rows = []
    for i, event in enumerate(evs):
        at = events.parse_time(event.get("dateObserved") or event["dateObservedFrom"])
        rows.append(
            {
                "topic": topic,
                "partition": zlib.crc32(event["refDevice"].encode()) % PARTITIONS,
                "offset": first_offset + i,
                "kafka_timestamp": at + timedelta(seconds=2),
                "event_time": at,
                "sensor_id": event["refDevice"],
                **{k: v for k, v in event.items() if k != "schemaVersion"},
            }
        )
    return rows


def write_batch(topic_dir: Path, day: str, batch_id: int, rows: Sequence[dict[str, Any]]) -> Path:
    """One Spark-like batch folder: a part file per Kafka partition, _SUCCESS, .crc files."""
    folder = topic_dir / f"date={day}" / f"batch={batch_id}"
    folder.mkdir(parents=True)
    for partition in range(PARTITIONS):
        part = [r for r in rows if r["partition"] == partition]
        if not part:
            continue
        name = f"part-{partition:05d}-{uuid.uuid4()}.c000.snappy.parquet"
        pq.write_table(pa.Table.from_pylist(part), folder / name, compression="snappy")
        (folder / f".{name}.crc").write_bytes(b"crc")
    (folder / "_SUCCESS").touch()
    return folder


def write_day(
    topic_dir: Path, day: datetime, first_batch: int, per_batch: timedelta, first_offset: int = 0
) -> tuple[int, int]:
    """A UTC day of real air readings as hourly-ish batches; returns (rows, next batch id)."""
    rows = lake_rows(air_events(day, day + timedelta(days=1)), "environment", first_offset)
    batch, start, total = first_batch, day, 0
    while start < day + timedelta(days=1):
        chunk = [r for r in rows if start <= r["event_time"] < start + per_batch]
        if chunk:
            write_batch(topic_dir, day.date().isoformat(), batch, chunk)
            batch += 1
            total += len(chunk)
        start += per_batch
    return total, batch


# ----------------------------------------------------------------------------- serving tables
def register(conn: Any, air_stations: int = 12, loops: int = 6) -> tuple[list[str], list[str]]:
    """Cities and real sensors (Beijing stations, METR-LA loops); returns their ids."""
    conn.execute(
        "INSERT INTO cities (city_id, name, local_name, timezone, aqi_standard) VALUES"
        " ('beijing', 'Beijing', '北京', 'Asia/Shanghai', 'china_hj633'),"
        " ('los-angeles', 'Los Angeles', NULL, 'America/Los_Angeles', 'us_epa')"
    )
    stations = beijing_sensors(DATA_DIR)[:air_stations]
    la = metr_la_sensors(DATA_DIR)[:loops]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO sensors (sensor_id, city_id, kind, name, latitude, longitude)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (s.sensor_id, s.city_id, s.kind, s.name, s.latitude, s.longitude)
                for s in [*stations, *la]
            ],
        )
    return [s.sensor_id for s in stations], [s.sensor_id for s in la]


def insert_air(conn: Any, evs: Iterable[events.Event]) -> int:
    rows = [
        (
            e["refDevice"],
            at := events.parse_time(e["dateObserved"]),
            at + timedelta(hours=1),
            e["pm25"],
            e["pm10"],
            e["no2"],
            e["o3"],
            e["so2"],
            e["co"],
            e["temperature"],
            e["relativeHumidity"],
            e["windSpeed"],
        )
        for e in evs
    ]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO air_quality_1h (sensor_id, window_start, window_end, pm25, pm10, no2,"
            " o3, so2, co, temperature_c, relative_humidity, wind_speed_ms)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
    return len(rows)


def loop_events(sensor_ids: Iterable[str], onto: datetime, hours: int) -> list[events.Event]:
    """METR-LA 5-minute speeds of the first ``hours`` of 2012-03-01, shifted to ``onto``."""
    wanted = set(sensor_ids)
    first = datetime(2012, 3, 1, 8, tzinfo=UTC)  # 00:00 in Los Angeles
    records, _ = metr_la_records(DATA_DIR, first, first + timedelta(hours=hours))
    shift = onto - first
    return [e for r in records if (e := r.build(shift))["refDevice"] in wanted]


def insert_traffic(
    conn: Any,
    evs: Iterable[events.Event],
    occupancy: dict[tuple[str, datetime], float] | None = None,
) -> int:
    """Traffic windows of loop events (loops count no vehicles: 0; no occupancy: NULL)."""
    occupancy = occupancy or {}
    rows = []
    for e in evs:
        start = events.parse_time(e["dateObservedFrom"])
        rows.append(
            (
                e["refDevice"],
                start,
                start + METR_LA_STEP,
                0,
                e["averageVehicleSpeed"],
                occupancy.get((e["refDevice"], start)),
            )
        )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO traffic_5m (sensor_id, window_start, window_end, vehicle_count,"
            " avg_speed_kmh, occupancy) VALUES (%s, %s, %s, %s, %s, %s)",
            rows,
        )
    return len(rows)


# ----------------------------------------------------------------------------- a quality scenario
QUALITY_START = datetime(2014, 1, 15, 10, tzinfo=UTC)  # 18:00 in Beijing
SILENT_SENSOR = "beijing-aq-dongsi"


def seed_quality_scenario(conn: Any, start: datetime = QUALITY_START) -> dict[str, Any]:
    """Real readings around the hour ``[start, start + 1h)``, with four kinds of defect.

    * Dongsi (air) goes silent at ``start - 2h``: 180 minutes silent at the hour's end;
    * one loop misses 4 of the hour's 12 windows (completeness 8/12);
    * one loop reports an occupancy of 1.7 in one window (out of range);
    * one loop is registered but never reported.
    """
    end = start + timedelta(hours=1)
    stations, loops = register(conn)
    air = [
        e
        for e in air_events(start - timedelta(hours=6), end)
        if e["refDevice"] != SILENT_SENSOR
        or events.parse_time(e["dateObserved"]) < start - timedelta(hours=2)
    ]
    insert_air(conn, air)
    gappy, wild, mute = loops[1], loops[2], loops[5]
    gap = {start + timedelta(minutes=m) for m in (15, 20, 25, 40)}
    traffic = [
        e
        for e in loop_events(loops[:5], start - timedelta(hours=1), hours=2)
        if not (e["refDevice"] == gappy and events.parse_time(e["dateObservedFrom"]) in gap)
    ]
    insert_traffic(conn, traffic, {(wild, start + timedelta(minutes=30)): 1.7})
    conn.commit()
    return {
        "start": start,
        "end": end,
        "stations": stations,
        "loops": loops,
        "gappy": gappy,
        "wild": wild,
        "mute": mute,
    }


def seed_next_hour(conn: Any, scenario: dict[str, Any]) -> None:
    """The hour after the scenario's, every sensor reporting (Dongsi back, with its backlog)."""
    start, end = scenario["start"], scenario["end"]
    air = [
        e
        for e in air_events(start - timedelta(hours=2), end + timedelta(hours=1))
        if e["refDevice"] == SILENT_SENSOR or events.parse_time(e["dateObserved"]) >= end
    ]
    insert_air(conn, air)
    loops = scenario["loops"][:5]
    later = loop_events(loops, start - timedelta(hours=1), hours=3)
    insert_traffic(conn, [e for e in later if events.parse_time(e["dateObservedFrom"]) >= end])
    conn.commit()
