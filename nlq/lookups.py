"""Questions about zones, places, alerts and signal phases, as sqlglot queries.

Like ``compile``, every value enters as a literal (an id the gazetteer returned, a closed
vocabulary word, a number); table and column names come from this module only.
"""

from __future__ import annotations

from sqlglot import exp

from cityos.nlq.catalog import Catalog, Phase
from cityos.nlq.plan import Order
from cityos.nlq.understand import Lookup, Place


def _lit(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def _col(alias: str, name: str) -> exp.Column:
    return exp.column(name, table=alias)


def _eq(column: exp.Expr, value: str) -> exp.Expr:
    return exp.EQ(this=column, expression=_lit(value))


def _in(column: exp.Expr, values: list[str]) -> exp.Expr:
    if len(values) == 1:
        return _eq(column, values[0])
    return exp.In(this=column, expressions=[_lit(v) for v in values])


def _count() -> exp.Expr:
    return exp.alias_(exp.Count(this=exp.Star()), "count")


# --- zones and places ------------------------------------------------------------------------


def zone_area(places: list[Place]) -> Lookup:
    ids = [p.id for p in places if p.kind == "zone"]
    q = (
        exp.select(_col("z", "name"), _col("z", "level"), _col("z", "area_km2"))
        .from_(exp.to_table("zones").as_("z"))
        .where(_in(_col("z", "zone_id"), ids or ["-"]))
    )
    return Lookup(q, "area")


def zone_parent(place: Place) -> Lookup:
    q = (
        exp.select(_col("p", "name"))
        .from_(exp.to_table("zones").as_("z"))
        .join(
            exp.to_table("zones").as_("p"),
            on=exp.EQ(this=_col("p", "zone_id"), expression=_col("z", "parent_zone_id")),
        )
        .where(_eq(_col("z", "zone_id"), place.id))
    )
    return Lookup(q, f"the district {place.name} belongs to")


def zone_children(place: Place, level: str, counting: bool) -> Lookup:
    where = exp.and_(_eq(_col("z", "level"), level), _eq(_col("z", "parent_zone_id"), place.id))
    what = f"{level.replace('subdistrict', 'sub-district')}s of {place.name}"
    if counting:
        q = exp.select(_count()).from_(exp.to_table("zones").as_("z")).where(where)
        return Lookup(q, f"number of {what}", "scalar")
    q = exp.select(_col("z", "name")).from_(exp.to_table("zones").as_("z")).where(where)
    return Lookup(q.order_by(_col("z", "name")), what)


def city_zones(place: Place, level: str, counting: bool) -> Lookup:
    where = exp.and_(_eq(_col("z", "city_id"), place.id), _eq(_col("z", "level"), level))
    what = f"{level.replace('subdistrict', 'sub-district')}s of {place.name}"
    if counting:
        q = exp.select(_count()).from_(exp.to_table("zones").as_("z")).where(where)
        return Lookup(q, f"number of {what}", "scalar")
    q = exp.select(_col("z", "name")).from_(exp.to_table("zones").as_("z")).where(where)
    return Lookup(q.order_by(_col("z", "name")), what)


def _zone_tree_predicate(column: exp.Expr, zone_id: str) -> exp.Expr:
    children = (
        exp.select("zone_id").from_("zones").where(_eq(exp.column("parent_zone_id"), zone_id))
    )
    return exp.Paren(this=exp.or_(_eq(column, zone_id), column.copy().isin(query=children)))


def points_in(catalog: Catalog, place: Place, entity: str, group: str, counting: bool) -> Lookup:
    """Sensors/stations or intersections in a place (zone tree, street, city, intersection)."""
    if entity == "intersection":
        table, alias = "intersections", "i"
        cols = [_col("i", "name")]
    else:
        table, alias = "sensors", "s"
        cols = [_col("s", "name")]
    col = lambda name: _col(alias, name)  # noqa: E731
    if place.kind == "zone":
        where = _zone_tree_predicate(col("zone_id"), place.id)
    elif place.kind == "city":
        where = _eq(col("city_id"), place.id)
    elif place.kind == "intersection":
        where = _eq(col("intersection_id"), place.id)
    elif place.kind == "street" and alias == "s":
        where = _eq(col("road_name"), place.id)
    elif place.kind == "street":
        ids = catalog.intersections_on(place.name) or ["-"]
        where = _in(col("intersection_id"), ids)
    else:
        where = _eq(col("zone_id"), catalog.sensors[place.id].zone_id or "-")
    if alias == "s":
        low = group.lower()
        if "station" in low or "monitor" in low:
            where = exp.and_(where, _eq(col("kind"), "air_quality"))
        elif any(w in low for w in ("detector", "loop", "traffic")):
            where = exp.and_(where, _eq(col("kind"), "traffic"))
    what = f"{'intersections' if alias == 'i' else 'sensors'} in {place.name}"
    if counting:
        q = exp.select(_count()).from_(exp.to_table(table).as_(alias)).where(where)
        return Lookup(q, f"number of {what}", "scalar")
    q = exp.select(*cols).from_(exp.to_table(table).as_(alias)).where(where)
    return Lookup(q.order_by(cols[0].copy()), what)


POINT_TABLES = {
    "sensor": ("sensors", "s", "sensor_id"),
    "intersection": ("intersections", "i", "intersection_id"),
}


def _point_location(place: Place) -> Lookup:
    """A sensor or intersection: its name, the zone it lies in, its coordinates."""
    table, alias, key = POINT_TABLES[place.kind]
    q = (
        exp.select(
            _col(alias, "name"),
            exp.alias_(_col("z", "name"), "zone"),
            _col(alias, "latitude"),
            _col(alias, "longitude"),
        )
        .from_(exp.to_table(table).as_(alias))
        .join(
            exp.to_table("zones").as_("z"),
            on=exp.EQ(this=_col("z", "zone_id"), expression=_col(alias, "zone_id")),
            join_type="left",
        )
        .where(_eq(_col(alias, key), place.id))
    )
    return Lookup(q, f"where {place.name} is")


def where_is(place: Place) -> Lookup:
    if place.kind in POINT_TABLES:
        return _point_location(place)
    q = (
        exp.select(
            _col("z", "name"),
            _col("z", "level"),
            exp.alias_(_col("p", "name"), "part_of"),
            _col("z", "area_km2"),
        )  # fmt: skip
        .from_(exp.to_table("zones").as_("z"))
        .join(
            exp.to_table("zones").as_("p"),
            on=exp.EQ(this=_col("p", "zone_id"), expression=_col("z", "parent_zone_id")),
            join_type="left",
        )
        .where(
            _eq(_col("z", "zone_id"), place.id)
            if place.kind == "zone"
            else _eq(_col("z", "city_id"), place.city_id)
        )  # fmt: skip
    )
    return Lookup(q, f"{place.name}")


# --- alerts ----------------------------------------------------------------------------------

ALERT_COLUMNS = ("alert_id", "kind", "severity", "status", "message", "started_at")


def alerts(
    catalog: Catalog,
    *,
    places: list[Place],
    statuses: tuple[str, ...] | None,
    severity: str | None,
    kind: str | None,
    alert_ids: list[str],
    group_by: str | None,
    entity: str | None,
    counting: bool,
) -> Lookup:
    a = lambda name: _col("a", name)  # noqa: E731
    where: list[exp.Expr] = []
    if alert_ids:
        where.append(_in(a("alert_id"), alert_ids))
    if statuses:
        if set(statuses) == {"firing", "acknowledged"}:
            where.append(exp.NEQ(this=a("status"), expression=_lit("resolved")))
        else:
            where.append(_in(a("status"), list(statuses)))
    if severity:
        where.append(_eq(a("severity"), severity))
    if kind:
        where.append(_eq(a("kind"), kind))
    for place in places[:1]:
        if place.kind == "city":
            where.append(_eq(a("city_id"), place.id))
        elif place.kind == "zone":
            tree = sorted(catalog.zone_tree(place.id))
            sensors = sorted(s.sensor_id for s in catalog.sensors.values() if s.zone_id in tree)
            inzone = _in(a("zone_id"), tree)
            if sensors:
                inzone = exp.Paren(this=exp.or_(inzone, _in(a("sensor_id"), sensors)))
            where.append(inzone)
        elif place.kind == "sensor":
            where.append(_eq(a("sensor_id"), place.id))
        elif place.kind == "intersection":
            where.append(_eq(a("intersection_id"), place.id))
        elif place.kind == "street":
            sensors = sorted(
                s.sensor_id for s in catalog.sensors.values() if s.road_name == place.id
            )
            where.append(_in(a("sensor_id"), sensors or ["-"]))
    q = exp.select().from_(exp.to_table("alerts").as_("a"))
    described = "alerts"
    shape = "table"
    if entity in ("intersection", "sensor", "district", "subdistrict"):
        table, alias, key = {
            "intersection": ("intersections", "i", "intersection_id"),
            "sensor": ("sensors", "s", "sensor_id"),
            "district": ("zones", "z", "zone_id"),
            "subdistrict": ("zones", "z", "zone_id"),
        }[entity]
        q = (
            q.select(_col(alias, "name"))
            .distinct()
            .join(
                exp.to_table(table).as_(alias),
                on=exp.EQ(this=_col(alias, key), expression=a(key)),
            )
        )
        described = f"{entity}s with matching alerts"
    elif group_by:
        q = q.select(a(group_by), _count()).group_by(a(group_by))
        described = f"alerts per {group_by}"
    elif counting:
        q = q.select(_count())
        described, shape = "number of alerts", "scalar"
    else:
        q = q.select(*[a(c) for c in ALERT_COLUMNS]).order_by(
            exp.Ordered(this=a("started_at"), desc=True)
        )
    if where:
        q = q.where(exp.and_(*where))
    return Lookup(q, described, shape)


# --- signal phases ---------------------------------------------------------------------------


def phase_list(inter: Place) -> Lookup:
    p = lambda name: _col("p", name)  # noqa: E731
    q = (
        exp.select(
            p("phase_index"),
            p("green_s"),
            p("description"),
            p("min_green_s"),
            p("max_green_s"),
            p("intergreen_s"),
        )  # fmt: skip
        .from_(exp.to_table("signal_phases").as_("p"))
        .where(_eq(p("intersection_id"), inter.id))
        .order_by(p("phase_index"))
    )
    return Lookup(q, f"the green phases at {inter.name}")


ATTRIBUTE_WORDS = {
    "green_s": "green time (s)",
    "min_green_s": "minimum green (s)",
    "max_green_s": "maximum green (s)",
    "intergreen_s": "intergreen (s)",
}


def phase_value(inter: Place, phase: Phase, attribute: str) -> Lookup:
    p = lambda name: _col("p", name)  # noqa: E731
    q = (
        exp.select(p(attribute), p("phase_index"), p("description"))
        .from_(exp.to_table("signal_phases").as_("p"))
        .where(
            exp.and_(
                _eq(p("intersection_id"), inter.id),
                exp.EQ(this=p("phase_index"), expression=exp.Literal.number(phase.phase_index)),
            )
        )  # fmt: skip
    )
    return Lookup(
        q,
        f"{ATTRIBUTE_WORDS[attribute]} of phase {phase.phase_index} at {inter.name}",
        "scalar",
    )


def phase_rank(order: Order) -> Lookup:
    p = lambda name: _col("p", name)  # noqa: E731
    q = (
        exp.select(_col("i", "name"), p("phase_index"), p("green_s"))
        .from_(exp.to_table("signal_phases").as_("p"))
        .join(
            exp.to_table("intersections").as_("i"),
            on=exp.EQ(this=_col("i", "intersection_id"), expression=p("intersection_id")),
        )
        .order_by(exp.Ordered(this=p("green_s"), desc=order is Order.DESC))
        .limit(1)
    )
    word = "longest" if order is Order.DESC else "shortest"
    return Lookup(q, f"the intersection with the {word} green phase")


def cycle(inter: Place) -> Lookup:
    p = lambda name: _col("p", name)  # noqa: E731
    total = exp.Sum(this=exp.Add(this=p("green_s"), expression=p("intergreen_s")))
    q = (
        exp.select(exp.alias_(total, "cycle_s"))
        .from_(exp.to_table("signal_phases").as_("p"))
        .where(_eq(p("intersection_id"), inter.id))
    )
    return Lookup(q, f"cycle length at {inter.name}", "scalar")


def phase_count(inter: Place) -> Lookup:
    q = (
        exp.select(_count())
        .from_(exp.to_table("signal_phases").as_("p"))
        .where(_eq(_col("p", "intersection_id"), inter.id))
    )
    return Lookup(q, f"number of green phases at {inter.name}", "scalar")
