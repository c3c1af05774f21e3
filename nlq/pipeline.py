"""The NL-query pipeline: question -> checks -> model -> interpretation -> Spark SQL -> answer.

``NLQPipeline.ask`` is what the service calls (``reply.Answerer``); ``understand`` stops before
execution (the benchmark times it). Order of work:

1. input checks that need no model: empty, too long, control characters, SQL typed into the
   question (a refusal names the reason);
2. the joint model: intent + slot words;
3. ``understand.Interpreter``: slots -> plan / lookup / action draft / clarification / refusal;
4. the plan compiled to Spark SQL by code (``compile``, ``lookups``), checked by the
   parser-level guard and run by the executor (Spark over the serving tables);
5. a sentence for a person, and the interpretation (metric, place, time range) it rests on.

"Is the pipeline healthy?" (intent ``health``) skips 4: the doctor's checks run, and their
findings are the rows of a Spark SQL statement over them (``cityos.nlq.health``).
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cityos.nlq import health, lexicon
from cityos.nlq.catalog import Catalog
from cityos.nlq.compile import build
from cityos.nlq.errors import NLQError
from cityos.nlq.guard import SERVING_TABLES, check_sql
from cityos.nlq.health import HealthQuestion
from cityos.nlq.model import JointModel
from cityos.nlq.plan import Aggregation, GroupBy, QueryPlan
from cityos.nlq.reply import Answer, Clarification, Refusal, Reply
from cityos.nlq.understand import Interpreter, Understood

if TYPE_CHECKING:
    from cityos.nlq.execute import RowsView
    from cityos.settings import Settings

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
MAX_ROWS = 1000
QUERY_TIMEOUT_S = 20.0
MIN_CONFIDENCE = 0.45
SQL_TYPED = re.compile(
    r";\s*(drop|delete|insert|update|alter|truncate|create|grant|revoke|copy|merge|exec)\b"
    r"|--\s*$|/\*|\bunion\s+(all\s+)?select\b|\bor\s+'?1'?\s*=\s*'?1\b|'\s*;",
    re.I,
)


class Executor(Protocol):
    def run(
        self, sql: str, max_rows: int, timeout_s: float, *, extra: Sequence[RowsView] = ()
    ) -> Any: ...


@dataclass(frozen=True)
class Understanding:
    """What ``understand`` returns: the reading and, for questions, the Spark SQL."""

    understood: Understood
    sql: str | None
    intent: str
    confidence: float
    slots: list[tuple[str, str, int, int]]


def check_question(question: object, max_chars: int = MAX_QUESTION_CHARS) -> Refusal | None:
    """Input a model should never see; None when the question may go on."""
    if not isinstance(question, str):
        return Refusal("Please ask a question in words.", "the question is not text")
    text = question.strip()
    if not text:
        return Refusal("Please ask a question.", "the question is empty")
    if len(text) > max_chars:
        return Refusal(
            f"That is too long for one question ({len(text)} characters; at most {max_chars}).",
            "question too long",
        )
    if any(unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") and c not in "\t\n\r" for c in text):
        return Refusal("The question contains binary or control characters.", "not plain text")
    if SQL_TYPED.search(text):
        return Refusal(
            "The question contains SQL; I answer plain questions and never run SQL typed in.",
            "SQL injection attempt: statements or comments inside the question",
        )
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return Refusal("Please ask a question in words.", "no words in the question")
    return None


def doctor_for(settings: Settings) -> health.Diagnose:
    """``cityos doctor``'s checks for this service's settings (Airflow's API included when
    ``airflow_url`` is set)."""
    from cityos.doctor import diagnose

    return lambda: diagnose(settings, airflow_url=settings.airflow_url)


class NLQPipeline:
    def __init__(
        self,
        model: JointModel,
        catalog: Catalog,
        executor: Executor | None,
        model_dir: Path | None = None,
        diagnose: health.Diagnose | None = None,
    ) -> None:
        self.model = model
        self.diagnose = diagnose
        self.catalog = catalog
        self.executor = executor
        self.model_dir = model_dir
        self.interpreter = Interpreter(catalog)

    @classmethod
    def from_settings(cls, settings: Settings, executor: Executor | None = None) -> NLQPipeline:
        from cityos.db import connect
        from cityos.nlq.train import ensure_model

        folder = settings.nlq_model_dir or ensure_model(settings.cache_dir, settings.data_dir)
        started = time.perf_counter()
        model = JointModel.load(folder)
        log.info("nlq: model %s loaded in %.1f s", folder.name, time.perf_counter() - started)
        url = settings.database_url.get_secret_value()
        catalog = Catalog(lambda: connect(url, settings.database_schema))
        if executor is None:
            from cityos.nlq.execute import SparkExecutor

            spark = SparkExecutor(settings)
            spark.warm()
            executor = spark
        return cls(model, catalog, executor, folder, diagnose=doctor_for(settings))

    def _health(self, question: HealthQuestion) -> Reply:
        """The doctor's findings as rows of Spark SQL over them (``cityos.nlq.health``)."""
        if self.diagnose is None or self.executor is None:
            return Refusal(
                "I cannot check the platform from here: this service has no diagnosis configured.",
                "no doctor configured for the NL-query pipeline",
            )
        findings = self.diagnose()
        sql = health.query(question.focus)
        result = self.executor.run(sql, MAX_ROWS, QUERY_TIMEOUT_S, extra=[health.view(findings)])
        return Answer(
            sql=result.sql,
            columns=list(result.columns),
            rows=[list(r) for r in result.rows],
            answer=health.sentence(findings, question.focus),
            interpretation=health.interpretation(question.focus),
            shape="table",
            places=[],
        )

    # --- the two entry points ------------------------------------------------------------------

    def understand(self, question: str, as_of: datetime) -> Understanding:
        pred = self.model.predict(question)
        if pred.confidence < MIN_CONFIDENCE and pred.intent not in ("out_of_scope",):
            understood = Understood(
                pred.intent,
                reply=Clarification(
                    "I am not sure what you are asking. Could you rephrase it, e.g. like one of "
                    "these?",
                    [
                        "What is the average speed on <street> right now?",
                        "What was the average PM2.5 at <station> yesterday?",
                        "Which intersections have a firing alert?",
                    ],
                ),
            )
            return Understanding(understood, None, pred.intent, pred.confidence, pred.slots)
        understood = self.interpreter.interpret(question, pred, as_of.astimezone(UTC))
        sql = None
        if understood.plan is not None:
            sql = build(understood.plan).sql(dialect="spark")
        elif understood.lookup is not None:
            sql = understood.lookup.query.sql(dialect="spark")
        return Understanding(understood, sql, pred.intent, pred.confidence, pred.slots)

    def ask(self, question: str, as_of: datetime) -> Reply:
        refusal = check_question(question)
        if refusal is not None:
            return refusal
        self.catalog.fresh()
        u = self.understand(question.strip(), as_of)
        got = u.understood
        if got.reply is not None:
            return got.reply
        if got.action is not None:
            return got.action
        if got.health is not None:
            return self._health(got.health)
        if u.sql is None:
            return Refusal("I could not turn that into a query.", "no query for this question")
        guarded = check_sql(u.sql, SERVING_TABLES, MAX_ROWS)
        if self.executor is None:
            raise NLQError("no executor configured")
        result = self.executor.run(guarded, MAX_ROWS, QUERY_TIMEOUT_S)
        columns, rows = list(result.columns), [list(r) for r in result.rows]
        return Answer(
            sql=getattr(result, "sql", "") or guarded,
            columns=columns,
            rows=rows,
            answer=sentence(got, columns, rows),
            interpretation=interpretation(got, self.catalog),
            shape=shape(got, rows),
            places=[{"kind": p.kind, "id": p.id, "name": p.name} for p in got.places],
        )


