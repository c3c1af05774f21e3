"""QueryPlan -> Spark SQL, built with sqlglot expression builders (never by pasting text).

Ids, names and instants enter only as ``exp.Literal`` values; identifiers come from the closed
tables below. The shapes follow the gold SQL conventions (shared/nlq/README.md):

* scope: a sensor filters ``t.sensor_id``; everything else joins ``sensors s``; "in district X"
  is ``s.zone_id = X OR s.zone_id IN (SELECT zone_id FROM zones WHERE parent_zone_id = X)``;
* time: one predicate per ``RangeKind`` (``TIME_PREDICATES``); instants are UTC ISO strings,
  which Spark and PostgreSQL both read as instants;
* latest: a point look-up takes the newest window (``ORDER BY window_start DESC LIMIT 1``); an
  aggregate over several sensors takes the newest window_end <= as_of of the table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlglot
from sqlglot import exp

from cityos.nlq.plan import Aggregation, GroupBy, Order, QueryPlan, ScopeKind
from cityos.nlq.timeexpr import RangeKind, TimeRange

TABLE_ALIAS = {"traffic_5m": "t", "air_quality_1h": "a"}
AGG_FUNCS: dict[Aggregation, Callable[[exp.Expr], exp.Expr]] = {
    Aggregation.AVG: lambda e: exp.Avg(this=e),
    Aggregation.SUM: lambda e: exp.Sum(this=e),
    Aggregation.MIN: lambda e: exp.Min(this=e),
    Aggregation.MAX: lambda e: exp.Max(this=e),
    Aggregation.COUNT: lambda e: exp.Count(this=exp.Star()),
}
COMPARE: dict[str, type[exp.Binary]] = {
    "<": exp.LT, "<=": exp.LTE, ">": exp.GT, ">=": exp.GTE, "=": exp.EQ, "<>": exp.NEQ,
}  # fmt: skip
SCOPE_COLUMN = {  # scope kind -> (table alias, column) it filters
    ScopeKind.SENSOR: ("t", "sensor_id"),
    ScopeKind.CITY: ("s", "city_id"),
    ScopeKind.ZONE: ("s", "zone_id"),
    ScopeKind.ZONE_TREE: ("s", "zone_id"),
    ScopeKind.INTERSECTION: ("s", "intersection_id"),
    ScopeKind.STREET: ("s", "road_name"),
}
JOINS = {  # alias -> (table, ON left column, ON right column)
    "s": ("sensors", ("s", "sensor_id"), ("t", "sensor_id")),
    "z": ("zones", ("z", "zone_id"), ("s", "zone_id")),
    "i": ("intersections", ("i", "intersection_id"), ("s", "intersection_id")),
    "pz": ("zones", ("pz", "zone_id"), ("z", "parent_zone_id")),  # LEFT JOIN: the parent zone
}
GROUP_KEYS: dict[GroupBy, tuple[tuple[str, str], ...]] = {  # (alias, column); last is shown
    GroupBy.ZONE: (("z", "name"),),
    GroupBy.DISTRICT: (("pz", "name"), ("z", "name")),  # COALESCE(parent, own) name
    GroupBy.SENSOR: (("s", "sensor_id"), ("s", "name")),
    GroupBy.INTERSECTION: (("i", "intersection_id"), ("i", "name")),
    GroupBy.STREET: (("s", "road_name"),),
}


def instant(ts: datetime) -> exp.Literal:
    """A UTC instant as a string literal both Spark and PostgreSQL read as an instant."""
    return exp.Literal.string(ts.strftime("%Y-%m-%d %H:%M:%S+00:00"))


def _col(alias: str, name: str) -> exp.Column:
    return exp.column(name, table=alias)


def _eq_or_in(column: exp.Expr, values: tuple[str, ...]) -> exp.Expr:
    literals = [exp.Literal.string(v) for v in values]
    if len(literals) == 1:
        return exp.EQ(this=column, expression=literals[0])
    return exp.In(this=column, expressions=literals)


def _scope_predicate(plan: QueryPlan, t: str) -> exp.Expr:
    alias, name = SCOPE_COLUMN[plan.scope.kind]
    column = _col(t if alias == "t" else alias, name)
    if plan.scope.kind is ScopeKind.ZONE_TREE:  # a join, not a subquery: Spark pushes it down
        own = _eq_or_in(_col("z", "zone_id"), plan.scope.ids)
        parent = _eq_or_in(_col("z", "parent_zone_id"), plan.scope.ids)
        return exp.Paren(this=exp.or_(own, parent))
    return _eq_or_in(column, plan.scope.ids)


def _latest_end(table: str, as_of: datetime) -> exp.Expr:
    return exp.Subquery(
        this=exp.select(exp.Max(this=exp.column("window_end")))
        .from_(table)
        .where(exp.LTE(this=exp.column("window_end"), expression=instant(as_of)))
    )


def _time_predicates(tr: TimeRange, t: str, table: str, point: bool) -> list[exp.Expr]:
    start, end = _col(t, "window_start"), _col(t, "window_end")
    if tr.kind is RangeKind.LATEST:
        if point:
            return [exp.LTE(this=end, expression=instant(tr.end))]
        return [exp.EQ(this=end, expression=_latest_end(table, tr.end))]
    if tr.kind is RangeKind.AT:
        return [exp.EQ(this=start, expression=instant(tr.start))]
    if tr.kind is RangeKind.DAY:
        return [
            exp.GTE(this=start, expression=instant(tr.start)),
            exp.LT(this=start.copy(), expression=instant(tr.end)),
        ]
    return [
        exp.GTE(this=start, expression=instant(tr.start)),
        exp.LTE(this=end, expression=instant(tr.end)),
    ]


def _time_bucket(group: GroupBy, t: str, timezone: str) -> exp.Expr:
    start = _col(t, "window_start")
    if group is GroupBy.HOUR:
        return exp.TimestampTrunc(this=start, unit=exp.var("HOUR"))
    local = exp.func("from_utc_timestamp", start, exp.Literal.string(timezone), dialect="spark")
    return exp.func("to_date", local, dialect="spark")


def build(plan: QueryPlan) -> exp.Select:
    """The plan as a sqlglot SELECT (Spark semantics)."""
    table = plan.spec.table
    t = TABLE_ALIAS[table]
    value = _col(t, plan.spec.column)
    agg = plan.agg
    point = agg is Aggregation.VALUE
    latest = plan.time is not None and plan.time.kind is RangeKind.LATEST

    aliases: set[str] = set()
    if plan.scope.kind is not ScopeKind.SENSOR or plan.group_by or (plan.order and point):
        aliases.add("s")
    if plan.scope.kind is ScopeKind.ZONE_TREE:
        aliases.add("z")
    projections: list[exp.Expr] = []
    group: list[exp.Expr] = []
    for g in plan.group_by:
        if g is GroupBy.DISTRICT:
            aliases.update(("z", "pz"))
            name = exp.Coalesce(this=_col("pz", "name"), expressions=[_col("z", "name")])
            group.append(name)
            projections.append(exp.alias_(name.copy(), "district"))
        elif g in GROUP_KEYS:
            keys = [_col(a, c) for a, c in GROUP_KEYS[g]]
            aliases.update(a for a, _ in GROUP_KEYS[g])
            group.extend(keys)
            projections.append(keys[-1].copy())
        else:
            bucket = _time_bucket(g, t, plan.timezone)
            group.append(bucket)
            projections.append(exp.alias_(bucket.copy(), g.value))
    if point and plan.order and not plan.group_by:
        projections.append(_col("s", "name"))  # "which station had the highest reading"

    measure = value if point else AGG_FUNCS[agg](value)
    named = point or agg is Aggregation.AVG
    if not plan.distinct:
        label = plan.metric if named else f"{agg.value}_{plan.metric}"
        projections.append(exp.alias_(measure, label))

    query = exp.select(*projections).from_(exp.to_table(table).as_(t))
    if plan.distinct:
        query = query.distinct()
        group = []
    for alias in ("s", "z", "pz", "i"):
        if alias in aliases:
            joined, (la, lc), (ra, rc) = JOINS[alias]
            on = exp.EQ(this=_col(la, lc), expression=_col(ra if ra != "t" else t, rc))
            kind = "left" if alias == "pz" else None
            query = query.join(exp.to_table(joined).as_(alias), on=on, join_type=kind)

    where: list[exp.Expr] = [_scope_predicate(plan, t)]
    if plan.time is not None:
        where.extend(_time_predicates(plan.time, t, table, point))
    for cond in plan.conditions:
        where.append(COMPARE[cond.op](this=_col(t, cond.metric), expression=_number(cond.value)))
    if point and plan.order:
        where.append(exp.Not(this=exp.Is(this=value.copy(), expression=exp.Null())))
    query = query.where(exp.and_(*where))
    if group:
        query = query.group_by(*group)

    if plan.distinct:
        pass
    elif point and latest and not plan.group_by:
        query = query.order_by(exp.Ordered(this=_col(t, "window_start"), desc=True)).limit(1)
    elif plan.order is not None:
        query = query.order_by(exp.Ordered(this=measure.copy(), desc=plan.order is Order.DESC))
    if plan.limit is not None and query.args.get("limit") is None:
        query = query.limit(plan.limit)
    return query


def _number(value: float) -> exp.Expr:
    return exp.Literal.number(int(value) if float(value).is_integer() else value)


def compile_plan(plan: QueryPlan, dialect: str = "spark") -> str:
    """The plan as SQL text in ``dialect`` (Spark for execution; PostgreSQL for comparison)."""
    return build(plan).sql(dialect=dialect)


def transpile(sql: str, read: str = "spark", write: str = "postgres") -> str:
    return sqlglot.transpile(sql, read=read, write=write)[0]
