"""Small helpers over the foundation SDK's builders: placement, thresholds, variables, layers.

Each dashboard module composes these; nothing here knows about a particular table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.models import common, dashboard

from cityos.grafana.query import DATASOURCE

P = TypeVar("P")

# Threshold colours run from the base step (value None = -Infinity) upwards.
Steps = Sequence[tuple[float | None, str]]

CONGESTION_STEPS: Steps = ((None, "green"), (0.5, "yellow"), (0.7, "orange"), (0.9, "red"))
# The AQI breakpoints US EPA and China HJ 633-2012 share (0-50-100-150-200-300-500); the
# category names differ per standard and come from air_quality_1h.aqi_category.
AQI_STEPS: Steps = (
    (None, "green"),
    (51, "yellow"),
    (101, "orange"),
    (151, "red"),
    (201, "purple"),
    (301, "dark-red"),
)
ANOMALY_STEPS: Steps = ((None, "green"), (0.9, "orange"), (0.99, "red"))  # rules.toml: anomaly
SEVERITY_MAPPINGS: list[dashboard.ValueMapping] = [
    dashboard.ValueMap(
        options={
            "0": dashboard.ValueMappingResult(text="clear", color="green", index=0),
            "1": dashboard.ValueMappingResult(text="info", color="blue", index=1),
            "2": dashboard.ValueMappingResult(text="warning", color="orange", index=2),
            "3": dashboard.ValueMappingResult(text="critical", color="red", index=3),
        }
    )
]


def at(panel: P, x: int, y: int, w: int, h: int) -> P:
    """Place a panel on the 24-column grid."""
    panel.grid_pos(dashboard.GridPos(h=h, w=w, x=x, y=y))  # type: ignore[attr-defined]
    return panel


def thresholds(steps: Steps) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=v, color=c) for v, c in steps])
    )


def by_thresholds() -> dashboard_builders.FieldColor:
    return dashboard_builders.FieldColor().mode(dashboard.FieldColorModeId.THRESHOLDS)


def colour_by(steps: Steps) -> list[dashboard.DynamicConfigValue]:
    """Override properties colouring a field by thresholds of its own (geomap layers, cells)."""
    return [
        dashboard.DynamicConfigValue(id_val="thresholds", value=thresholds(steps).build()),
        dashboard.DynamicConfigValue(id_val="color", value={"mode": "thresholds"}),
    ]


def city_variable(default: str) -> dashboard_builders.QueryVariable:
    return (
        dashboard_builders.QueryVariable("city")
        .label("City")
        .datasource(DATASOURCE)
        .query("SELECT city_id AS __value, name AS __text FROM cities ORDER BY name")
        .refresh(dashboard.VariableRefresh.ON_DASHBOARD_LOAD)
        .current(dashboard.VariableOption(text=default.title(), value=default))
    )


def multi_variable(name: str, label: str, query: str) -> dashboard_builders.QueryVariable:
    """A multi-value variable with "All" (Grafana then quotes and comma-joins the values)."""
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(" ".join(query.split()))
        .refresh(dashboard.VariableRefresh.ON_DASHBOARD_LOAD)
        .multi(True)
        .include_all(True)
        .current(dashboard.VariableOption(text=["All"], value=["$__all"]))
        .sort(dashboard.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )


def markers(
    name: str,
    ref_id: str,
    *,
    color: str,
    color_field: str | None = None,
    size: int = 8,
    symbol: str = "circle",
    opacity: float = 0.8,
) -> common_builders.MapLayerOptions:
    """A geomap markers layer drawing one query's rows at their latitude/longitude columns."""
    style: dict[str, Any] = {
        "color": {"fixed": color} | ({"field": color_field} if color_field else {}),
        "size": {"fixed": size, "min": size, "max": size * 3},
        "symbol": {"fixed": f"img/icons/marker/{symbol}.svg", "mode": "fixed"},
        "opacity": opacity,
    }
    return (
        common_builders.MapLayerOptions()
        .type("markers")
        .name(name)
        .config({"showLegend": color_field is not None, "style": style})
        .location(
            common_builders.FrameGeometrySource()
            .mode(common.FrameGeometrySourceMode.COORDS)
            .latitude("latitude")
            .longitude("longitude")
        )
        .filter_data({"id": "byRefId", "options": ref_id})
        .tooltip(True)
    )
