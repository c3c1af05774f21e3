from datetime import UTC, datetime

import pytest

from cityos.nlq.errors import TimeExpressionError
from cityos.nlq.timeexpr import RangeKind, extract_time, resolve_time

BERLIN, SHANGHAI = "Europe/Berlin", "Asia/Shanghai"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


CASES = [  # (question, as_of, zone, kind, start, end) -- starts/ends in UTC
    ("current speed", "2016-12-19T07:55", BERLIN, "latest", "2016-12-19T07:55", "2016-12-19T07:55"),
    ("right now", "2016-12-19T08:30", SHANGHAI, "latest", "2016-12-19T08:30", "2016-12-19T08:30"),
    (
        "in the last 30 minutes",
        "2016-12-19T16:30",
        BERLIN,
        "span",
        "2016-12-19T16:00",
        "2016-12-19T16:30",
    ),
    (
        "over the past two hours",
        "2016-12-19T16:30",
        SHANGHAI,
        "span",
        "2016-12-19T14:30",
        "2016-12-19T16:30",
    ),
    (
        "over the last hour",
        "2016-12-19T17:00",
        BERLIN,
        "span",
        "2016-12-19T16:00",
        "2016-12-19T17:00",
    ),
    ("last 3 days", "2016-12-19T17:00", BERLIN, "span", "2016-12-16T17:00", "2016-12-19T17:00"),
    ("since 7am", "2016-12-19T09:00", BERLIN, "span", "2016-12-19T06:00", "2016-12-19T09:00"),
    ("since 7am", "2016-12-19T09:00", SHANGHAI, "span", "2016-12-18T23:00", "2016-12-19T09:00"),
    ("since 2:30 pm", "2016-12-19T15:00", BERLIN, "span", "2016-12-19T13:30", "2016-12-19T15:00"),
    ("today", "2016-12-19T12:00", BERLIN, "span", "2016-12-18T23:00", "2016-12-19T12:00"),
    ("today", "2016-12-19T12:00", SHANGHAI, "span", "2016-12-18T16:00", "2016-12-19T12:00"),
    ("yesterday", "2016-12-20T04:00", SHANGHAI, "day", "2016-12-18T16:00", "2016-12-19T16:00"),
    ("yesterday", "2016-12-19T10:00", BERLIN, "day", "2016-12-17T23:00", "2016-12-18T23:00"),
    (  # not yesterday: "day before" alone means yesterday, "day before yesterday" does not
        "the day before yesterday",
        "2016-12-19T10:00",
        BERLIN,
        "day",
        "2016-12-16T23:00",
        "2016-12-17T23:00",
    ),
    ("2 days ago", "2016-12-20T04:00", SHANGHAI, "day", "2016-12-17T16:00", "2016-12-18T16:00"),
    ("a week ago", "2016-12-19T10:00", BERLIN, "day", "2016-12-11T23:00", "2016-12-12T23:00"),
    ("two hours ago", "2016-12-19T10:00", BERLIN, "latest", "2016-12-19T08:00", "2016-12-19T08:00"),
    (
        "30 minutes ago",
        "2016-12-19T10:00",
        BERLIN,
        "latest",
        "2016-12-19T09:30",
        "2016-12-19T09:30",
    ),
    (
        "over the previous day",
        "2016-12-21T03:00",
        SHANGHAI,
        "day",
        "2016-12-19T16:00",
        "2016-12-20T16:00",
    ),
    ("this morning", "2016-12-19T10:00", BERLIN, "span", "2016-12-19T05:00", "2016-12-19T10:00"),
    ("this afternoon", "2016-12-19T20:00", BERLIN, "span", "2016-12-19T11:00", "2016-12-19T17:00"),
    ("this evening", "2016-12-19T15:00", SHANGHAI, "span", "2016-12-19T10:00", "2016-12-19T14:00"),
    ("tonight", "2016-12-19T22:00", BERLIN, "span", "2016-12-19T17:00", "2016-12-19T22:00"),
    ("on 20 December", "2016-12-21T02:00", SHANGHAI, "day", "2016-12-19T16:00", "2016-12-20T16:00"),
    ("on Dec 20", "2016-12-21T02:00", BERLIN, "day", "2016-12-19T23:00", "2016-12-20T23:00"),
    ("on 2016-12-20", "2016-12-21T02:00", BERLIN, "day", "2016-12-19T23:00", "2016-12-20T23:00"),
    ("on 20 December", "2017-01-05T00:00", BERLIN, "day", "2016-12-19T23:00", "2016-12-20T23:00"),
    ("on Sunday", "2016-12-19T12:00", BERLIN, "day", "2016-12-17T23:00", "2016-12-18T23:00"),
    ("on Monday", "2016-12-19T12:00", SHANGHAI, "day", "2016-12-11T16:00", "2016-12-12T16:00"),
    (
        "at 18:00 Beijing time on 18 December",
        "2016-12-18T12:00",
        SHANGHAI,
        "at",
        "2016-12-18T10:00",
        "2016-12-18T10:00",
    ),
    ("at 6 pm yesterday", "2016-12-19T12:00", BERLIN, "at", "2016-12-18T17:00", "2016-12-18T17:00"),
    (
        "between 7 and 9 this morning",
        "2016-12-19T10:00",
        BERLIN,
        "span",
        "2016-12-19T06:00",
        "2016-12-19T08:00",
    ),
    (
        "between 5 and 6 pm today",
        "2016-12-19T17:30",
        BERLIN,
        "span",
        "2016-12-19T16:00",
        "2016-12-19T17:00",
    ),
    (
        "from 08:00 to 10:30 on 18 December",
        "2016-12-19T17:30",
        SHANGHAI,
        "span",
        "2016-12-18T00:00",
        "2016-12-18T02:30",
    ),
    # DST: Berlin left summer time on 2016-10-30, a 25-hour local day
    ("yesterday", "2016-10-31T12:00", BERLIN, "day", "2016-10-29T22:00", "2016-10-30T23:00"),
    ("today", "2016-10-30T12:00", BERLIN, "span", "2016-10-29T22:00", "2016-10-30T12:00"),
    ("since 7am", "2016-03-27T12:00", BERLIN, "span", "2016-03-27T05:00", "2016-03-27T12:00"),
    ("on Sunday", "2016-03-28T12:00", BERLIN, "day", "2016-03-26T23:00", "2016-03-27T22:00"),
]


