"""The closed vocabularies of the language model: intents and slot types (BIO over words).

The model only finds *what kind of question* this is and *which words* name each part of it;
``cityos.nlq.understand`` turns those words into ids, numbers and time ranges with the gazetteer,
``timeexpr`` and the lexicons below, and builds the typed plan. Words are split by ``words``.
"""

from __future__ import annotations

import re

INTENTS = (
    "aggregate",  # a value over windows: average/total/max ... per scope, time, optional groups
    "rank",  # which N places have the most/least <metric> (grouped, ordered, limited)
    "top_reading",  # which place recorded the single highest/lowest window value
    "which_exceed",  # which places had <metric> above/below a threshold at some window
    "count_exceed",  # for how many windows (hours, 5-min periods) <metric> was above/below
    "gazetteer",  # zones, sub-zones, parents, areas; sensors/intersections in a place
    "alerts",  # list / count alerts by status, severity, kind, place
    "phases",  # signal plans: green times, limits, longest phase
    "set_green",  # instruction: change a phase's green time
    "alert_op",  # instruction: acknowledge / resolve / raise an alert
    "modify_data",  # asks to write, delete or change data: refused
    "restricted",  # asks for what is not in the serving tables (tokens, users, audit): refused
    "out_of_scope",  # not about the city's data
    "health",  # is the platform itself working: pipeline, broker, jobs, freshness (the doctor)
)

SLOTS = (
    "METRIC",  # what is measured: speed, vehicles, PM2.5, AQI, green time, area ...
    "AGG",  # average, total, highest, how many ...
    "PLACE",  # a city, zone, street, intersection, sensor or station name
    "TIME",  # a time expression
    "GROUP",  # per district, hourly, by kind; the places asked for in "which sensors ..."
    "LIMIT",  # three, top 5
    "ORDER",  # most, least, busiest, worst
    "CMP",  # above 300, below 20 km/h
    "PHASE",  # phase 2, the Neusser Str. left-turn phase
    "GREEN",  # to 45 seconds, 10 more seconds
    "ALERT",  # AL-0004
    "OP",  # acknowledge, resolve, raise
    "SEVERITY",  # critical, warning, info
    "STATUS",  # firing, not resolved, acknowledged
    "KIND",  # congestion, air quality, sensor offline (alert kinds)
)

TAGS = ("O", *[f"{p}-{s}" for s in SLOTS for p in ("B", "I")])
TAG_INDEX = {t: i for i, t in enumerate(TAGS)}
INTENT_INDEX = {t: i for i, t in enumerate(INTENTS)}

# A word: a run of letters/digits that may carry inner or trailing dots, dashes and apostrophes
# ("Str.", "PM2.5", "AL-0004", "Friedrich-Karl-Str.", "what's"), or any other single character.
WORD = re.compile(r"[^\W_](?:[\w.'’\-:]*[\w.])?|\S")


def words(text: str) -> list[tuple[str, int, int]]:
    """The question's words with their character offsets."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]
