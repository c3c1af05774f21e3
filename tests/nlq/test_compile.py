"""Compiled plans against the gold SQL of dev questions, compared as normalised PostgreSQL ASTs."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from cityos.nlq.compile import build, compile_plan
from cityos.nlq.guard import SERVING_TABLES, check_sql
from cityos.nlq.plan import Aggregation, GroupBy, Order, QueryPlan, Scope, ScopeKind
from cityos.nlq.timeexpr import resolve_time

GOLD = {
    d["id"]: d
    for d in map(json.loads, Path("/work/shared/nlq/dev-questions.jsonl").read_text().splitlines())
}
BERLIN, SHANGHAI = "Europe/Berlin", "Asia/Shanghai"


def normalised(sql: str, read: str) -> exp.Expression:
    """Aliases of projections dropped, timestamp strings as UTC instants, ASC spelled out."""
    tree = sqlglot.parse_one(sql, read=read)
    for lit in list(tree.find_all(exp.Literal)):
        if lit.is_string:
            try:
                when = datetime.fromisoformat(
                    lit.this.replace("+00", "+00:00").replace("+00:00:00", "+00:00")
                )
            except ValueError:
                continue
            lit.replace(exp.Literal.string(when.astimezone(UTC).isoformat()))
    for proj in tree.expressions:
        if isinstance(proj, exp.Alias):
            proj.replace(proj.this)
    # Spark sorts NULLs last on DESC, PostgreSQL first; the ordered keys here are never NULL.
    text = tree.sql("postgres").replace(" NULLS LAST", "").replace(" NULLS FIRST", "")
    return sqlglot.parse_one(text, read="postgres")  # type: ignore[return-value]


def plan_for(qid: str, zone: str, **fields: object) -> QueryPlan:
    q = GOLD[qid]
    as_of = datetime.fromisoformat(q["as_of"])
    return QueryPlan(time=resolve_time(q["question"], as_of, zone), timezone=zone, **fields)  # type: ignore[arg-type]


CASES = [
    (
        "dev-01",
        BERLIN,
        dict(
            metric="avg_speed_kmh",
            aggregation=Aggregation.VALUE,
            scope=Scope(ScopeKind.SENSOR, ("cologne-tr-13",)),
        ),
    ),
    (
        "dev-02",
        BERLIN,
        dict(metric="vehicle_count", scope=Scope(ScopeKind.INTERSECTION, ("26110729",))),
    ),
    ("dev-03", BERLIN, dict(metric="congestion_index", scope=Scope(ScopeKind.CITY, ("cologne",)))),
    (
        "dev-04",
        SHANGHAI,
        dict(metric="pm25", scope=Scope(ScopeKind.SENSOR, ("beijing-aq-dongsi",))),
    ),
    (
        "dev-11",
        BERLIN,
        dict(metric="avg_speed_kmh", scope=Scope(ScopeKind.ZONE, ("cologne-stt-504",))),
    ),
    (
        "dev-24",
        BERLIN,
        dict(metric="avg_speed_kmh", scope=Scope(ScopeKind.STREET, ("Blücherstr.",))),
    ),
    (
        "dev-26",
        SHANGHAI,
        dict(metric="pm25", scope=Scope(ScopeKind.SENSOR, ("beijing-aq-dongsi",))),
    ),
    (
        "dev-09",
        BERLIN,
        dict(
            metric="vehicle_count",
            group_by=(GroupBy.STREET,),
            scope=Scope(ScopeKind.STREET, ("Neusser Str.", "Niehler Str.")),
        ),
    ),
]


@pytest.mark.parametrize(("qid", "zone", "fields"), CASES, ids=[c[0] for c in CASES])
def test_matches_gold(qid: str, zone: str, fields: dict[str, object]) -> None:
    ours = normalised(compile_plan(plan_for(qid, zone, **fields)), "spark")
    gold = normalised(GOLD[qid]["gold_sql"], "postgres")
    assert ours.sql("postgres") == gold.sql("postgres")


def test_top_k_keeps_gold_semantics_with_an_extra_column() -> None:
    plan = plan_for(
        "dev-06",
        BERLIN,
        metric="vehicle_count",
        scope=Scope(ScopeKind.CITY, ("cologne",)),
        group_by=(GroupBy.SENSOR,),
        order=Order.DESC,
        limit=3,
    )
    ours, gold = (
        normalised(compile_plan(plan), "spark"),
        normalised(GOLD["dev-06"]["gold_sql"], "postgres"),
    )
    assert [p.sql() for p in gold.expressions] == [p.sql() for p in ours.expressions][:1]
    for part in ("from_", "joins", "where", "group", "order", "limit"):
        assert str(ours.args.get(part)) == str(gold.args.get(part)), part


def test_district_includes_subdistricts() -> None:
    plan = plan_for(
        "dev-10",
        BERLIN,
        metric="avg_speed_kmh",
        scope=Scope(ScopeKind.ZONE_TREE, ("cologne-stb-5",)),
    )
    where = build(plan).args["where"].sql("postgres")
    # a join on zones (not a subquery) so that Spark pushes the whole query down to PostgreSQL
    assert "(z.zone_id = 'cologne-stb-5' OR z.parent_zone_id = 'cologne-stb-5')" in where
    assert "JOIN zones AS z ON z.zone_id = s.zone_id" in build(plan).sql("postgres")


def test_hostile_names_stay_literals_and_pass_the_guard() -> None:
    hostile = "Neusser Str.'; DROP TABLE traffic_5m; --"
    plan = plan_for(
        "dev-24", BERLIN, metric="avg_speed_kmh", scope=Scope(ScopeKind.STREET, (hostile,))
    )
    sql = check_sql(compile_plan(plan), SERVING_TABLES, 100)
    tree = sqlglot.parse_one(sql, read="spark")
    assert [lit.this for lit in tree.find_all(exp.Literal) if lit.this.startswith("Neusser")] == [
        hostile
    ]
    assert not list(tree.find_all(exp.Drop))


def test_every_metric_and_grouping_compiles_through_the_guard() -> None:
    as_of = datetime(2016, 12, 19, 12, tzinfo=UTC)
    for metric in ("avg_speed_kmh", "aqi", "congestion_index", "no2"):
        for group in GroupBy:
            plan = QueryPlan(
                metric,
                Scope(ScopeKind.ZONE_TREE, ("cologne-stb-5",)),
                resolve_time("yesterday", as_of, BERLIN),
                BERLIN,
                group_by=(group,),
            )
            check_sql(compile_plan(plan), SERVING_TABLES, 1000)
