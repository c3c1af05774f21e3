"""Time expressions in a question -> a UTC ``TimeRange`` over the serving tables' windows.

The conventions are those of the gold SQL (shared/nlq/README.md): ``as_of`` is "now"; days are
local calendar days of the city's IANA zone, converted to UTC instants with zoneinfo (so a DST
day is 23 or 25 hours long); *today* runs from local midnight to ``as_of``; *yesterday*, *on 20
December* and *on Sunday* are whole local days; *at 18:00* is the window starting then.

Resolution is two tables of (pattern -> handler), tried in order, first hit wins:

* ``CLOCK_RULES`` name a time of day or a rolling span (between, last N, since, at, parts of
  the day) and take their day, where they need one, from ``DAY_RULES`` (default: today);
* ``DAY_RULES`` name a day (yesterday, a date, a weekday, today); alone, they give that day;
* otherwise *now / current / latest* gives the latest window.

Parts of the day (local hours, end exclusive): morning 06-12, afternoon 12-18, evening 18-22,
tonight / night 18-24. A clock time without am/pm is read on the 24-hour clock, except that
"this afternoon / this evening / tonight" or a trailing "pm" moves 1-11 o'clock to the afternoon.
A weekday means the most recent such day strictly before as_of's local day. A date without a
year is the most recent one that has begun by as_of. Spans that run past as_of end at as_of.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cityos.nlq.errors import TimeExpressionError


class RangeKind(StrEnum):
    """How a range selects windows; the compiler has one predicate per kind."""

    LATEST = "latest"  # the latest window with window_end <= end (start == end: as_of or before)
    SPAN = "span"  # windows wholly inside: window_start >= start AND window_end <= end
    DAY = "day"  # whole local day(s): window_start >= start AND window_start < end
    AT = "at"  # the one window starting at start (end == start)


@dataclass(frozen=True)
class TimeRange:
    """A resolved time expression: UTC instants, the selection kind and the words it came from."""

    start: datetime
    end: datetime
    kind: RangeKind
    text: str = ""

    def describe(self, zone: str) -> str:
        """Human wording for the interpretation line, in the city's local time."""
        tz = ZoneInfo(zone)
        fmt = "%Y-%m-%d %H:%M"
        if self.kind is RangeKind.LATEST:
            return f"latest window ending by {self.end.astimezone(tz):{fmt} %Z}"
        if self.kind is RangeKind.AT:
            return f"window starting {self.start.astimezone(tz):{fmt} %Z}"
        return f"{self.start.astimezone(tz):{fmt}} to {self.end.astimezone(tz):{fmt} %Z}"


@dataclass(frozen=True)
class _Context:
    as_of: datetime  # UTC
    zone: ZoneInfo
    text: str  # the whole normalised question, for day qualifiers

    @property
    def today(self) -> date:
        return self.as_of.astimezone(self.zone).date()

    def at(self, day: date, hour: int, minute: int = 0) -> datetime:
        """Local wall-clock time on ``day`` as a UTC instant (24:00 = next local midnight)."""
        if hour == 24:
            day, hour = day + timedelta(days=1), 0
        return datetime.combine(day, time(hour, minute), tzinfo=self.zone).astimezone(UTC)

    def day_range(self, day: date) -> tuple[datetime, datetime]:
        return self.at(day, 0), self.at(day + timedelta(days=1), 0)


# --- vocabulary ------------------------------------------------------------------------------

MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15,
    "twenty": 20, "twenty-four": 24, "thirty": 30, "forty-five": 45, "forty-eight": 48,
    "sixty": 60, "ninety": 90,
}  # fmt: skip
UNIT_SECONDS = {"minute": 60, "min": 60, "hour": 3600, "hr": 3600, "day": 86400, "week": 604800}
DAY_PARTS = {  # local hours [start, end)
    "morning": (6, 12),
    "afternoon": (12, 18),
    "evening": (18, 22),
    "tonight": (18, 24),
    "night": (18, 24),
}
AFTERNOON_WORDS = re.compile(r"\b(pm|p\.m\.|this afternoon|this evening|tonight|in the evening)\b")
CLOCK_WORDS = {"noon": 12, "midday": 12, "midnight": 0}

_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_ORD = r"(?:st|nd|rd|th)?"
_TIME = r"(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?|(noon|midday|midnight)"
_MERIDIEM = r"(am|pm|a\.m\.|p\.m\.)"
_TIME_STRICT = rf"(\d{{1,2}})(?::(\d{{2}})\s*{_MERIDIEM}?|\s*{_MERIDIEM})|(noon|midday|midnight)"
_NUMBER = r"(\d+|" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True)) + ")"


def _count(word: str) -> int:
    """A count written in digits or as a word ("two", "an")."""
    return NUMBER_WORDS.get(word) or int(word)


