"""Every panel query of every dashboard, expanded as Grafana would, on the real PostgreSQL.

The dashboard test database holds the evaluation fixture's real data (cologne8 SUMO traffic,
Beijing PRSA air quality) and the pipeline tables seeded from it (tests/grafana/seed.py). For
each dashboard a real time range inside the data is chosen; template variables take the values
their own queries return (All, or a chosen subset), Grafana's macros are expanded by
cityos.grafana.macros, and the rows must have the shape the panel type needs.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from cityos.grafana.dashboards import DASHBOARDS, build
from cityos.grafana.macros import Variable, expand, parse_interval
from tests.grafana.seed import AIR_QUERY, TRAFFIC_QUERY
from tests.sql import scalar

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Case:
    """A dashboard viewed over a time range with some variable values picked."""

    dashboard: str
    start: datetime
    end: datetime
    interval: str  # Grafana's $__interval for the range at a usual panel width
    picks: tuple[tuple[str, str | tuple[str, ...]], ...] = ()


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# Traffic: 2016-12-18/19 Cologne local days; air quality: 2016-12-14..22 Beijing; the
# fixture's alert snapshot: 2016-12-19 23:00 UTC.
CASES = {
    "overview-cologne": Case(
        "city-overview",
        _utc(2016, 12, 19, 22),
        _utc(2016, 12, 19, 23),
        "2s",
        (("city", "cologne"),),
    ),
    "overview-beijing": Case(
        "city-overview",
        _utc(2016, 12, 19, 22),
        _utc(2016, 12, 19, 23),
        "2s",
        (("city", "beijing"),),
    ),
    "traffic": Case("traffic", _utc(2016, 12, 19), _utc(2016, 12, 20), "1m"),
    "air-quality": Case("air-quality", _utc(2016, 12, 15), _utc(2016, 12, 23), "10m"),
    "alerts-cologne": Case(
        "alerts", _utc(2016, 12, 13), _utc(2016, 12, 23), "10m", (("city", "cologne"),)
    ),
    "alerts-beijing": Case(
        "alerts", _utc(2016, 12, 13), _utc(2016, 12, 23), "10m", (("city", "beijing"),)
    ),
    "pipeline-health": Case("pipeline-health", _utc(2016, 12, 19), _utc(2016, 12, 20), "1m"),
}

# Tables allowed to come back empty in a case, and why (everything else must return rows).
MAP = "Zones by congestion and AQI, sensors and intersections"
MAY_BE_EMPTY = {
    ("overview-beijing", MAP, "C"),  # Beijing has air-quality stations, no signals,
    ("overview-beijing", MAP, "A"),  # and no traffic sensors;
    ("overview-cologne", MAP, "D"),  # Cologne has no air-quality stations in the fixture
}


def test_every_dashboard_has_a_case() -> None:
    assert {c.dashboard for c in CASES.values()} == set(DASHBOARDS)


def _targets() -> Iterator[Any]:
    for case_name, case in CASES.items():
        for panel in build(case.dashboard)["panels"]:
            for target in panel.get("targets", []):
                yield pytest.param(
                    case_name, panel, target, id=f"{case_name}:{panel['title']}:{target['refId']}"
                )


def _query(conn: psycopg.Connection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with conn.cursor() as cur:
        cur.execute(sql)  # type: ignore[arg-type]  # Grafana's raw SQL, as Grafana sends it
        names = [d.name for d in cur.description or []]
        return names, cur.fetchall()


def _interval(case: Case, panel: dict[str, Any]) -> timedelta:
    """$__interval: the range's interval, but never below the panel's minimum interval."""
    interval = parse_interval(case.interval)
    if panel.get("interval"):
        interval = max(interval, parse_interval(panel["interval"]))
    return interval


def resolve_variables(conn: psycopg.Connection, name: str) -> dict[str, Variable]:
    """Each variable in dashboard order: its query run, then the pick, All, or its default."""
    case = CASES[name]
    picks = dict(case.picks)
    values: dict[str, Variable] = {}
    for var in build(case.dashboard).get("templating", {}).get("list", []):
        sql = expand(
            var["query"],
            time_from=case.start,
            time_to=case.end,
            interval=parse_interval(case.interval),
            variables=values,
        )
        names, rows = _query(conn, sql)
        options = [str(r[names.index("__value")]) for r in rows]
        assert options, f"variable ${var['name']} has no options"
        multi, include_all = bool(var.get("multi")), bool(var.get("includeAll"))
        if var["name"] in picks:
            pick = picks[var["name"]]
            assert set([pick] if isinstance(pick, str) else pick) <= set(options), pick
        elif include_all:
            pick = tuple(options)  # "All" without allValue: every option, quoted
        else:
            pick = var["current"]["value"]
        values[var["name"]] = Variable(pick, multi=multi, include_all=include_all)
    return values


@pytest.fixture(scope="module")
def conn(grafana_database_url: str) -> Iterator[psycopg.Connection]:
    from cityos.db import connect

    with connect(grafana_database_url, autocommit=True) as connection:
        connection.execute("SET default_transaction_read_only = on")  # as grafana_reader
        yield connection


def _is_number(value: Any) -> bool:
    return value is None or (
        isinstance(value, numbers.Number | Decimal) and not isinstance(value, bool)
    )


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    assert _is_number(value) and value is not None, f"time column holds {value!r}"
    return float(value)


def check_time_series(
    case: Case, names: list[str], rows: list[tuple[Any, ...]], interval: timedelta
) -> None:
    """Grafana's SQL time series: a `time` column (sorted), optional `metric`, numbers."""
    assert "time" in names, names
    t = names.index("time")
    times = [_epoch(r[t]) for r in rows]
    assert times == sorted(times), "time series rows must be sorted by time"
    lo = case.start.timestamp() - interval.total_seconds()  # $__timeGroup floors the start
    assert all(lo <= x <= case.end.timestamp() for x in times), (min(times), max(times))
    values = [i for i, n in enumerate(names) if n not in ("time", "metric")]
    assert values, f"no value column in {names}"
    for row in rows:
        assert all(_is_number(row[i]) for i in values), row
        if "metric" in names:
            assert isinstance(row[names.index("metric")], str), row
    assert any(row[i] is not None for row in rows for i in values), "every value is NULL"


