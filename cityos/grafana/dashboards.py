# ruff: noqa: S608  (the SQL is Grafana's query text for the dashboards, not run by CityOS)
"""The CityOS dashboards, as code: city overview, traffic, air quality, alerts, pipeline health.

Each function returns a foundation-SDK dashboard builder; `DASHBOARDS` lists them by file name
and `render` turns one into the JSON Grafana loads. Every query reads the serving tables of
shared/contracts/serving-schema.md or the internal tables of cityos/db/migrations through the
data source `cityos-postgres` and uses Grafana's macros for the time range, so a query can be
checked outside Grafana with cityos.grafana.macros.expand (tests/grafana does, for all of them).

Time columns: the dashboards show event time (window_start) for readings and wall-clock time
(committed_at, updated_at) for the pipeline. Dashboards default to the browser's time zone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import geomap, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard

from cityos.grafana.panels import (
    ANOMALY_STEPS,
    AQI_STEPS,
    CONGESTION_STEPS,
    SEVERITY_MAPPINGS,
    at,
    by_thresholds,
    city_variable,
    colour_by,
    markers,
    multi_variable,
    thresholds,
)
from cityos.grafana.query import DATASOURCE, SQL

# The SDK's 10.1 branch (what an unpinned install resolves to: see README) misspells it.
THRESHOLDS_STYLE: Any = (
    getattr(common, "GraphThresholdsStyleMode", None) or common.GraphTresholdsStyleMode  # type: ignore[attr-defined]
)

CELL_BACKGROUND = dashboard.DynamicConfigValue(
    id_val="custom.cellOptions", value={"type": "color-background"}
)

FOLDER_UID = "cityos"
FOLDER_TITLE = "CityOS"
TAGS = ["cityos"]

# Zones whose id is selected in $zone, or whose parent is: a sensor's zone is the smallest zone
# containing it, so "in district X" means in X or in one of X's subdistricts (the contract).
IN_ZONES = "(SELECT zone_id FROM zones WHERE zone_id IN ($zone) OR parent_zone_id IN ($zone))"

# A label point per zone: the mean of its boundary's vertices (zones.geometry is GeoJSON text
# and PostGIS is not required). Grafana's geomap cannot colour polygons from query data — its
# GeoJSON layer styles a static file by feature properties only — so zones are markers here.
ZONE_CENTROIDS = """
    SELECT z.zone_id,
           avg((p ->> 1)::float8) AS latitude,
           avg((p ->> 0)::float8) AS longitude
    FROM zones z
    CROSS JOIN LATERAL jsonb_path_query(
        z.geometry::jsonb,
        'strict $.coordinates.** ? (@.type() == "array" && @.size() == 2'
        ' && @[0].type() == "number")'
    ) AS p
    WHERE z.city_id = '$city'
    GROUP BY z.zone_id
"""

OPEN_ALERTS = """
    SELECT a.started_at AS "time", a.severity, a.kind, a.status, a.message,
           coalesce(s.name, i.name, z.name, a.city_id) AS place,
           a.metric, a.value, a.threshold, a.updated_at
    FROM alerts a
    LEFT JOIN sensors s ON s.sensor_id = a.sensor_id
    LEFT JOIN intersections i ON i.intersection_id = a.intersection_id
    LEFT JOIN zones z ON z.zone_id = a.zone_id
    WHERE a.status <> 'resolved' AND a.city_id = '$city'
    ORDER BY CASE a.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
             a.started_at DESC
