"""What Grafana does to a PostgreSQL panel query before the database sees it.

Two passes, as in Grafana 11/12:

1. the browser interpolates template variables (``$city``, ``${zone}``, ``[[sensor]]``) and the
   global ``$__interval`` / ``$__interval_ms``. SQL data sources format a variable like
   ``SqlDatasource.interpolateVariable``: a single value of a variable that is neither multi nor
   include-all goes in raw (so the query writes ``'$city'``); a multi / include-all value is
   quoted, ``'` → ``''``, and joined with commas (so the query writes ``IN ($zone)``);
2. the server expands the macros ``$__name(args)`` like
   ``pkg/tsdb/grafana-postgresql-datasource/macros.go``: ``$__timeFilter(c)`` →
   ``c BETWEEN '<from>' AND '<to>'`` (RFC 3339, UTC), ``$__timeGroup(c, '5m')`` →
   ``floor(extract(epoch from c)/300)*300`` (``…Alias`` adds ``AS "time"``), and so on; an
   unknown macro is an error there, and here.

The tests run every panel's query through `expand` and then against the real PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cityos.grafana import GrafanaError

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")  # macros.go: sExpr
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::(\w+))?\}")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class MacroError(GrafanaError):
    """A query uses a macro or variable Grafana would reject or leave unexpanded."""


@dataclass(frozen=True)
class Variable:
    """A template variable's current value, with the flags that decide how it is formatted."""

    value: str | Sequence[str]
    multi: bool = False
    include_all: bool = False


def parse_interval(text: str) -> timedelta:
    """'5m' → 5 minutes (gtime.ParseInterval for the units dashboards use)."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text.strip().strip("'"))
    if not found:
        raise MacroError(f"cannot parse interval {text!r}")
    return timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])


def _rfc3339(at: datetime) -> str:
    """Go's time.RFC3339Nano: UTC, 'Z', fraction without trailing zeros."""
    text = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if at.microsecond:
        text += f".{at.microsecond:06d}".rstrip("0")
    return text + "Z"


def _seconds(interval: timedelta) -> str:
    seconds = interval.total_seconds()
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)  # Go's %v


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _format(variable: Variable) -> str:
    if isinstance(variable.value, str):
        if variable.multi or variable.include_all:
            return _quote(variable.value)
        return variable.value
    return ",".join(_quote(v) for v in variable.value)


def interpolate(sql: str, variables: Mapping[str, Variable], interval: timedelta) -> str:
    """Pass 1: template variables and $__interval, as the browser does."""
    builtins = {
        "__interval": _interval_text(interval),
        "__interval_ms": str(int(interval.total_seconds() * 1000)),
    }

    def replace(found: re.Match[str]) -> str:
        name = found.group(1) or found.group(2) or found.group(4)
        if name in builtins:
            return builtins[name]
        if name in variables:
            return _format(variables[name])
        if name.startswith("__"):
            return found.group(0)  # a macro, or a global the server expands
        raise MacroError(f"variable ${name} has no value")

    return _VARIABLE.sub(replace, sql)


def _interval_text(interval: timedelta) -> str:
    seconds = interval.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"


def expand_macros(sql: str, time_from: datetime, time_to: datetime) -> str:
    """Pass 2: the PostgreSQL data source's macros, as the Grafana server does."""

    def group(args: list[str]) -> str:
        if len(args) < 2:
            raise MacroError("$__timeGroup needs a time column and an interval")
        seconds = _seconds(parse_interval(args[1]))
        return f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"

    def evaluate(found: re.Match[str]) -> str:
        name = found.group(1)
        args = [a.strip(" ") for a in found.group(2).split(",")]
        if name == "__timeGroup" and sql[found.end() : found.end() + 1] == ",":
            name = "__timeGroupAlias"  # macros.go: pre-5.3 compatibility
        match name:
            case "__time":
                return f'{args[0]} AS "time"'
            case "__timeEpoch":
                return f'extract(epoch from {args[0]}) as "time"'
            case "__timeFilter":
                return f"{args[0]} BETWEEN '{_rfc3339(time_from)}' AND '{_rfc3339(time_to)}'"
            case "__timeFrom":
                return f"'{_rfc3339(time_from)}'"
            case "__timeTo":
                return f"'{_rfc3339(time_to)}'"
            case "__timeGroup":
                return group(args)
            case "__timeGroupAlias":
                return group(args) + ' AS "time"'
            case "__unixEpochFilter":
                lo, hi = int(time_from.timestamp()), int(time_to.timestamp())
                return f"{args[0]} >= {lo} AND {args[0]} <= {hi}"
        raise MacroError(f"unknown macro ${name}")

    return _MACRO.sub(evaluate, sql)


def expand(
    sql: str,
    *,
    time_from: datetime,
    time_to: datetime,
    interval: timedelta,
    variables: Mapping[str, Variable] | None = None,
) -> str:
    """The SQL Grafana would send to PostgreSQL for this panel query."""
    if time_from.tzinfo is None or time_to.tzinfo is None:
        raise MacroError("the time range must be timezone-aware")
    sql = interpolate(sql, variables or {}, interval)
    sql = expand_macros(sql, time_from, time_to)
    if "$__" in sql:
        raise MacroError(f"unexpanded Grafana global in: {sql}")
    return sql
