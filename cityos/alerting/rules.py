"""Alert rules as data (``rules.toml``): thresholds, persistence, hysteresis, severity, message.

A rule judges one number per observation. ``Levels`` are its thresholds for one kind of subject;
``Rule.judge`` says whether an observation breaches, clears or sits in the hysteresis band, and
how severe a breach is.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from cityos.errors import CityOSError

RULES_FILE = Path(__file__).with_name("rules.toml")
KINDS = ("congestion", "air_quality", "anomaly", "sensor_offline", "manual")  # contract v1
SEVERITIES = ("info", "warning", "critical")


class RuleError(CityOSError):
    """A rule file that cannot be used; the message names the rule and the field."""


class Verdict(Enum):
    BREACH = "breach"
    CLEAR = "clear"
    BAND = "band"  # between the clear level and the threshold: keeps whatever state there is


@dataclass(frozen=True)
class Levels:
    threshold: float
    clear: float
    critical: float | None = None


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    metric: str
    op: Literal[">=", "<="]
    levels: Levels
    fire_after: int
    clear_after: int
    severity: str
    message: str
    by_sensor_kind: dict[str, Levels] = field(default_factory=dict)
    min_sensors: int = 1  # zone rules: only zones with at least this many sensors are judged

    def levels_for(self, sensor_kind: str | None) -> Levels:
        return self.by_sensor_kind.get(sensor_kind or "", self.levels)

    def _beyond(self, value: float, level: float) -> bool:
        return value >= level if self.op == ">=" else value <= level

    def judge(self, value: float, sensor_kind: str | None = None) -> Verdict:
        levels = self.levels_for(sensor_kind)
        if self._beyond(value, levels.threshold):
            return Verdict.BREACH
        if not self._beyond(value, levels.clear) or value == levels.clear:
            return Verdict.CLEAR
        return Verdict.BAND

    def severity_of(self, value: float, sensor_kind: str | None = None) -> str:
        levels = self.levels_for(sensor_kind)
        if levels.critical is not None and self._beyond(value, levels.critical):
            return "critical"
        return self.severity


def _levels(rule_id: str, raw: dict[str, Any], op: str) -> Levels:
    try:
        levels = Levels(
            threshold=float(raw["threshold"]),
            clear=float(raw["clear"]),
            critical=float(raw["critical"]) if "critical" in raw else None,
        )
    except KeyError as err:
        raise RuleError(f"rule {rule_id!r}: missing {err.args[0]!r}") from err
    except (TypeError, ValueError) as err:
        raise RuleError(f"rule {rule_id!r}: thresholds must be numbers ({err})") from err
    worse = (lambda a, b: a >= b) if op == ">=" else (lambda a, b: a <= b)
    if not worse(levels.threshold, levels.clear):
        raise RuleError(
            f"rule {rule_id!r}: clear {levels.clear:g} must lie on the safe side of "
            f"threshold {levels.threshold:g} (op {op})"
        )
    if levels.critical is not None and not worse(levels.critical, levels.threshold):
        raise RuleError(
            f"rule {rule_id!r}: critical {levels.critical:g} must be beyond threshold "
            f"{levels.threshold:g} (op {op})"
        )
    return levels


def parse_rule(raw: dict[str, Any]) -> Rule:
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        raise RuleError(f"a rule without an id: {raw!r}")
    op = raw.get("op")
    if op not in (">=", "<="):
        raise RuleError(f"rule {rule_id!r}: op must be '>=' or '<=', got {op!r}")
    if raw.get("kind") not in KINDS:
        raise RuleError(f"rule {rule_id!r}: kind must be one of {KINDS}, got {raw.get('kind')!r}")
    if raw.get("severity") not in SEVERITIES:
        raise RuleError(f"rule {rule_id!r}: severity must be one of {SEVERITIES}")
    counts = {}
    for name, default in (("fire_after", None), ("clear_after", None), ("min_sensors", 1)):
        value = raw.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RuleError(f"rule {rule_id!r}: {name} must be a whole number >= 1")
        counts[name] = value
    for name in ("metric", "message"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise RuleError(f"rule {rule_id!r}: {name} is required")
    return Rule(
        id=rule_id,
        kind=raw["kind"],
        metric=raw["metric"],
        op=op,
        levels=_levels(rule_id, raw, op),
        severity=raw["severity"],
        message=raw["message"],
        by_sensor_kind={
            kind: _levels(f"{rule_id}.by_sensor_kind.{kind}", levels, op)
            for kind, levels in raw.get("by_sensor_kind", {}).items()
        },
        **counts,
    )


def load_rules(path: Path | None = None) -> dict[str, Rule]:
    """The rules of ``path`` (default: the packaged rules.toml) by id."""
    path = path or RULES_FILE
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise RuleError(f"cannot read alert rules {path}: {err}") from err
    rules: dict[str, Rule] = {}
    for raw in data.get("rule", []):
        rule = parse_rule(raw)
        if rule.id in rules:
            raise RuleError(f"rule {rule.id!r} is defined twice in {path}")
        rules[rule.id] = rule
    return rules