# --- words for people ------------------------------------------------------------------------


def _fmt(value: Any, metric: str | None = None) -> str:
    if value is None:
        return "no data"
    if isinstance(value, float):
        text = f"{value:,.3f}" if abs(value) < 1 else f"{value:,.1f}"
    else:
        text = str(value)
    unit = lexicon.METRIC_UNITS.get(metric or "", "")
    return f"{text} {unit}".strip()


def _plan_words(plan: QueryPlan) -> str:
    agg = plan.agg
    metric = lexicon.METRIC_NAMES.get(plan.metric, plan.metric)
    if agg is Aggregation.VALUE:
        return metric
    if agg is Aggregation.COUNT:
        return "number of windows"
    word = {Aggregation.AVG: "average", Aggregation.SUM: "total", Aggregation.MAX: "highest",
            Aggregation.MIN: "lowest"}[agg]  # fmt: skip
    return f"{word} {metric}"


def sentence(u: Understood, columns: list[str], rows: list[list[Any]]) -> str:
    where = ", ".join(p.name for p in u.places) or "the city"
    when = f" ({u.time.describe(u.timezone)})" if u.time is not None else ""
    if u.lookup is not None:
        if not rows:
            return f"No {u.lookup.describe} found."
        if len(rows) == 1 and len(rows[0]) == 1:
            return f"{u.lookup.describe[:1].upper()}{u.lookup.describe[1:]}: {_fmt(rows[0][0])}."
        names = ", ".join(str(r[0]) for r in rows[:8]) + (" …" if len(rows) > 8 else "")
        return f"{u.lookup.describe[:1].upper()}{u.lookup.describe[1:]} ({len(rows)}): {names}."
    plan = u.plan
    if plan is None:
        return ""
    what = _plan_words(plan)
    if not rows or all(v is None for v in rows[0]) and len(rows) == 1:
        return f"No data for the {what} in {where}{when}."
    if plan.distinct:
        names = ", ".join(str(r[0]) for r in rows[:10]) + (" …" if len(rows) > 10 else "")
        cond = plan.conditions[0]
        return (
            f"{len(rows)} match {lexicon.METRIC_NAMES[cond.metric]} {cond.op} {cond.value:g}"
            f"{when}: {names}."
        )
    if plan.agg is Aggregation.COUNT:
        return f"{_fmt(rows[0][-1])} windows in {where} matched{when}."
    if len(rows) == 1 and len(rows[0]) == 1:
        return f"The {what} in {where}{when} is {_fmt(rows[0][0], plan.metric)}."
    if plan.order is not None:
        top = rows[0]
        lead = f"{top[0]} ({_fmt(top[-1], plan.metric)})"
        return f"Ranked by {what}{when}: {lead} first, {len(rows)} shown."
    if any(g in (GroupBy.HOUR, GroupBy.DAY) for g in plan.group_by):
        return f"The {what} in {where}{when}, {len(rows)} time buckets."
    return f"The {what} in {where}{when}, {len(rows)} groups."