"""


def _dashboard(uid: str, title: str, description: str, time_from: str) -> Any:
    return (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .timezone("browser")
        .time(time_from, "now")
        .refresh("1m")
        .readonly()
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard_builders.DashboardLink("CityOS")
            .type(dashboard.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)  # $city carries over
            .keep_time(True)
            .target_blank(False)
            .icon("external link")
            .tooltip("")
        )
    )


def _series(title: str, sql: str, unit: str, *, interval: str = "5m") -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(SQL(sql).time_series())
        .unit(unit)
        .interval(interval)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )


def _table(title: str, sql: str) -> table.Panel:
    return table.Panel().title(title).datasource(DATASOURCE).with_target(SQL(sql))


def _stat(title: str, sql: str, unit: str = "none") -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(SQL(sql))
        .unit(unit)
        .reduce_options(
            common_builders.ReduceDataOptions().values(False).calcs(["lastNotNull"]).fields("")
        )
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
    )


# --------------------------------------------------------------------------------- overview
def city_overview() -> Any:
    # One query per coloured layer, so a zone without readings of a kind gets no marker of it.
    latest = """
        WITH centroids AS ({centroids}),
        latest AS (
            SELECT DISTINCT ON (w.sensor_id) w.zone_id, w.{column}
            FROM {table} w
            WHERE $__timeFilter(w.window_start)
            ORDER BY w.sensor_id, w.window_start DESC
        )
        SELECT z.name AS zone, z.level, c.latitude, c.longitude, {agg}(l.{column}) AS {column}
        FROM latest l
        JOIN zones z ON z.zone_id = l.zone_id
        JOIN centroids c ON c.zone_id = l.zone_id
        GROUP BY z.zone_id, z.name, z.level, c.latitude, c.longitude
    """
    zones_congestion = latest.format(
        centroids=ZONE_CENTROIDS, table="traffic_5m", column="congestion_index", agg="avg"
    )
    zones_aqi = latest.format(
        centroids=ZONE_CENTROIDS, table="air_quality_1h", column="aqi", agg="max"
    )
    sensors = """
        SELECT s.name, s.kind, s.road_name, s.latitude, s.longitude
        FROM sensors s WHERE s.city_id = '$city'
    """
    intersections = """
        SELECT i.name, i.latitude, i.longitude,
               count(a.alert_id) FILTER (WHERE a.status <> 'resolved') AS open_alerts
        FROM intersections i
        LEFT JOIN sensors s ON s.intersection_id = i.intersection_id
        LEFT JOIN alerts a ON a.intersection_id = i.intersection_id OR a.sensor_id = s.sensor_id
        WHERE i.city_id = '$city'
        GROUP BY i.intersection_id, i.name, i.latitude, i.longitude
    """
    city_map = (
        geomap.Panel()
        .title("Zones by congestion and AQI, sensors and intersections")
        .description(
            "Zone markers sit at the mean of the zone's boundary vertices and take the latest "
            "window of the time range: circles = congestion index (0 free flow .. 1 standstill), "
            "squares = AQI. Grafana's geomap colours markers from query data; its GeoJSON layer "
            "can only style a static file, so zone polygons are not drawn from the database."
        )
        .datasource(DATASOURCE)
        .with_target(SQL(zones_congestion, "A"))
        .with_target(SQL(sensors, "B"))
        .with_target(SQL(intersections, "C"))
        .with_target(SQL(zones_aqi, "D"))
        .view(geomap.MapViewConfig().id("fit").all_layers(True).padding(10))
        .basemap(common_builders.MapLayerOptions().type("default").name("Basemap"))
        .layers(
            [
                markers("Sensors", "B", color="blue", size=3, opacity=0.6),
                markers("Intersections", "C", color="text", size=6, symbol="triangle"),
                markers("Congestion", "A", color="green", color_field="congestion_index", size=10),
                markers("AQI", "D", color="green", color_field="aqi", size=10, symbol="square"),
            ]
        )
        .override_by_name("congestion_index", colour_by(CONGESTION_STEPS))
        .override_by_name("aqi", colour_by(AQI_STEPS))
    )
    open_alerts = """
        SELECT count(*) FILTER (WHERE severity = 'critical') AS critical,
               count(*) FILTER (WHERE severity = 'warning') AS warning,
               count(*) FILTER (WHERE severity = 'info') AS info
        FROM alerts WHERE status <> 'resolved' AND city_id = '$city'
    """
    now_state = """
        SELECT
          (SELECT avg(t.congestion_index) FROM traffic_5m t JOIN sensors s USING (sensor_id)
            WHERE s.city_id = '$city' AND $__timeFilter(t.window_start)) AS mean_congestion,
          (SELECT max(a.aqi) FROM air_quality_1h a JOIN sensors s USING (sensor_id)
            WHERE s.city_id = '$city' AND $__timeFilter(a.window_start)) AS worst_aqi
    """
    reporting = """
        SELECT count(DISTINCT r.sensor_id) AS reporting,
               (SELECT count(*) FROM sensors WHERE city_id = '$city') AS sensors
        FROM (
            SELECT sensor_id FROM traffic_5m WHERE $__timeFilter(window_start)
            UNION ALL
            SELECT sensor_id FROM air_quality_1h WHERE $__timeFilter(window_start)
        ) r JOIN sensors s ON s.sensor_id = r.sensor_id
        WHERE s.city_id = '$city'
    """
    return (
        _dashboard(
            "cityos-overview",
            "CityOS · City overview",
            "Zones by congestion and air quality, sensors and intersections, open alerts.",
            "now-1h",
        )
        .with_variable(city_variable("cologne"))
        .with_panel(at(city_map, 0, 0, 16, 16))
        .with_panel(
            at(
                _stat("Open alerts", open_alerts).thresholds(
                    thresholds(((None, "green"), (1, "orange")))
                ),
                16,
                0,
                8,
                4,
            )
        )
        .with_panel(
            at(
                _stat("Mean congestion · worst AQI in range", now_state)
                .thresholds(thresholds(CONGESTION_STEPS))
                .override_by_name("worst_aqi", colour_by(AQI_STEPS))
                .override_by_name(
                    "mean_congestion",
                    [dashboard.DynamicConfigValue(id_val="unit", value="percentunit")],
                ),
                16,
                4,
                8,
                4,
            )
        )
        .with_panel(at(_stat("Sensors reporting in range", reporting), 16, 8, 8, 4))
        .with_panel(at(_table("Open alerts", OPEN_ALERTS), 0, 16, 24, 8))
    )


# ---------------------------------------------------------------------------------- traffic
ZONE_FORECAST = """
    SELECT zf.target_start AS "time", z.name || ' (' || z.level || ')' AS metric,
           zf.expected AS forecast
    FROM zone_forecasts zf JOIN zones z ON z.zone_id = zf.zone_id
    WHERE $__timeFilter(zf.target_start) AND z.city_id = '$city' AND zf.metric = '{metric}'
      AND zf.zone_id IN ($zone)
    ORDER BY 1
