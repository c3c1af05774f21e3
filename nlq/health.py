"""'Is the pipeline healthy?': the doctor's diagnosis as an answer of the NL-query service.

The operator gets what ``cityos doctor`` prints: the same checks (``cityos.doctor.diagnose``),
the same one-sentence verdict (``summary``), and every finding as a row (area, component, status,
message, fix), worst first. The rows reach the answer the way every other answer's rows do: the
findings become a temporary view ``pipeline_health`` for one statement, and the Spark SQL shown
in the answer is what ran over it, so the contract's "sql is exactly what was executed" holds.

A question that names a part of the platform ("is Kafka up?", "why are the dashboards stale?")
is focused on it: the SQL keeps that area's rows, and the sentence speaks of it first. The
areas and the words that name them are a closed vocabulary here, never text from the question.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from cityos.doctor import STATUS_ORDER, Finding, summary, worst
from cityos.nlq.execute import RowsView

VIEW = "pipeline_health"
COLUMNS = ("area", "component", "status", "message", "fix")

# The doctor's components (cityos/doctor.py) by the area of the platform they belong to.
AREAS: dict[str, tuple[str, ...]] = {
    "database": ("postgres", "migrations"),
    "kafka": ("kafka", "topics", "consumer lag", "lag"),
    "streaming": ("streaming", "supervisor", "query", "throughput", "consumer lag", "lag"),
    "freshness": ("freshness", "sensors"),
    "airflow": ("airflow", "airflow api"),
    "disk": ("disk",),
    "models": ("nlq model", "anomaly model"),
}
AREA_NAMES = {
    "database": "PostgreSQL",
    "kafka": "Kafka",
    "streaming": "the streaming job",
    "freshness": "the data's freshness",
    "airflow": "Airflow",
    "disk": "the disk",
    "models": "the models",
}
# Words of a question that name an area (matched as whole words, case-insensitive).
AREA_WORDS: dict[str, tuple[str, ...]] = {
    "database": ("postgres", "postgresql", "database", "db", "migrations"),
    "kafka": ("kafka", "broker", "brokers", "topic", "topics", "lag", "consumer", "behind"),
    "streaming": ("spark", "streaming", "stream", "job", "jobs", "aggregation", "crash",
                  "crashed", "stopped", "stop", "lag", "behind", "ingestion"),
    "freshness": ("fresh", "stale", "flowing", "arriving", "coming", "current", "up to date",
                  "out of date", "dashboards", "dashboard", "updating", "frozen", "old"),
    "airflow": ("airflow", "dag", "dags", "retraining"),
    "disk": ("disk", "disks", "storage", "space", "full"),
    "models": ("model", "models", "nl-query model"),
}  # fmt: skip


def area_of(component: str) -> str:
    for area, components in AREAS.items():
        if any(component == c or component.startswith(c + " ") for c in components):
            return area
    return "other"


def focus_of(question: str) -> tuple[str, ...]:
    """The areas a question names, in AREAS order; () for the whole platform."""
    text = question.lower()
    return tuple(
        area
        for area, names in AREA_WORDS.items()
        if any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text) for n in names)
    )


def view(findings: Sequence[Finding]) -> RowsView:
    rows = tuple((area_of(f.component), f.component, f.status, f.message, f.fix) for f in findings)
    return RowsView(VIEW, COLUMNS, rows)


def query(focus: Sequence[str]) -> str:
    """The Spark SQL over the view: worst first, then by area and component."""
    severity = exp.Case(
        ifs=[
            exp.If(this=exp.column("status").eq(exp.Literal.string(s)), true=exp.Literal.number(-n))
            for s, n in sorted(STATUS_ORDER.items(), key=lambda kv: -kv[1])
        ]
    )
    select = sqlglot.select(*COLUMNS).from_(VIEW)
    if focus:
        wanted = [exp.Literal.string(c) for a in focus for c in AREAS[a]]
        select = select.where(
            exp.or_(
                exp.column("area").isin(*[exp.Literal.string(a) for a in focus]),
                exp.column("component").isin(*wanted),
            )
        )
    return select.order_by(severity, "area", "component", "message").sql(dialect="spark")


def sentence(findings: Sequence[Finding], focus: Sequence[str]) -> str:
    """The doctor's verdict, preceded by the focused areas' own when the question named some."""
    overall = summary(list(findings))
    if not focus:
        return overall
    parts = []
    for area in focus:
        mine = focused(findings, (area,))
        name = AREA_NAMES[area]
        if not mine:
            parts.append(f"{name[:1].upper()}{name[1:]} was not checked.")
            continue
        state = worst(mine)
        bad = [f for f in mine if f.status == state and state != "ok"]
        if state == "ok":
            parts.append(f"{name[:1].upper()}{name[1:]}: fine ({mine[0].message}).")
        else:
            word = "failing" if state == "fail" else "a warning"
            parts.append(f"{name[:1].upper()}{name[1:]}: {word}: {bad[0].message}.")
    return " ".join(parts) + " Overall: " + overall


def focused(findings: Sequence[Finding], focus: Sequence[str]) -> list[Finding]:
    if not focus:
        return list(findings)
    wanted = {c for a in focus for c in AREAS[a]}
    return [f for f in findings if area_of(f.component) in focus or f.component in wanted]


def interpretation(focus: Sequence[str]) -> str:
    scope = ", ".join(AREA_NAMES[a] for a in focus) if focus else "the whole platform"
    return f"platform health: the doctor's checks ({scope}); the same diagnosis as `cityos doctor`"


Diagnose = Callable[[], list[Finding]]


@dataclass(frozen=True)
class HealthQuestion:
    """What the interpreter hands the pipeline for a health question."""

    focus: tuple[str, ...] = ()
