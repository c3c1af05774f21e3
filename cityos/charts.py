"""Pictures of what the pipeline produced: time series as charts, places as maps (PNG files).

Drawn from the serving tables only, so they show exactly what a dashboard or the NL-query service
would read. matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from cityos.settings import Settings

log = logging.getLogger(__name__)

CONGESTION_SERIES = """
SELECT i.name, t.window_start, avg(t.congestion_index) AS congestion
FROM traffic_5m t JOIN sensors s USING (sensor_id) JOIN intersections i USING (intersection_id)
WHERE s.city_id = %(city)s
GROUP BY i.name, t.window_start ORDER BY t.window_start
"""

AQI_SERIES = """
SELECT s.name, a.window_start, a.aqi
FROM air_quality_1h a JOIN sensors s USING (sensor_id)
WHERE s.city_id = %(city)s AND a.aqi IS NOT NULL ORDER BY a.window_start
"""

SENSOR_POINTS = """
SELECT s.sensor_id, s.longitude, s.latitude, s.kind, latest.congestion_index
FROM sensors s
LEFT JOIN LATERAL (
  SELECT congestion_index FROM traffic_5m t WHERE t.sensor_id = s.sensor_id
  ORDER BY window_start DESC LIMIT 1
) latest ON true
WHERE s.city_id = %(city)s
"""


def _frame(conn, query: str, city: str):  # noqa: ANN001, ANN202 - psycopg connection, DataFrame
    import pandas as pd

    cur = conn.execute(query, {"city": city})
    return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


def _line_chart(
    data,
    series: str,
    y: str,
    title: str,
    ylabel: str,
    path: Path,  # noqa: ANN001
    ylim: tuple[float, float] | None = None,
) -> Path | None:
    """One line per ``series`` value over ``window_start``."""
    import matplotlib.pyplot as plt

    if data.empty:
        return None
    fig, ax = plt.subplots(figsize=(11, 5))
    for name, rows in data.groupby(series):
        ax.plot(rows.window_start, rows[y], label=name, linewidth=1.1)
    ax.set(title=title, ylabel=ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def congestion_chart(conn, city: str, path: Path) -> Path | None:  # noqa: ANN001
    """Mean congestion index per intersection over time (5-minute windows)."""
    return _line_chart(
        _frame(conn, CONGESTION_SERIES, city),
        "name",
        "congestion",
        f"{city}: congestion index per intersection (5-minute windows, UTC)",
        "congestion index (0 free flow .. 1 standstill)",
        path,
        ylim=(0, 1),
    )


def aqi_chart(conn, city: str, path: Path) -> Path | None:  # noqa: ANN001
    """Hourly AQI per station."""
    return _line_chart(
        _frame(conn, AQI_SERIES, city),
        "name",
        "aqi",
        f"{city}: hourly AQI per station (UTC)",
        "AQI",
        path,
    )


def sensor_map(conn, city: str, path: Path) -> Path | None:  # noqa: ANN001
    """The city's sensors on its zones, traffic sensors coloured by their latest congestion."""
    import geopandas as gpd
    import matplotlib.pyplot as plt
    from shapely.geometry import shape

    points = _frame(conn, SENSOR_POINTS, city)
    if points.empty:
        return None
    zones = conn.execute(
        "SELECT zone_id, name, level, geometry FROM zones WHERE city_id = %s", (city,)
    ).fetchall()
    fig, ax = plt.subplots(figsize=(9, 9))
    if zones:
        gdf = gpd.GeoDataFrame(
            [{"name": z[1], "level": z[2]} for z in zones],
            geometry=[shape(json.loads(z[3])) for z in zones],
            crs="EPSG:4326",
        )
        gdf[gdf.level == "subdistrict"].boundary.plot(ax=ax, color="#bbbbbb", linewidth=0.4)
        gdf[gdf.level == "district"].boundary.plot(ax=ax, color="#555555", linewidth=1.0)
    traffic = points[points.kind == "traffic"]
    air = points[points.kind != "traffic"]
    shown = ax.scatter(
        traffic.longitude,
        traffic.latitude,
        c=traffic.congestion_index,
        cmap="RdYlGn_r",
        vmin=0,
        vmax=1,
        s=40,
        edgecolor="black",
        linewidth=0.4,
        label="traffic sensor",
        zorder=3,
    )
    ax.scatter(
        air.longitude,
        air.latitude,
        marker="^",
        s=50,
        color="#3060c0",
        label="air-quality / noise station",
        zorder=3,
    )
    for name, lon, lat in conn.execute(
        "SELECT name, longitude, latitude FROM intersections WHERE city_id = %s", (city,)
    ).fetchall():
        ax.annotate(name, (lon, lat), xytext=(6, 6), textcoords="offset points", fontsize=7)
    # degrees of longitude are shorter than degrees of latitude away from the equator
    ax.set_aspect(1 / math.cos(math.radians(float(points.latitude.mean()))))
    pad = 0.01
    ax.set(
        xlim=(points.longitude.min() - pad, points.longitude.max() + pad),
        ylim=(points.latitude.min() - pad, points.latitude.max() + pad),
        title=f"{city}: sensors, coloured by the latest congestion index",
        xlabel="longitude",
        ylabel="latitude",
    )
    fig.colorbar(shown, ax=ax, shrink=0.6, label="congestion index")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def demo_charts(settings: Settings) -> list[Path]:
    """The demo's pictures: Cologne congestion over time, its sensor map, Beijing's AQI."""
    import matplotlib

    matplotlib.use("Agg")
    from cityos.db import connect

    out = settings.state_dir / "reports"
    out.mkdir(parents=True, exist_ok=True)
    with connect(settings.database_url.get_secret_value(), settings.database_schema) as conn:
        drawn = [
            congestion_chart(conn, "cologne", out / "cologne-congestion.png"),
            sensor_map(conn, "cologne", out / "cologne-sensors.png"),
            aqi_chart(conn, "beijing", out / "beijing-aqi.png"),
        ]
    return [p for p in drawn if p is not None]