"""  # a zone's forecast: the mean of its sensors' (anomaly/README.md, "Zone forecasts")


def traffic() -> Any:
    zone_filter = f"t.zone_id IN {IN_ZONES}"
    by_zone = """
        SELECT $__timeGroupAlias(t.window_start, $__interval), z.name AS metric,
               {agg} AS {column}
        FROM traffic_5m t JOIN zones z ON z.zone_id = t.zone_id
        WHERE $__timeFilter(t.window_start) AND z.city_id = '$city' AND {zone_filter}
        GROUP BY 1, 2 ORDER BY 1
    """
    by_intersection = f"""
        SELECT $__timeGroupAlias(t.window_start, $__interval), i.name AS metric,
               avg(t.congestion_index) AS congestion_index
        FROM traffic_5m t
        JOIN sensors s ON s.sensor_id = t.sensor_id
        JOIN intersections i ON i.intersection_id = s.intersection_id
        WHERE $__timeFilter(t.window_start) AND i.city_id = '$city' AND {zone_filter}
        GROUP BY 1, 2 ORDER BY 1
    """
    by_sensor = """
        SELECT t.window_start AS "time", s.name AS metric, t.{column}
        FROM traffic_5m t JOIN sensors s ON s.sensor_id = t.sensor_id
        WHERE $__timeFilter(t.window_start) AND t.sensor_id IN ($sensor)
        ORDER BY 1
    """
    scores = """
        SELECT a.window_start AS "time", s.name || ' · ' || a.metric AS metric, a.score
        FROM anomaly_scores a JOIN sensors s ON s.sensor_id = a.sensor_id
        WHERE $__timeFilter(a.window_start) AND a.sensor_id IN ($sensor)
        ORDER BY 1
    """
    observed = """
        SELECT a.window_start AS "time", s.name AS metric,
               a.value AS observed, a.expected, a.lower, a.upper
        FROM anomaly_scores a JOIN sensors s ON s.sensor_id = a.sensor_id
        WHERE $__timeFilter(a.window_start) AND a.sensor_id IN ($sensor)
          AND a.metric = 'congestion_index'
        ORDER BY 1
    """
    forecast = """
        SELECT f.target_start AS "time", s.name AS metric, f.expected AS forecast,
               f.lower AS forecast_lower, f.upper AS forecast_upper
        FROM forecasts f JOIN sensors s ON s.sensor_id = f.sensor_id
        WHERE $__timeFilter(f.target_start) AND f.sensor_id IN ($sensor)
          AND f.metric = 'congestion_index'
        ORDER BY 1
    """
    anomalies = """
        SELECT a.window_start AS "time", s.name AS sensor, a.metric, a.value, a.expected,
               a.lower, a.upper, a.score, a.model_version
        FROM anomaly_scores a JOIN sensors s ON s.sensor_id = a.sensor_id
        WHERE $__timeFilter(a.window_start) AND a.sensor_id IN ($sensor)
        ORDER BY a.score DESC, a.window_start DESC LIMIT 50
    """
    sensor_query = f"""
        SELECT sensor_id AS __value, name AS __text FROM sensors
        WHERE kind = 'traffic' AND city_id = '$city' AND zone_id IN {IN_ZONES}
    """
    zone_query = """
        SELECT zone_id AS __value, name || ' (' || level || ')' AS __text FROM zones
        WHERE city_id = '$city'
    """

    def zone_series(title: str, agg: str, column: str, unit: str) -> timeseries.Panel:
        sql = by_zone.format(agg=agg, column=column, zone_filter=zone_filter)
        return _series(title, sql, unit)

    def sensor_series(title: str, column: str, unit: str) -> timeseries.Panel:
        return _series(title, by_sensor.format(column=column), unit)

    congestion = (
        zone_series(
            "Congestion index by zone", "avg(t.congestion_index)", "congestion_index", "percentunit"
        )
        .min(0)
        .max(1)
        .thresholds(thresholds(CONGESTION_STEPS))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(THRESHOLDS_STYLE.DASHED)
        )
    )
    return (
        _dashboard(
            "cityos-traffic",
            "CityOS · Traffic",
            "5-minute windows per zone, intersection and sensor; anomaly scores and forecasts.",
            "now-6h",
        )
        .with_variable(city_variable("cologne"))
        .with_variable(multi_variable("zone", "Zone", zone_query))
        .with_variable(multi_variable("sensor", "Sensor", sensor_query))
        .with_panel(at(congestion, 0, 0, 12, 8))
        .with_panel(
            at(
                zone_series("Vehicles by zone", "sum(t.vehicle_count)", "vehicles", "short"),
                12,
                0,
                12,
                8,
            )
        )
        .with_panel(
            at(
                _series("Congestion index by intersection", by_intersection, "percentunit")
                .min(0)
                .max(1),
                0,
                8,
                24,
                8,
            )
        )
        .with_panel(at(sensor_series("Vehicle count", "vehicle_count", "short"), 0, 16, 12, 8))
        .with_panel(
            at(sensor_series("Average speed", "avg_speed_kmh", "velocitykmh"), 12, 16, 12, 8)
        )
        .with_panel(
            at(sensor_series("Occupancy", "occupancy", "percentunit").min(0).max(1), 0, 24, 12, 8)
        )
        .with_panel(
            at(
                sensor_series("Congestion index", "congestion_index", "percentunit")
                .min(0)
                .max(1)
                .thresholds(thresholds(CONGESTION_STEPS)),
                12,
                24,
                12,
                8,
            )
        )
        .with_panel(
            at(
                _series("Anomaly score", scores, "none")
                .min(0)
                .max(1)
                .thresholds(thresholds(ANOMALY_STEPS))
                .thresholds_style(
                    common_builders.GraphThresholdsStyleConfig().mode(THRESHOLDS_STYLE.DASHED)
                ),
                0,
                32,
                12,
                8,
            )
        )
        .with_panel(
            at(
                _series(
                    "Congestion index: observed, model expectation, forecast",
                    observed,
                    "percentunit",
                ).with_target(SQL(forecast, "B").time_series()),
                12,
                32,
                12,
                8,
            )
        )
        .with_panel(
            at(
                _table(
                    "Most anomalous windows (alert rule: score ≥ 0.9)", anomalies
                ).override_by_name("score", colour_by(ANOMALY_STEPS) + [CELL_BACKGROUND]),
                0,
                40,
                24,
                8,
            )
        )
        .with_panel(
            at(
                _series(
                    "Congestion forecast by zone (mean of its sensors' forecasts)",
                    ZONE_FORECAST.format(metric="congestion_index"),
                    "percentunit",
                )
                .min(0)
                .max(1)
                .thresholds(thresholds(CONGESTION_STEPS))
                .thresholds_style(
                    common_builders.GraphThresholdsStyleConfig().mode(THRESHOLDS_STYLE.DASHED)
                ),
                0,
                48,
                24,
                8,
            )
        )
    )


# ------------------------------------------------------------------------------ air quality
def air_quality() -> Any:
    station_filter = "a.sensor_id IN ($station)"
    aqi_by_station = f"""
        SELECT a.window_start AS "time", s.name AS metric, a.aqi
        FROM air_quality_1h a JOIN sensors s ON s.sensor_id = a.sensor_id
        WHERE $__timeFilter(a.window_start) AND {station_filter}
        ORDER BY 1
    """
    aqi_by_zone = f"""
        SELECT $__timeGroupAlias(a.window_start, $__interval), z.name AS metric,
               max(a.aqi) AS aqi
        FROM air_quality_1h a JOIN zones z ON z.zone_id = a.zone_id
        WHERE $__timeFilter(a.window_start) AND z.city_id = '$city'
          AND a.zone_id IN {IN_ZONES}
        GROUP BY 1, 2 ORDER BY 1
    """
    pollutants = f"""
        SELECT a.window_start AS "time", p.pollutant AS metric, avg(p.value) AS value
        FROM air_quality_1h a
        CROSS JOIN LATERAL (VALUES ('PM2.5', a.pm25), ('PM10', a.pm10), ('NO2', a.no2),
                                   ('O3', a.o3), ('SO2', a.so2)) AS p (pollutant, value)
        WHERE $__timeFilter(a.window_start) AND {station_filter}
        GROUP BY 1, 2 ORDER BY 1
    """
    carbon_monoxide = f"""
        SELECT a.window_start AS "time", s.name AS metric, a.co
        FROM air_quality_1h a JOIN sensors s ON s.sensor_id = a.sensor_id
        WHERE $__timeFilter(a.window_start) AND {station_filter} AND a.co IS NOT NULL
        ORDER BY 1
    """
    latest = f"""
        SELECT DISTINCT ON (a.sensor_id) s.name AS station, z.name AS zone,
               a.window_start AS "time", a.aqi, a.aqi_category,
               a.pm25, a.pm10, a.no2, a.o3, a.so2, a.co
        FROM air_quality_1h a
        JOIN sensors s ON s.sensor_id = a.sensor_id
        LEFT JOIN zones z ON z.zone_id = a.zone_id
        WHERE $__timeFilter(a.window_start) AND {station_filter}
        ORDER BY a.sensor_id, a.window_start DESC
    """
    zone_query = """
        SELECT zone_id AS __value, name || ' (' || level || ')' AS __text FROM zones
        WHERE city_id = '$city'
    """
    station_query = f"""
        SELECT sensor_id AS __value, name AS __text FROM sensors
        WHERE kind = 'air_quality' AND city_id = '$city' AND zone_id IN {IN_ZONES}
    """
    bands = common_builders.GraphThresholdsStyleConfig().mode(THRESHOLDS_STYLE.LINE_AND_AREA)
    return (
        _dashboard(
            "cityos-air-quality",
            "CityOS · Air quality",
            "Hourly windows per station and zone: AQI with its bands, pollutants in µg/m³.",
            "now-7d",
        )
        .with_variable(city_variable("beijing"))
        .with_variable(multi_variable("zone", "Zone", zone_query))
        .with_variable(multi_variable("station", "Station", station_query))
        .with_panel(
            at(
                _series("AQI by station", aqi_by_station, "none", interval="1h")
                .min(0)
                .thresholds(thresholds(AQI_STEPS))
                .thresholds_style(bands),
                0,
                0,
                16,
                9,
            )
        )
        .with_panel(
            at(
                statetimeline.Panel()
                .title("AQI band by station")
                .datasource(DATASOURCE)
                .with_target(SQL(aqi_by_station).time_series())
                .interval("1h")
                .thresholds(thresholds(AQI_STEPS))
                .color_scheme(by_thresholds())
                .show_value(common.VisibilityMode.NEVER),
                16,
                0,
                8,
                9,
            )
        )
        .with_panel(
            at(
                _series("Worst AQI by zone", aqi_by_zone, "none", interval="1h")
                .thresholds(thresholds(AQI_STEPS))
                .thresholds_style(bands),
                0,
                9,
                12,
                8,
            )
        )
        .with_panel(
            at(
                _series("Pollutants (mean of the stations)", pollutants, "conμgm3", interval="1h"),
                12,
                9,
                12,
                8,
            )
        )
        .with_panel(
            at(_series("CO by station", carbon_monoxide, "conμgm3", interval="1h"), 0, 17, 12, 8)
        )
        .with_panel(
            at(
                _table("Latest hour per station", latest).override_by_name(
                    "aqi", colour_by(AQI_STEPS) + [CELL_BACKGROUND]
                ),
                12,
                17,
                12,
                8,
            )
        )
        .with_panel(
            at(
                _series(
                    "PM2.5 forecast by zone (mean of its stations' forecasts)",
                    ZONE_FORECAST.format(metric="pm25"),
                    "conμgm3",
                    interval="1h",
                ),
                0,
                25,
                24,
                8,
            )
        )
    )


# ----------------------------------------------------------------------------------- alerts
def alerts() -> Any:
    subjects = """
        WITH a AS (
            SELECT a.*, a.kind || ' · ' || coalesce(s.name, i.name, z.name, a.city_id) AS subject,
                   CASE a.severity WHEN 'critical' THEN 3 WHEN 'warning' THEN 2 ELSE 1 END AS level
            FROM alerts a
            LEFT JOIN sensors s ON s.sensor_id = a.sensor_id
            LEFT JOIN intersections i ON i.intersection_id = a.intersection_id
            LEFT JOIN zones z ON z.zone_id = a.zone_id
            WHERE a.city_id = '$city'
        )
        SELECT greatest(started_at, $__timeFrom()::timestamptz) AS "time", subject AS metric,
               level AS value
        FROM a
        WHERE started_at <= $__timeTo() AND (resolved_at IS NULL OR resolved_at >= $__timeFrom())
        UNION ALL
        SELECT resolved_at, subject, 0 FROM a WHERE $__timeFilter(resolved_at)
        ORDER BY 1
    """
    recent = """
        SELECT a.started_at AS "time", a.severity, a.kind, a.status, a.message,
               coalesce(s.name, i.name, z.name, a.city_id) AS place, a.resolved_at
        FROM alerts a
        LEFT JOIN sensors s ON s.sensor_id = a.sensor_id
        LEFT JOIN intersections i ON i.intersection_id = a.intersection_id
        LEFT JOIN zones z ON z.zone_id = a.zone_id
        WHERE a.city_id = '$city'
          AND ($__timeFilter(a.started_at) OR $__timeFilter(a.updated_at))
        ORDER BY a.started_at DESC LIMIT 500
    """
    raised = """
        SELECT $__timeGroupAlias(started_at, $__interval), kind AS metric, count(*) AS alerts
        FROM alerts WHERE $__timeFilter(started_at) AND city_id = '$city'
        GROUP BY 1, 2 ORDER BY 1
    """
    timeline = (
        statetimeline.Panel()
        .title("Alerts by subject (0 clear · 1 info · 2 warning · 3 critical)")
        .datasource(DATASOURCE)
        .with_target(SQL(subjects).time_series())
        .mappings(SEVERITY_MAPPINGS)
        .merge_values(True)
        .show_value(common.VisibilityMode.NEVER)
        .row_height(0.8)
    )
    return (
        _dashboard(
            "cityos-alerts",
            "CityOS · Alerts",
            "The alerts CityOS raised (cityos/alerting): timeline by subject, open and recent.",
            "now-24h",
        )
        .with_variable(city_variable("cologne"))
        .with_panel(at(timeline, 0, 0, 24, 10))
        .with_panel(at(_table("Open alerts", OPEN_ALERTS), 0, 10, 24, 8))
        .with_panel(
            at(
                _series("Alerts raised by kind", raised, "short", interval="1h").draw_style(
                    common.GraphDrawStyle.BARS
                ),
                0,
                18,
                8,
                8,
            )
        )
        .with_panel(at(_table("Alerts started or updated in range", recent), 8, 18, 16, 8))
    )


# -------------------------------------------------------------------------- pipeline health
# stream_commits has one row per merged micro-batch (0002, 0011): committed_at is when its merge
# transaction began, batch_started_at when foreachBatch began it; batch_duration_ms (Spark's wall
# time of the whole batch) and offsets_behind (messages the batch left in the topic) come from
# Spark's progress report afterwards and are NULL when it never arrived.
LAST_BATCHES = """
    SELECT DISTINCT ON (query_name) query_name, batch_id, committed_at AS "time",
           extract(epoch FROM now() - committed_at) AS since_commit_s,
           batch_duration_ms / 1000.0 AS duration_s,
           extract(epoch FROM committed_at - batch_started_at) AS until_merge_s,
           valid_rows, dead_letters, offsets_behind
    FROM stream_commits
    ORDER BY query_name, batch_id DESC
