"""The interpreter on the evaluation fixture: slots (given by hand here) -> plans, lookups, actions.

The model is tested by its held-out metrics and the evaluation; these tests pin what the
interpreter makes of given slot words, against the real serving tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from cityos.db import connect
from cityos.nlq.catalog import Catalog
from cityos.nlq.compile import build
from cityos.nlq.model import Prediction
from cityos.nlq.plan import Aggregation, GroupBy, ScopeKind
from cityos.nlq.reply import ActionDraft, Clarification, Refusal
from cityos.nlq.timeexpr import RangeKind
from cityos.nlq.understand import Interpreter

pytestmark = pytest.mark.integration

AS_OF = datetime(2016, 12, 19, 8, 0, tzinfo=UTC)


def pred(question: str, intent: str, *slots: tuple[str, str]) -> Prediction:
    """A prediction whose slots are the given (slot, words) found in the question."""
    found = []
    for slot, text in slots:
        start = question.index(text)
        found.append((slot, text, start, start + len(text)))
    return Prediction(intent, 0.99, sorted(found, key=lambda s: s[2]))


@pytest.fixture(scope="module")
def interpreter(nlq_database_url: str) -> Interpreter:
    return Interpreter(Catalog(lambda: connect(nlq_database_url, "public")))


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    import sqlglot

    with psycopg.connect(url) as conn:
        return conn.execute(sqlglot.transpile(sql, read="spark", write="postgres")[0]).fetchall()


def test_a_name_that_is_a_district_and_a_subdistrict_asks_back(interpreter: Interpreter) -> None:
    q = "What's the average speed in Nippes right now?"
    got = interpreter.interpret(
        q,
        pred(
            q, "aggregate", ("METRIC", "average speed"), ("PLACE", "Nippes"), ("TIME", "right now")
        ),
        AS_OF,  # fmt: skip
    )
    assert isinstance(got.reply, Clarification)
    assert len(got.reply.options) == 2
    assert any("district" in o for o in got.reply.options)
    assert any("sub-district" in o for o in got.reply.options)


def test_a_time_no_rule_reads_asks_back_instead_of_answering_now(
    interpreter: Interpreter,
) -> None:
    q = "What was the average speed in the Nippes district a fortnight back?"
    got = interpreter.interpret(
        q,
        pred(
            q,
            "aggregate",
            ("METRIC", "average speed"),
            ("PLACE", "Nippes"),
            ("TIME", "a fortnight back"),
        ),
        AS_OF,  # fmt: skip
    )
    assert isinstance(got.reply, Clarification), got
    assert "a fortnight back" in got.reply.answer
    assert got.reply.options[1] == "What was the average speed in the Nippes district yesterday?"


def test_days_ago_is_that_day_not_now(interpreter: Interpreter) -> None:
    q = "What was the average speed in the Nippes district 2 days ago?"
    got = interpreter.interpret(
        q,
        pred(
            q, "aggregate", ("METRIC", "average speed"), ("PLACE", "Nippes"), ("TIME", "2 days ago")
        ),
        AS_OF,  # fmt: skip
    )
    assert got.plan is not None and got.plan.time is not None
    assert got.plan.time.kind is RangeKind.DAY
    assert (AS_OF - got.plan.time.start).days == 2


def test_the_level_word_settles_it(interpreter: Interpreter) -> None:
    q = "What was the average speed in the Nippes district over the last hour?"
    got = interpreter.interpret(
        q,
        pred(
            q,
            "aggregate",
            ("METRIC", "average speed"),
            ("PLACE", "Nippes"),
            ("TIME", "over the last hour"),
        ),
        AS_OF,  # fmt: skip
    )
    assert got.plan is not None
    assert got.plan.scope.kind is ScopeKind.ZONE_TREE
    assert got.plan.scope.ids == ("cologne-stb-5",)
    assert got.plan.agg is Aggregation.AVG


def test_station_and_district_of_one_name_ask_back(interpreter: Interpreter) -> None:
    q = "Show me the AQI for Changping."
    got = interpreter.interpret(
        q, pred(q, "aggregate", ("METRIC", "AQI"), ("PLACE", "Changping")), AS_OF
    )
    assert isinstance(got.reply, Clarification)
    assert len(got.reply.options) >= 2


def test_parent_of_a_subdistrict(interpreter: Interpreter, nlq_database_url: str) -> None:
    q = "Which district is Weidenpesch in?"
    got = interpreter.interpret(
        q, pred(q, "gazetteer", ("GROUP", "district"), ("PLACE", "Weidenpesch")), AS_OF
    )
    assert got.lookup is not None
    assert rows(nlq_database_url, got.lookup.query.sql(dialect="spark")) == [("Nippes",)]


def test_ranking_over_sensors(interpreter: Interpreter, nlq_database_url: str) -> None:
    q = "Which three traffic sensors have counted the most vehicles today?"
    got = interpreter.interpret(
        q,
        pred(
            q,
            "rank",
            ("LIMIT", "three"),
            ("GROUP", "traffic sensors"),
            ("ORDER", "most"),
            ("TIME", "today"),
        ),
        datetime(2016, 12, 19, 12, 0, tzinfo=UTC),  # fmt: skip
    )
    assert got.plan is not None
    assert got.plan.metric == "vehicle_count" and got.plan.agg is Aggregation.SUM
    assert got.plan.group_by == (GroupBy.SENSOR,) and got.plan.limit == 3
    assert len(rows(nlq_database_url, build(got.plan).sql(dialect="spark"))) == 3


def test_phase_named_by_street_and_movement(interpreter: Interpreter) -> None:
    q = "Give the Niehler Str. through phase at Niehler Str. / Xantener Str. 45 seconds of green."
    got = interpreter.interpret(
        q,
        pred(
            q,
            "set_green",
            ("PHASE", "Niehler Str. through phase"),
            ("PLACE", "Niehler Str. / Xantener Str."),
            ("GREEN", "45 seconds"),
        ),
        AS_OF,  # fmt: skip
    )
    assert isinstance(got.action, ActionDraft)
    assert got.action.target == {"intersection_id": "280120513"}
    assert got.action.params == {"phase_index": 0, "green_s": 45.0}


def test_relative_green_is_made_absolute(interpreter: Interpreter) -> None:
    q = "Give Neusser Str. 10 more seconds of green at Wilhelmstr."
    got = interpreter.interpret(
        q,
        pred(
            q,
            "set_green",
            ("PLACE", "Neusser Str."),
            ("GREEN", "10 more seconds"),
            ("PLACE", "Wilhelmstr."),
        ),
        AS_OF,  # fmt: skip
    )
    assert isinstance(got.action, ActionDraft)
    inter = got.action.target["intersection_id"]
    phase = next(
        p for p in interpreter.catalog.phases(inter)
        if p.phase_index == got.action.params["phase_index"]
    )  # fmt: skip
    assert got.action.params["green_s"] == phase.green_s + 10
    assert "Neusser Str." in phase.description


def test_unknown_phase_is_refused(interpreter: Interpreter) -> None:
    q = "Set phase 9 at Neusser Str. / Wilhelmstr. to 30 seconds."
    got = interpreter.interpret(
        q,
        pred(
            q,
            "set_green",
            ("PHASE", "phase 9"),
            ("PLACE", "Neusser Str. / Wilhelmstr."),
            ("GREEN", "to 30 seconds"),
        ),
        AS_OF,  # fmt: skip
    )
    assert isinstance(got.reply, Refusal)
    assert "phase 9" in got.reply.reason


def test_alert_found_by_place(interpreter: Interpreter) -> None:
    q = "The road works in Niehl are finished, resolve that alert."
    at = datetime(2016, 12, 19, 23, 0, tzinfo=UTC)
    got = interpreter.interpret(q, pred(q, "alert_op", ("PLACE", "Niehl"), ("OP", "resolve")), at)
    assert isinstance(got.action, ActionDraft)
    assert got.action.params == {"operation": "resolve"}
    assert got.action.target["alert_id"].startswith("AL-")


def test_writes_are_refused_whatever_the_slots(interpreter: Interpreter) -> None:
    q = "Delete all resolved alerts."
    got = interpreter.interpret(q, pred(q, "modify_data", ("STATUS", "resolved")), AS_OF)
    assert isinstance(got.reply, Refusal)


def test_the_question_decides_which_nippes(interpreter: Interpreter, nlq_database_url: str) -> None:
    """Nippes is a district and a sub-district: a parent question can only mean the latter."""
    q = "Which district is Nippes in?"
    got = interpreter.interpret(
        q, pred(q, "gazetteer", ("GROUP", "district"), ("PLACE", "Nippes")), AS_OF
    )
    assert got.lookup is not None
    assert rows(nlq_database_url, got.lookup.query.sql(dialect="spark")) == [("Nippes",)]
    q = "How many sub-districts does Nippes have?"
    got = interpreter.interpret(
        q, pred(q, "gazetteer", ("GROUP", "sub-districts"), ("PLACE", "Nippes")), AS_OF
    )
    assert got.lookup is not None
    (count,) = rows(nlq_database_url, got.lookup.query.sql(dialect="spark"))[0]
    assert count > 1


def test_where_is_a_station(interpreter: Interpreter, nlq_database_url: str) -> None:
    q = "Where is the Dongsi station?"
    got = interpreter.interpret(q, pred(q, "gazetteer", ("PLACE", "Dongsi")), AS_OF)
    assert got.lookup is not None
    [(name, zone, lat, lon)] = rows(nlq_database_url, got.lookup.query.sql(dialect="spark"))
    assert (name, zone) == ("Dongsi", "Dongcheng")
    assert 39 < lat < 41 and 116 < lon < 117
