"""The last gate before execution: only one read-only SELECT over the serving tables runs.

``check_sql`` parses with sqlglot (Spark dialect) and collects every reason to refuse:

* exactly one statement, and it is a query (SELECT, WITH ... SELECT, or a set operation of
  SELECTs); no DML/DDL/command node anywhere in it, no ``SELECT ... INTO``;
* every table is an allowed serving table (or a CTE of the query), unqualified by a schema or
  catalog; table-valued functions (``read_files(...)``, ``range(...)``) are refused;
* every column resolves (through table aliases, CTEs and subqueries) to an allowed column of its
  table; ``*`` is refused except in ``COUNT(*)``, so only contract columns ever leave, by name;
* no function that reads files or the system (``DENIED_FUNCTIONS``), and no function sqlglot
  does not know unless listed in ``ALLOWED_UNKNOWN_FUNCTIONS``;
* the outermost LIMIT is added, or clamped to ``max_rows``.

The SQL returned is regenerated from the tree without comments: what is checked is what runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.scope import Scope, traverse_scope

from cityos.nlq.errors import SQLValidationError

DIALECT = "spark"

FORBIDDEN_NODES: tuple[type[exp.Expr], ...] = (
    exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter,
    exp.TruncateTable, exp.Command, exp.Into, exp.Set, exp.Use, exp.LoadData, exp.Cache,
    exp.Uncache, exp.Refresh, exp.Grant, exp.Describe, exp.Pragma, exp.Transaction,
    exp.Commit, exp.Rollback, exp.Copy,
)  # fmt: skip
DENIED_FUNCTIONS = frozenset({
    "reflect", "java_method", "try_reflect", "input_file_name", "input_file_block_start",
    "input_file_block_length", "read_files", "read_csv", "read_json", "read_parquet",
    "current_user", "session_user", "user", "current_catalog", "current_database",
    "current_schema", "version", "spark_partition_id", "monotonically_increasing_id",
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_sleep", "lo_import", "lo_export",
    "dblink", "sleep", "assert_true", "raise_error", "secret", "url_decode",
})  # fmt: skip
ALLOWED_UNKNOWN_FUNCTIONS = frozenset({"from_utc_timestamp", "to_utc_timestamp", "percentile"})


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    return node.sql_name().lower()


def _statements(sql: str) -> list[exp.Expr]:
    try:
        parsed = sqlglot.parse(sql, read=DIALECT)
    except SqlglotError as exc:
        raise SQLValidationError([f"not valid Spark SQL: {exc}"]) from exc
    return [s for s in parsed if s is not None]


def _check_nodes(tree: exp.Expr, errors: list[str]) -> None:
    for node in tree.walk():
        if isinstance(node, FORBIDDEN_NODES):
            errors.append(f"{type(node).__name__.upper()} is not allowed, only SELECT")
        elif isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
            errors.append("* is not allowed (name the columns); COUNT(*) is")
        elif isinstance(node, exp.Func):
            name = _function_name(node)
            unknown = isinstance(node, exp.Anonymous) and name not in ALLOWED_UNKNOWN_FUNCTIONS
            if name in DENIED_FUNCTIONS or unknown:
                errors.append(f"function {name} is not allowed")


def _check_scope(scope: Scope, allowed: Mapping[str, Set[str]], errors: list[str]) -> None:
    tables: dict[str, str] = {}  # alias -> allowed table name
    derived: set[str] = set()  # aliases of CTEs / subqueries (checked in their own scope)
    for alias, source in scope.sources.items():
        if isinstance(source, exp.Table):
            if not isinstance(source.this, exp.Identifier):
                errors.append(f"table function {source.this.sql(DIALECT)} is not allowed")
                continue
            name = source.name.lower()
            if source.args.get("db") or source.args.get("catalog"):
                errors.append(f"qualified table {source.sql(DIALECT)} is not allowed")
            elif name not in allowed:
                errors.append(f"table {name} is not a serving table")
            else:
                tables[alias.lower()] = name
        else:
            derived.add(alias.lower())
    select_aliases = {
        p.alias.lower() for p in getattr(scope.expression, "expressions", []) if p.alias
    }
    for outer in _ancestors(scope):  # correlated subqueries may name an outer alias
        for alias, source in outer.sources.items():
            if isinstance(source, exp.Table) and source.name.lower() in allowed:
                tables.setdefault(alias.lower(), source.name.lower())
    for column in scope.columns:
        if column.find_ancestor(exp.Select) is not scope.expression:
            continue  # a subquery's own column: checked in that subquery's scope
        col = column.name.lower()
        qualifier = column.table.lower()
        if qualifier:
            if qualifier in derived:
                continue
            if qualifier not in tables:
                errors.append(f"unknown table alias {qualifier} for column {col}")
            elif col not in allowed[tables[qualifier]]:
                errors.append(f"column {tables[qualifier]}.{col} is not allowed")
        elif not (
            col in select_aliases or derived or any(col in allowed[t] for t in tables.values())
        ):
            errors.append(f"column {col} is not in any table of its query")


def _ancestors(scope: Scope) -> list[Scope]:
    found: list[Scope] = []
    parent = scope.parent
    while parent is not None:
        found.append(parent)
        parent = parent.parent
    return found


def _clamp_limit(tree: exp.Expr, max_rows: int, errors: list[str]) -> exp.Expr:
    limit = tree.args.get("limit")
    if limit is None:
        return tree.limit(max_rows) if isinstance(tree, exp.Query) else tree
    value = limit.expression
    if not (isinstance(value, exp.Literal) and value.is_int):
        errors.append("LIMIT must be a whole number")
        return tree
    if int(value.this) > max_rows:
        limit.set("expression", exp.Literal.number(max_rows))
    return tree


def check_sql(sql: str, allowed: Mapping[str, Set[str]], max_rows: int) -> str:
    """The SQL to run (Spark dialect, LIMIT <= max_rows), or SQLValidationError with all reasons.

    ``allowed`` maps each readable table to its readable columns (lowercase names).
    """
    allowed = {t.lower(): {c.lower() for c in cols} for t, cols in allowed.items()}
    statements = _statements(sql)
    if len(statements) != 1:
        raise SQLValidationError([f"expected exactly one statement, got {len(statements)}"])
    tree = statements[0]
    errors: list[str] = []
    if not isinstance(tree, exp.Query):
        errors.append(f"{type(tree).__name__.upper()} is not allowed, only SELECT")
    _check_nodes(tree, errors)
    if not errors:
        try:
            for scope in traverse_scope(tree):
                _check_scope(scope, allowed, errors)
        except SqlglotError as exc:
            errors.append(f"cannot resolve the query's tables: {exc}")
    if not errors:
        tree = _clamp_limit(tree, max_rows, errors)
    if errors:
        raise SQLValidationError(sorted(set(errors)))
    return tree.sql(dialect=DIALECT, comments=False)


SERVING_TABLES: dict[str, frozenset[str]] = {  # shared/contracts/serving-schema.md, v1
    "cities": frozenset({"city_id", "name", "local_name", "timezone", "aqi_standard"}),
    "zones": frozenset({"zone_id", "city_id", "name", "local_name", "level", "parent_zone_id",
                        "geometry", "area_km2"}),
    "intersections": frozenset({"intersection_id", "city_id", "name", "zone_id", "latitude",
                                "longitude"}),
    "signal_phases": frozenset({"intersection_id", "phase_index", "description", "green_s",
                                "intergreen_s", "min_green_s", "max_green_s"}),
    "sensors": frozenset({"sensor_id", "city_id", "kind", "name", "zone_id", "road_name",
                          "intersection_id", "latitude", "longitude"}),
    "traffic_5m": frozenset({"sensor_id", "zone_id", "window_start", "window_end",
                             "vehicle_count", "avg_speed_kmh", "occupancy", "congestion_index"}),
    "air_quality_1h": frozenset({"sensor_id", "zone_id", "window_start", "window_end", "pm25",
                                 "pm10", "no2", "o3", "so2", "co", "temperature_c",
                                 "relative_humidity", "wind_speed_ms", "aqi", "aqi_category"}),
    "alerts": frozenset({"alert_id", "kind", "severity", "status", "city_id", "zone_id",
                         "sensor_id", "intersection_id", "metric", "value", "threshold",
                         "message", "started_at", "updated_at", "resolved_at"}),
}  # fmt: skip