def check_geomap(names: list[str], rows: list[tuple[Any, ...]]) -> None:
    """The markers layers locate rows by their latitude/longitude columns."""
    assert {"latitude", "longitude"} <= set(names), names
    lat, lon = names.index("latitude"), names.index("longitude")
    for row in rows:
        assert -90 <= row[lat] <= 90 and -180 <= row[lon] <= 180, row


def check_stat(names: list[str], rows: list[tuple[Any, ...]]) -> None:
    assert len(rows) == 1, f"a stat query returns one row, got {len(rows)}"
    assert all(_is_number(v) for v in rows[0]), dict(zip(names, rows[0], strict=True))


@pytest.mark.parametrize(("case_name", "panel", "target"), list(_targets()))
def test_panel_query(
    conn: psycopg.Connection, case_name: str, panel: dict[str, Any], target: dict[str, Any]
) -> None:
    case = CASES[case_name]
    interval = _interval(case, panel)
    sql = expand(
        target["rawSql"],
        time_from=case.start,
        time_to=case.end,
        interval=interval,
        variables=resolve_variables(conn, case_name),
    )
    names, rows = _query(conn, sql)
    if not rows and (case_name, panel["title"], target["refId"]) in MAY_BE_EMPTY:
        return
    assert rows, f"no rows for {panel['title']}: {sql}"
    if target["format"] == "time_series":
        check_time_series(case, names, rows, interval)
    elif panel["type"] == "geomap":
        check_geomap(names, rows)
    elif panel["type"] == "stat":
        check_stat(names, rows)
    else:
        assert panel["type"] == "table", panel["type"]
        assert len(set(names)) == len(names), f"duplicate column names: {names}"


def _rows(
    conn: psycopg.Connection, case_name: str, title: str, ref_id: str = "A", **override: Variable
) -> tuple[list[str], list[tuple[Any, ...]]]:
    case = CASES[case_name]
    panel = next(p for p in build(case.dashboard)["panels"] if p["title"] == title)
    target = next(t for t in panel["targets"] if t["refId"] == ref_id)
    variables = resolve_variables(conn, case_name) | override
    sql = expand(
        target["rawSql"],
        time_from=case.start,
        time_to=case.end,
        interval=_interval(case, panel),
        variables=variables,
    )
    return _query(conn, sql)