@pytest.mark.parametrize(("text", "as_of", "zone", "kind", "start", "end"), CASES)
def test_resolves(text: str, as_of: str, zone: str, kind: str, start: str, end: str) -> None:
    tr = resolve_time(text, utc(as_of), zone)
    assert (tr.kind, tr.start, tr.end) == (RangeKind(kind), utc(start), utc(end))


def test_no_time_is_none_and_resolve_raises() -> None:
    assert (
        extract_time("Which district is Weidenpesch in?", utc("2016-12-19T12:00"), BERLIN) is None
    )
    with pytest.raises(TimeExpressionError):
        resolve_time("Which district is Weidenpesch in?", utc("2016-12-19T12:00"), BERLIN)


@pytest.mark.parametrize(
    "text", ["since 7pm on 2016-12-19", "on 2017-01-01", "at 23:00 today", "this evening"]
)
def test_future_is_an_error(text: str) -> None:
    with pytest.raises(TimeExpressionError):
        resolve_time(text, utc("2016-12-19T09:00"), BERLIN)


def test_bad_input() -> None:
    with pytest.raises(TimeExpressionError):
        resolve_time("today", datetime(2016, 12, 19, 12), BERLIN)
    with pytest.raises(TimeExpressionError):
        resolve_time("today", utc("2016-12-19T12:00"), "Mars/Olympus")
    with pytest.raises(TimeExpressionError):
        resolve_time("on 31 February", utc("2016-12-19T12:00"), BERLIN)
