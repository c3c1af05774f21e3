"""Grafana's query interpolation and PostgreSQL macros, as cityos.grafana.macros reproduces them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cityos.grafana.macros import MacroError, Variable, expand

FROM = datetime(2016, 12, 19, 0, 0, tzinfo=UTC)
TO = datetime(2016, 12, 19, 6, 30, 15, tzinfo=UTC)


def _expand(sql: str, **variables: Variable) -> str:
    return expand(
        sql, time_from=FROM, time_to=TO, interval=timedelta(minutes=5), variables=variables
    )


def test_time_macros_as_macros_go_writes_them() -> None:
    assert _expand("WHERE $__timeFilter(t.window_start)") == (
        "WHERE t.window_start BETWEEN '2016-12-19T00:00:00Z' AND '2016-12-19T06:30:15Z'"
    )
    assert _expand("$__timeFrom() .. $__timeTo()") == (
        "'2016-12-19T00:00:00Z' .. '2016-12-19T06:30:15Z'"
    )
    assert _expand("SELECT $__timeGroupAlias(ts, $__interval), x") == (
        'SELECT floor(extract(epoch from ts)/300)*300 AS "time", x'
    )
    assert _expand("GROUP BY $__timeGroup(ts, '1h')") == (
        "GROUP BY floor(extract(epoch from ts)/3600)*3600"
    )
    # macros.go: $__timeGroup directly followed by a comma gets the pre-5.3 alias
    assert _expand("SELECT $__timeGroup(ts,'1m'), v") == (
        'SELECT floor(extract(epoch from ts)/60)*60 AS "time", v'
    )
    assert _expand("$__time(ts)") == 'ts AS "time"'
    precise = expand(
        "$__timeFrom()",
        time_from=FROM.replace(microsecond=120000),
        time_to=TO,
        interval=timedelta(minutes=5),
    )
    assert precise == "'2016-12-19T00:00:00.12Z'"  # RFC3339Nano drops trailing zeros
    assert _expand("$__interval_ms / 1000.0") == "300000 / 1000.0"


def test_variables_single_raw_multi_quoted() -> None:
    assert _expand("city_id = '$city'", city=Variable("cologne")) == "city_id = 'cologne'"
    assert _expand("zone_id IN (${zone})", zone=Variable(("a", "b"), multi=True)) == (
        "zone_id IN ('a','b')"
    )
    # one value of a multi variable is still quoted; quotes inside are doubled
    assert _expand("s IN ($s)", s=Variable("O'Brien", multi=True)) == "s IN ('O''Brien')"
    assert _expand("[[city]]", city=Variable("beijing")) == "beijing"


def test_unknown_macro_or_variable_is_an_error() -> None:
    with pytest.raises(MacroError, match="unknown macro"):
        _expand("$__timeFilterr(ts)")
    with pytest.raises(MacroError, match=r"\$zone"):
        _expand("zone_id IN ($zone)")
    with pytest.raises(MacroError, match="timezone-aware"):
        expand(
            "x",
            time_from=datetime(2016, 1, 1),
            time_to=TO,  # noqa: DTZ001
            interval=timedelta(minutes=1),
        )


def test_jsonpath_dollar_is_left_alone() -> None:
    sql = "jsonb_path_query(g, 'strict $.coordinates.** ? (@.type() == \"array\")')"
    assert _expand(sql) == sql