def _hour(
    hour: str | None, minute: str | None, meridiem: str | None, word: str | None, afternoon: bool
) -> tuple[int, int]:
    """A clock reading on the 24-hour clock (see the module docstring for am/pm defaults)."""
    if word:
        return CLOCK_WORDS[word], 0
    h, m = int(hour or 0), int(minute or 0)
    mer = (meridiem or "").replace(".", "")
    if h > 24 or m > 59 or (mer and not 1 <= h <= 12):
        raise TimeExpressionError(f"{hour}:{minute or '00'} {mer}".strip(), "not a clock time")
    if mer == "am" and h == 12:
        h = 0
    elif (mer == "pm" or (not mer and afternoon)) and h < 12:
        h += 12
    return h, m


# --- day rules: match -> local date ----------------------------------------------------------


def _yesterday(m: re.Match[str], ctx: _Context) -> date:
    return ctx.today - timedelta(days=1)


def _day_before_yesterday(m: re.Match[str], ctx: _Context) -> date:
    return ctx.today - timedelta(days=2)


def _days_ago(m: re.Match[str], ctx: _Context) -> date:
    count = _count(m[1])
    return ctx.today - timedelta(days=count * (7 if m[2] == "week" else 1))


def _today(m: re.Match[str], ctx: _Context) -> date:
    return ctx.today


def _iso_date(m: re.Match[str], ctx: _Context) -> date:
    return _checked_date(ctx, int(m[1]), int(m[2]), int(m[3]), explicit_year=True)


def _day_month(m: re.Match[str], ctx: _Context) -> date:
    return _dated(ctx, int(m[1]), MONTHS[m[2]], m[3])


def _month_day(m: re.Match[str], ctx: _Context) -> date:
    return _dated(ctx, int(m[2]), MONTHS[m[1]], m[3])


def _weekday(m: re.Match[str], ctx: _Context) -> date:
    back = (ctx.today.weekday() - WEEKDAYS.index(m[1])) % 7 or 7
    return ctx.today - timedelta(days=back)


def _dated(ctx: _Context, day: int, month: int, year: str | None) -> date:
    if year:
        return _checked_date(ctx, int(year), month, day, explicit_year=True)
    candidate = _checked_date(ctx, ctx.today.year, month, day, explicit_year=False)
    if candidate > ctx.today:  # a date without a year is the most recent one
        candidate = _checked_date(ctx, ctx.today.year - 1, month, day, explicit_year=False)
    return candidate


def _checked_date(ctx: _Context, year: int, month: int, day: int, *, explicit_year: bool) -> date:
    try:
        result = date(year, month, day)
    except ValueError as exc:
        raise TimeExpressionError(f"{year}-{month:02}-{day:02}", str(exc)) from exc
    if explicit_year and result > ctx.today:
        raise TimeExpressionError(result.isoformat(), "is after as_of")
    return result