def test_zone_markers_carry_congestion_in_cologne_and_aqi_in_beijing(
    conn: psycopg.Connection,
) -> None:
    title = MAP
    names, rows = _rows(conn, "overview-cologne", title)
    congestion = [r[names.index("congestion_index")] for r in rows]
    assert any(c is not None for c in congestion) and all(
        c is None or 0 <= c <= 1 for c in congestion
    )
    for row in rows:  # zone label points fall inside Cologne
        assert 50.8 < row[names.index("latitude")] < 51.1, row
        assert 6.7 < row[names.index("longitude")] < 7.2, row
    names, rows = _rows(conn, "overview-beijing", title, "D")
    assert any(r[names.index("aqi")] is not None for r in rows)
    for row in rows:  # Beijing's districts
        assert 39.4 < row[names.index("latitude")] < 41.1, row
        assert 115.4 < row[names.index("longitude")] < 117.6, row


def test_multi_value_sensor_variable_filters_to_the_picked_sensors(
    conn: psycopg.Connection,
) -> None:
    names, rows = _query(
        conn, "SELECT sensor_id, name FROM sensors WHERE kind = 'traffic' ORDER BY sensor_id"
    )
    picked = rows[:2]
    _, series = _rows(
        conn,
        "traffic",
        "Vehicle count",
        sensor=Variable(tuple(r[0] for r in picked), multi=True, include_all=True),
    )
    assert {r[1] for r in series} == {r[1] for r in picked}


def test_a_district_selects_its_subdistricts(conn: psycopg.Connection) -> None:
    names, rows = _query(
        conn,
        "SELECT p.zone_id, array_agg(c.name) FROM zones p JOIN zones c"
        " ON c.parent_zone_id = p.zone_id JOIN traffic_5m t ON t.zone_id = c.zone_id"
        " WHERE p.city_id = 'cologne' GROUP BY p.zone_id ORDER BY count(*) DESC LIMIT 1",
    )
    district, subdistricts = rows[0]
    _, series = _rows(
        conn,
        "traffic",
        "Congestion index by zone",
        zone=Variable((district,), multi=True, include_all=True),
    )
    assert series and {r[1] for r in series} <= set(subdistricts)


def test_alert_timeline_levels_are_the_value_mappings(conn: psycopg.Connection) -> None:
    _, rows = _rows(
        conn, "alerts-cologne", "Alerts by subject (0 clear · 1 info · 2 warning · 3 critical)"
    )
    assert {r[2] for r in rows} <= {0, 1, 2, 3} and 0 in {r[2] for r in rows}


def test_batch_durations_are_a_median_below_a_maximum(conn: psycopg.Connection) -> None:
    names, rows = _rows(conn, "pipeline-health", "Batch duration (p50 and max)")
    p50, top = names.index("p50_s"), names.index("max_s")
    assert {r[names.index("metric")] for r in rows} == {TRAFFIC_QUERY, AIR_QUERY}
    assert all(0 < r[p50] <= r[top] for r in rows), rows[:5]
    want = scalar(
        conn,  # the slowest batch of the range, straight from the table
        "SELECT max(batch_duration_ms)::float8 / 1000 FROM stream_commits"
        " WHERE committed_at BETWEEN '2016-12-19T00:00:00Z' AND '2016-12-20T00:00:00Z'",
    )
    assert max(r[top] for r in rows) == want


def test_consumer_lag_is_the_messages_left_behind(conn: psycopg.Connection) -> None:
    names, rows = _rows(
        conn, "pipeline-health", "Consumer lag (messages a batch left in the topic, max)"
    )
    lag = [r[names.index("offsets_behind")] for r in rows]
    assert all(n >= 0 for n in lag) and any(n > 0 for n in lag)


def test_last_batch_per_query_says_how_long_ago_it_committed(conn: psycopg.Connection) -> None:
    names, rows = _rows(conn, "pipeline-health", "Last batch per query (time since its commit)")
    got = {r[names.index("query_name")]: dict(zip(names, r, strict=True)) for r in rows}
    assert set(got) == {TRAFFIC_QUERY, AIR_QUERY}
    for name, row in got.items():
        newest = conn.execute(
            "SELECT max(batch_id), max(committed_at) FROM stream_commits WHERE query_name = %s",
            (name,),
        ).fetchone()
        assert (row["batch_id"], row["time"]) == newest
        assert row["since_commit_s"] > 0
        assert 0 < row["until_merge_s"] < row["duration_s"]
        assert row["offsets_behind"] == 0  # nothing arrived after the last window
