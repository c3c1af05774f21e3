"""A typed query plan: what the intent/slot model fills in and the compiler turns into SQL.

Every field is a closed vocabulary (enums, metric names from ``METRICS``) or an id the gazetteer
returned, so no text from the question can reach the SQL except as a literal value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from cityos.nlq.errors import PlanError
from cityos.nlq.timeexpr import RangeKind, TimeRange


class Aggregation(StrEnum):
    AVG = "avg"  # plain AVG over all windows in scope, NULLs ignored
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    COUNT = "count"  # COUNT(*) of windows (e.g. "for how many hours ...")
    VALUE = "value"  # the window values themselves (point look-ups, top single readings)


class ScopeKind(StrEnum):
    CITY = "city"
    ZONE = "zone"  # exactly these zones
    ZONE_TREE = "zone_tree"  # these zones and their sub-zones ("in district X")
    INTERSECTION = "intersection"  # its approach sensors
    STREET = "street"  # sensors whose road_name is the street
    SENSOR = "sensor"


class GroupBy(StrEnum):
    ZONE = "zone"  # the sensor's own (smallest) zone
    DISTRICT = "district"  # the district: a sub-district's parent, else the zone itself
    SENSOR = "sensor"
    INTERSECTION = "intersection"
    STREET = "street"
    HOUR = "hour"
    DAY = "day"  # local calendar day of the city


class Order(StrEnum):
    DESC = "desc"
    ASC = "asc"


@dataclass(frozen=True)
class MetricSpec:
    table: str
    column: str
    default: Aggregation


METRICS: dict[str, MetricSpec] = {
    "avg_speed_kmh": MetricSpec("traffic_5m", "avg_speed_kmh", Aggregation.AVG),
    "vehicle_count": MetricSpec("traffic_5m", "vehicle_count", Aggregation.SUM),
    "occupancy": MetricSpec("traffic_5m", "occupancy", Aggregation.AVG),
    "congestion_index": MetricSpec("traffic_5m", "congestion_index", Aggregation.AVG),
    **{
        col: MetricSpec("air_quality_1h", col, Aggregation.AVG)
        for col in ("pm25", "pm10", "no2", "o3", "so2", "co", "aqi",
                    "temperature_c", "relative_humidity", "wind_speed_ms")
    },
}  # fmt: skip

COMPARISONS = frozenset({"<", "<=", ">", ">=", "=", "<>"})


@dataclass(frozen=True)
class Scope:
    kind: ScopeKind
    ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.ids:
            raise PlanError(f"scope {self.kind.value} needs at least one id")


@dataclass(frozen=True)
class Condition:
    """A filter on a window value, e.g. aqi > 300."""

    metric: str
    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in COMPARISONS:
            raise PlanError(f"unknown comparison {self.op!r}")
        if self.metric not in METRICS:
            raise PlanError(f"unknown metric {self.metric!r}")


@dataclass(frozen=True)
class QueryPlan:
    """One question over the window tables, in the gold SQL's conventions."""

    metric: str
    scope: Scope
    time: TimeRange | None
    timezone: str  # cities.timezone of the city in scope; local days are computed in it
    aggregation: Aggregation | None = None  # None: the metric's default
    group_by: tuple[GroupBy, ...] = ()
    order: Order | None = None  # order rows by the value (top-k with limit)
    limit: int | None = None
    conditions: tuple[Condition, ...] = field(default=())
    distinct: bool = False  # "which sensors had ...": only the group_by names, once each

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise PlanError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        table = METRICS[self.metric].table
        for cond in self.conditions:
            if METRICS[cond.metric].table != table:
                raise PlanError(f"condition on {cond.metric} is not in {table}")
        if self.distinct and not self.group_by:
            raise PlanError("a distinct listing needs something to list (group_by)")
        if self.limit is not None and self.limit < 1:
            raise PlanError("limit must be at least 1")
        if self.time is not None and self.time.kind is RangeKind.LATEST and self.group_by:
            if any(g in (GroupBy.HOUR, GroupBy.DAY) for g in self.group_by):
                raise PlanError("the latest window has no hours or days to group by")

    @property
    def spec(self) -> MetricSpec:
        return METRICS[self.metric]

    @property
    def agg(self) -> Aggregation:
        return self.aggregation or self.spec.default