"""


def pipeline_health() -> Any:
    throughput = """
        SELECT $__timeGroupAlias(committed_at, $__interval), query_name AS metric,
               sum(valid_rows) / ($__interval_ms / 1000.0) AS rows_per_s
        FROM stream_commits WHERE $__timeFilter(committed_at)
        GROUP BY 1, 2 ORDER BY 1
    """
    durations = """
        SELECT $__timeGroupAlias(committed_at, $__interval), query_name AS metric,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY batch_duration_ms) / 1000 AS p50_s,
               max(batch_duration_ms)::float8 / 1000 AS max_s
        FROM stream_commits
        WHERE $__timeFilter(committed_at) AND batch_duration_ms IS NOT NULL
        GROUP BY 1, 2 ORDER BY 1
    """
    lag = """
        SELECT $__timeGroupAlias(committed_at, $__interval), query_name AS metric,
               max(offsets_behind) AS offsets_behind
        FROM stream_commits
        WHERE $__timeFilter(committed_at) AND offsets_behind IS NOT NULL
        GROUP BY 1, 2 ORDER BY 1
    """
    dead_letter_rate = """
        SELECT $__timeGroupAlias(committed_at, $__interval), query_name AS metric,
               sum(dead_letters) / ($__interval_ms / 1000.0) AS dead_letters_per_s
        FROM stream_commits WHERE $__timeFilter(committed_at)
        GROUP BY 1, 2 ORDER BY 1
    """
    per_batch = """
        SELECT committed_at AS "time", query_name AS metric, valid_rows AS rows_per_batch
        FROM stream_commits WHERE $__timeFilter(committed_at) ORDER BY 1
    """
    cadence = """
        SELECT "time", metric, seconds FROM (
            SELECT committed_at AS "time", query_name AS metric,
                   extract(epoch FROM committed_at - lag(committed_at)
                       OVER (PARTITION BY query_name ORDER BY batch_id)) AS seconds
            FROM stream_commits
            WHERE committed_at BETWEEN $__timeFrom()::timestamptz - interval '1 hour'
                                   AND $__timeTo()
        ) c
        WHERE $__timeFilter("time") AND seconds IS NOT NULL ORDER BY 1
    """
    dead_letters = """
        SELECT $__timeGroupAlias(committed_at, $__interval), query_name AS metric,
               sum(dead_letters)::float8 / nullif(sum(valid_rows + dead_letters), 0)
                 AS dead_letter_share
        FROM stream_commits WHERE $__timeFilter(committed_at)
        GROUP BY 1, 2 ORDER BY 1
    """
    freshness = """
        SELECT extract(epoch FROM now() - (SELECT max(committed_at) FROM stream_commits))
                 AS last_commit,
               extract(epoch FROM now() - (SELECT max(window_end) FROM traffic_5m))
                 AS traffic_5m,
               extract(epoch FROM now() - (SELECT max(window_end) FROM air_quality_1h))
                 AS air_quality_1h
    """
    event_lag = """
        SELECT w.query_name, w.sensor_id, s.name AS sensor, w.max_event_time,
               extract(epoch FROM now() - w.max_event_time) AS lag_s
        FROM sensor_watermarks w LEFT JOIN sensors s ON s.sensor_id = w.sensor_id
        ORDER BY lag_s DESC
    """
    lag_stat = """
        SELECT extract(epoch FROM now() - max(max_event_time)) AS freshest_sensor,
               extract(epoch FROM now() - min(max_event_time)) AS stalest_sensor
        FROM sensor_watermarks
    """
    scoring = """
        SELECT p.stream, count(*) AS sensors, min(p.scored_until) AS oldest,
               max(p.scored_until) AS newest,
               extract(epoch FROM now() - max(p.scored_until)) AS lag_s
        FROM scoring_progress p GROUP BY p.stream ORDER BY p.stream
    """
    registry = """
        SELECT family, version, status, created_at AS "time", promoted_at, data_start, data_end,
               metrics::text AS metrics, note
        FROM model_registry ORDER BY created_at DESC
    """
    detectors = """
        SELECT metric, model_version, count(*) AS sensors, max(updated_at) AS last_checkpoint,
               extract(epoch FROM now() - max(updated_at)) AS checkpoint_age_s
        FROM detector_state GROUP BY metric, model_version ORDER BY metric
    """
    outbox = """
        SELECT count(*) FILTER (WHERE published_at IS NULL) AS unpublished,
               coalesce(extract(epoch FROM now() - min(created_at)
                   FILTER (WHERE published_at IS NULL)), 0) AS oldest_unpublished_s
        FROM alert_outbox
    """
    quality = """
        SELECT q.interval_start AS "time", q.check_name, q.sensor_id, s.name AS sensor,
               q.value, q.threshold, q.details::text AS details
        FROM data_quality_checks q LEFT JOIN sensors s ON s.sensor_id = q.sensor_id
        WHERE NOT q.passed AND $__timeFilter(q.interval_start)
        ORDER BY q.interval_start DESC, q.check_name LIMIT 500
    """
    minutes = thresholds(((None, "green"), (900, "orange"), (3600, "red")))
    points = common.GraphDrawStyle.POINTS
    return (
        _dashboard(
            "cityos-pipeline",
            "CityOS · Pipeline health",
            "Streaming throughput, batch durations, consumer lag, dead letters, cadence, "
            "event-time lag, scoring, models, data quality.",
            "now-6h",
        )
        .with_panel(
            at(_series("Throughput", throughput, "suffix: rows/s", interval="1m"), 0, 0, 12, 8)
        )
        .with_panel(
            at(
                _series("Batch duration (p50 and max)", durations, "s", interval="1m").min(0),
                12,
                0,
                12,
                8,
            )
        )
        .with_panel(
            at(
                _series(
                    "Consumer lag (messages a batch left in the topic, max)",
                    lag,
                    "short",
                    interval="1m",
                ).min(0),
                0,
                8,
                12,
                8,
            )
        )
        .with_panel(
            at(
                _series(
                    "Dead letters (DLQ rate)", dead_letter_rate, "suffix: msg/s", interval="1m"
                ).min(0),
                12,
                8,
                12,
                8,
            )
        )
        .with_panel(
            at(
                _series("Dead-letter share", dead_letters, "percentunit", interval="1m").min(0),
                0,
                16,
                8,
                8,
            )
        )
        .with_panel(
            at(
                _series("Rows per batch", per_batch, "short", interval="1m").draw_style(points),
                8,
                16,
                8,
                8,
            )
        )
        .with_panel(
            at(
                _series(
                    "Batch cadence (time since the previous commit)", cadence, "s", interval="1m"
                ).draw_style(points),
                16,
                16,
                8,
                8,
            )
        )
        .with_panel(
            at(_stat("Age of the newest data", freshness, "s").thresholds(minutes), 0, 24, 8, 4)
        )
        .with_panel(
            at(
                _stat("Event-time lag (now − sensor watermark)", lag_stat, "s").thresholds(minutes),
                8,
                24,
                8,
                4,
            )
        )
        .with_panel(
            at(
                _stat("Alert outbox backlog", outbox).thresholds(
                    thresholds(((None, "green"), (1, "orange")))
                ),
                16,
                24,
                8,
                4,
            )
        )
        .with_panel(
            at(_table("Last batch per query (time since its commit)", LAST_BATCHES), 0, 28, 24, 5)
        )
        .with_panel(at(_table("Event-time lag per sensor", event_lag), 0, 33, 12, 8))
        .with_panel(at(_table("Anomaly scoring progress", scoring), 12, 33, 12, 4))
        .with_panel(at(_table("Detector checkpoints", detectors), 12, 37, 12, 4))
        .with_panel(at(_table("Model registry", registry), 0, 41, 24, 8))
        .with_panel(at(_table("Failed data-quality checks", quality), 0, 49, 24, 8))
    )


DASHBOARDS: dict[str, Callable[[], Any]] = {
    "city-overview": city_overview,
    "traffic": traffic,
    "air-quality": air_quality,
    "alerts": alerts,
    "pipeline-health": pipeline_health,
}


def _for_grafana_12(data: dict[str, Any]) -> dict[str, Any]:
    """Drop what the SDK writes but Grafana 12's dashboard schema no longer has.

    ``style`` (gone since Grafana 11), ``auto``/``auto_min``/``auto_count`` on variables that
    are not interval variables, the variables' ``id``, and ``options: null`` on tables: the
    vendored schema (infra/grafana/schema) rejects each, and tests/grafana checks it.
    """
    data.pop("style", None)
    for variable in data.get("templating", {}).get("list", []):
        variable.pop("id", None)
        if variable.get("type") != "interval":
            for key in ("auto", "auto_min", "auto_count"):
                variable.pop(key, None)
    for number, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = number
        if panel.get("options") is None:
            panel["options"] = {}
    return data


def build(name: str) -> dict[str, Any]:
    """One dashboard as the JSON object Grafana stores (panel ids numbered in order)."""
    model = DASHBOARDS[name]().build()
    return _for_grafana_12(json.loads(json.dumps(model, cls=JSONEncoder)))


def render(name: str) -> str:
    """The file infra/grafana/dashboards/<name>.json holds: stable key order, final newline."""
    return json.dumps(build(name), indent=2, ensure_ascii=False) + "\n"