DAY_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str], _Context], date]]] = [
    (re.compile(r"\bday before yesterday\b"), _day_before_yesterday),
    (re.compile(rf"\b{_NUMBER}\s+(day|week)s?\s+ago\b"), _days_ago),
    (re.compile(r"\b(yesterday|previous day|day before)\b"), _yesterday),
    (re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b"), _iso_date),
    (
        re.compile(rf"\b(\d{{1,2}}){_ORD}\s+(?:of\s+)?{_MONTH}(?:,?\s+(\d{{4}}))?(?![a-z])"),
        _day_month,
    ),
    (re.compile(rf"\b{_MONTH}\s+(\d{{1,2}}){_ORD}(?:,?\s+(\d{{4}}))?\b"), _month_day),
    (re.compile(r"\b(?:on|last|this past)\s+(" + "|".join(WEEKDAYS) + r")\b"), _weekday),
    (re.compile(r"\b(" + "|".join(WEEKDAYS) + r")\b"), _weekday),
    (re.compile(r"\b(today|so far|this (?:morning|afternoon|evening)|tonight)\b"), _today),
]


def _day_of(ctx: _Context) -> tuple[date, bool]:
    """The day the question names (and whether it named one); today if none."""
    for pattern, handler in DAY_RULES:
        m = pattern.search(ctx.text)
        if m:
            return handler(m, ctx), True
    return ctx.today, False


# --- clock rules: match -> TimeRange ---------------------------------------------------------


def _span(ctx: _Context, start: datetime, end: datetime, text: str) -> TimeRange:
    """A span clipped to as_of; a span wholly after as_of is an error, not an empty answer."""
    if start >= ctx.as_of:
        raise TimeExpressionError(text, "starts after as_of")
    if end <= start:
        raise TimeExpressionError(text, "ends before it starts")
    return TimeRange(start, min(end, ctx.as_of), RangeKind.SPAN, text)


def _between(m: re.Match[str], ctx: _Context) -> TimeRange:
    day, _ = _day_of(ctx)
    afternoon = bool(re.search(r"\b(this afternoon|this evening|tonight)\b", ctx.text))
    h2, m2 = _hour(m[5], m[6], m[7], m[8], afternoon)
    h1, m1 = _hour(m[1], m[2], m[3], m[4], afternoon)
    if not m[3] and not m[4] and (m[7] or "").startswith("p") and h1 + 12 <= h2:
        h1 += 12  # "between 5 and 6 pm": the pm applies to both ends
    return _span(ctx, ctx.at(day, h1, m1), ctx.at(day, h2, m2), m[0].strip())


def _last(m: re.Match[str], ctx: _Context) -> TimeRange:
    count_word, unit = m[2], m[3]
    if count_word is None and unit == "day" and m[1] == "previous":
        return _whole_day(ctx, ctx.today - timedelta(days=1), m[0])
    count = 1 if count_word is None else _count(count_word)
    seconds = 1800 if m[4] else count * UNIT_SECONDS[unit]
    return TimeRange(ctx.as_of - timedelta(seconds=seconds), ctx.as_of, RangeKind.SPAN, m[0])


def _ago(m: re.Match[str], ctx: _Context) -> TimeRange:
    """ "2 hours ago": the latest window ending by then, as "now" is the latest by as_of."""
    then = ctx.as_of - timedelta(seconds=_count(m[1]) * UNIT_SECONDS[m[2]])
    return TimeRange(then, then, RangeKind.LATEST, m[0])


def _since(m: re.Match[str], ctx: _Context) -> TimeRange:
    day, named = _day_of(ctx)
    h, mi = _hour(m[1], m[2], m[3], m[4], False)
    start = ctx.at(day, h, mi)
    if start >= ctx.as_of and not named:  # "since 11pm" just after midnight: last night
        start = ctx.at(day - timedelta(days=1), h, mi)
    return _span(ctx, start, ctx.as_of, m[0])


def _at(m: re.Match[str], ctx: _Context) -> TimeRange:
    day, _ = _day_of(ctx)
    h, mi = _hour(m[1], m[2], m[3] or m[4], m[5], bool(AFTERNOON_WORDS.search(ctx.text)))
    start = ctx.at(day, h, mi)
    if start >= ctx.as_of:
        raise TimeExpressionError(m[0], "is after as_of")
    return TimeRange(start, start, RangeKind.AT, m[0].strip())


def _day_part(m: re.Match[str], ctx: _Context) -> TimeRange:
    day, _ = _day_of(ctx)
    first, last = DAY_PARTS[m[1]]
    return _span(ctx, ctx.at(day, first), ctx.at(day, last), m[0])


CLOCK_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str], _Context], TimeRange]]] = [
    (re.compile(rf"\b(?:between|from)\s+(?:{_TIME})\s*(?:and|to|until|till|-)\s*(?:{_TIME})"),
     _between),
    (re.compile(rf"\b(last|past|previous|preceding)\s+(?:{_NUMBER}\s+)?"
                r"(?:(minute|min|hour|hr|day|week)s?\b|(half\s+(?:an\s+)?hour))"), _last),
    (re.compile(rf"\b{_NUMBER}\s+(minute|min|hour|hr)s?\s+ago\b"), _ago),
    (re.compile(rf"\bsince\s+(?:{_TIME})"), _since),
    (re.compile(rf"\bat\s+(?:{_TIME_STRICT})"), _at),
    (re.compile(r"\b(morning|afternoon|evening|tonight|night)\b"), _day_part),
]  # fmt: skip

LATEST = re.compile(
    r"\b(now|current(ly)?|latest|at the moment|at this moment|at present|most recent|presently)\b"
)


def _whole_day(ctx: _Context, day: date, text: str) -> TimeRange:
    start, end = ctx.day_range(day)
    if day == ctx.today:  # today runs to as_of, whose window may not be complete yet
        return TimeRange(start, ctx.as_of, RangeKind.SPAN, text)
    return TimeRange(start, end, RangeKind.DAY, text)


# --- public API ------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Lowercase, single spaces, typographic dashes/apostrophes made plain."""
    text = text.lower().replace("\u2013", "-").replace("\u2014", "-").replace("\u2019", "'")
    return re.sub(r"\s+", " ", text).strip()


def extract_time(text: str, as_of: datetime, zone: str) -> TimeRange | None:
    """The time range a question names, or None if it names none.

    ``as_of`` must be timezone-aware; ``zone`` is the city's IANA name (cities.timezone).
    """
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise TimeExpressionError(str(as_of), "as_of must be timezone-aware")
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TimeExpressionError(zone, "unknown IANA time zone") from exc
    ctx = _Context(as_of.astimezone(UTC), tz, normalise(text))
    for pattern, clock_handler in CLOCK_RULES:
        m = pattern.search(ctx.text)
        if m:
            return clock_handler(m, ctx)
    for pattern, day_handler in DAY_RULES:
        m = pattern.search(ctx.text)
        if m:
            return _whole_day(ctx, day_handler(m, ctx), m[0])
    m = LATEST.search(ctx.text)
    if m:
        return TimeRange(ctx.as_of, ctx.as_of, RangeKind.LATEST, m[0])
    return None


def resolve_time(text: str, as_of: datetime, zone: str) -> TimeRange:
    """Like ``extract_time`` but a text without any time expression is an error."""
    found = extract_time(text, as_of, zone)
    if found is None:
        raise TimeExpressionError(text, "names no time")
    return found