def interpretation(u: Understood, catalog: Catalog) -> str:
    parts = []
    if u.plan is not None:
        plan = u.plan
        unit = lexicon.METRIC_UNITS.get(plan.metric, "")
        parts.append(f"metric: {_plan_words(plan)}" + (f" ({unit})" if unit else ""))
        if plan.group_by:
            parts.append("by " + ", ".join(g.value for g in plan.group_by))
        for c in plan.conditions:
            parts.append(f"where {c.metric} {c.op} {c.value:g}")
    elif u.lookup is not None:
        parts.append(u.lookup.describe)
    if u.places:
        parts.append("place: " + "; ".join(p.label for p in u.places))
    elif u.plan is not None:
        parts.append(f"place: all of {', '.join(str(i) for i in u.plan.scope.ids)}")
    if u.time is not None:
        parts.append(f"time: {u.time.describe(u.timezone)}")
    parts.extend(u.notes)
    return "; ".join(parts)


def shape(u: Understood, rows: list[list[Any]]) -> str:
    if u.lookup is not None:
        return u.lookup.shape if rows else "table"
    plan = u.plan
    if plan is not None and any(g in (GroupBy.HOUR, GroupBy.DAY) for g in plan.group_by):
        return "time_series"
    if len(rows) == 1 and len(rows[0]) == 1:
        return "scalar"
    return "table"
