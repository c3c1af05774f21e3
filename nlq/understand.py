"""Intent + slots -> a typed request: a query (plan or lookup), an action draft, or a reply.

The model (``model.JointModel``) gives the intent and the words of each slot; this module
resolves them: places with the gazetteer (ambiguity -> the natural reading or a clarification),
times with ``timeexpr`` in the city's zone, words with ``lexicon``; then builds a ``QueryPlan``
(window tables) or a ``Lookup`` (zones, alerts, phases), or an ``ActionDraft``. No text of the
question reaches SQL except as a literal resolved to an id, a number or an instant.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlglot import exp

from cityos.nlq import lexicon
from cityos.nlq.catalog import Catalog, Phase
from cityos.nlq.errors import NLQError, TimeExpressionError
from cityos.nlq.gazetteer import Match, fold
from cityos.nlq.health import HealthQuestion, focus_of
from cityos.nlq.model import Prediction
from cityos.nlq.plan import (
    Aggregation,
    Condition,
    GroupBy,
    Order,
    QueryPlan,
    Scope,
    ScopeKind,
)
from cityos.nlq.reply import ActionDraft, Clarification, Refusal
from cityos.nlq.timeexpr import RangeKind, TimeRange, extract_time, resolve_time

STOP_WORDS = {"the", "a", "an", "in", "at", "on", "for", "all", "city", "and", "of", "it", "there"}
POINT_ENTITIES = ("intersection", "sensor", "district", "subdistrict")  # "which X have alerts"
AIR_METRICS = {"pm25", "pm10", "no2", "o3", "so2", "co", "aqi", "temperature_c",
               "relative_humidity", "wind_speed_ms"}  # fmt: skip
KIND_WORDS = {  # words next to a name that say which reading is meant
    "zone:district": re.compile(r"^\s*(district|borough|bezirk)\b|\bdistrict of\s*$"),
    "zone:subdistrict": re.compile(r"^\s*(sub-?district|neighbou?rhood|quarter|stadtteil)\b"),
    "sensor": re.compile(
        r"^\s*(station|monitoring station|sensor|detector|loop|site)\b|\bstation\s*$"
    ),
    "intersection": re.compile(r"^\s*(junction|intersection|crossing|signal)\b"),
    "street": re.compile(r"^\s*(street|road)\b"),
}  # fmt: skip


# "per Beijing district", "for each station", "hourly": a grouping the model did not tag
GROUP_WORDS = re.compile(
    r"\b(?i:per|by|for each|for every|each|every)\s+(?:[A-Z][\w-]*\s+)?"
    r"(?P<what>sub-?districts?|districts?|stations?|sensors?|streets?|roads?|intersections?|"
    r"junctions?|zones?|hours?|days?)\b|\b(?P<adverb>(?i:hourly|daily))\b"
)


class NeedsClarification(NLQError):
    def __init__(self, question: str, options: list[str]) -> None:
        self.question = question
        self.options = options
        super().__init__(question)


class Refused(NLQError):
    def __init__(self, answer: str, reason: str) -> None:
        self.answer = answer
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Place:
    kind: str  # city | zone | street | intersection | sensor
    id: str
    name: str
    city_id: str
    level: str | None = None

    @property
    def label(self) -> str:
        what = self.level.replace("subdistrict", "sub-district") if self.level else self.kind
        return f"{what} {self.name}"


@dataclass(frozen=True)
class Lookup:
    """A query over zones, alerts or phases, already built with sqlglot."""

    query: exp.Select
    describe: str  # what it lists, for the answer sentence
    shape: str = "table"


@dataclass
class Understood:
    """The resolved request and how it was read."""

    intent: str
    plan: QueryPlan | None = None
    lookup: Lookup | None = None
    action: ActionDraft | None = None
    reply: Clarification | Refusal | None = None
    health: HealthQuestion | None = None  # "is the pipeline healthy?": the doctor answers
    places: list[Place] = field(default_factory=list)
    time: TimeRange | None = None
    timezone: str = "UTC"
    notes: list[str] = field(default_factory=list)  # readings chosen on the operator's behalf


UNREAD_TIME_OPTIONS = ("now", "yesterday", "in the last 2 hours")


@dataclass
class _Slots:
    question: str
    pred: Prediction

    def all(self, slot: str) -> list[tuple[str, int, int]]:
        return [(t, a, b) for s, t, a, b in self.pred.slots if s == slot]

    def text(self, slot: str) -> str | None:
        found = self.all(slot)
        return " ".join(t for t, _, _ in found) if found else None

    def phase_text(self) -> str:
        """The PHASE words, with a place name right before them ('Niehler' + 'Str. left-turn')."""
        phases = self.all("PHASE")
        if not phases:
            return ""
        _, start, end = phases[0]
        for _, a, b in self.all("PLACE"):
            if b <= start and not self.question[b:start].strip():
                start = a
        return self.question[start:end]

    def alert_ids(self) -> list[str]:
        found = re.findall(r"\bAL-\d+\b", " ".join(t for t, _, _ in self.all("ALERT")), re.I)
        return [a.upper() for a in found] or [
            a.upper() for a in re.findall(r"\bAL-\d+\b", self.question, re.I)
        ]


class Interpreter:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # --- entry ---------------------------------------------------------------------------------

    def interpret(self, question: str, pred: Prediction, as_of: datetime) -> Understood:
        slots = _Slots(question, pred)
        handler = getattr(self, f"_{pred.intent}")
        try:
            return handler(slots, as_of)
        except NeedsClarification as c:
            return Understood(pred.intent, reply=Clarification(c.question, c.options))
        except Refused as r:
            return Understood(pred.intent, reply=Refusal(r.answer, r.reason))
        except TimeExpressionError as err:
            return Understood(
                pred.intent,
                reply=Clarification(
                    f"I could not place the time '{err.text}' ({err.problem}). Which period do "
                    "you mean?",
                    ["right now", "in the last hour", "today", "yesterday"],
                ),
            )

    # --- refusals ------------------------------------------------------------------------------

    def _modify_data(self, s: _Slots, as_of: datetime) -> Understood:
        raise Refused(
            "I only read CityOS data; I never write, change or delete it.",
            "the question asks to change or delete data; the NL-query service is read-only "
            "(control actions go through proposals and approval)",
        )

    def _restricted(self, s: _Slots, as_of: datetime) -> Understood:
        raise Refused(
            "That is not something I can show: I answer from the serving tables only "
            "(cities, zones, sensors, intersections, signal phases, traffic, air quality, alerts).",
            "the question asks for data outside the serving tables",
        )

    def _out_of_scope(self, s: _Slots, as_of: datetime) -> Understood:
        raise Refused(
            "I can answer questions about the city's traffic, air quality, alerts, zones and "
            "signal timings, and propose signal or alert actions. Try: 'What is the average "
            "speed in Nippes right now?'",
            "the question is not about the city's data",
        )

    # --- the platform itself ------------------------------------------------------------------

    def _health(self, s: _Slots, as_of: datetime) -> Understood:
        return Understood("health", health=HealthQuestion(focus_of(s.question)))

    # --- places and time -----------------------------------------------------------------------

    def _places(
        self,
        s: _Slots,
        kinds: Sequence[str],
        sensor_kind: str | None = None,
        levels: Sequence[str] = (),
    ) -> list[Place]:
        """The places named; ``levels`` keeps only zones of those levels when any qualifies."""
        spans = self._merged_place_spans(s)
        places = []
        for text, start, end in spans:
            place = self._resolve(s.question, text, start, end, kinds, sensor_kind, levels)
            if place is None:
                self._unknown_place(s.question, text, start, end, kinds)
            elif place not in places:
                places.append(place)
        return places

    def _unknown_place(
        self, question: str, text: str, start: int, end: int, kinds: Sequence[str]
    ) -> None:
        """A name that is no place of the loaded cities (of the kinds asked): never guess."""
        name = text.strip(" ,.?!;:'\"")
        if not name or name.lower() in STOP_WORDS:
            return
        near = [
            m for m in self.catalog.gazetteer.lookup(name, cutoff=70.0, limit=5) if m.kind in kinds
        ]
        cities = ", ".join(sorted(str(c["name"]) for c in self.catalog.cities.values()))
        if near:
            raise NeedsClarification(
                f"I don't know '{name}'. Did you mean one of these?",
                [question[:start] + m.name + question[end:] for m in near],
            )
        raise Refused(
            f"I don't know a place called '{name}' with data in {cities}.",
            f"unknown place '{name}'",
        )

    def _merged_place_spans(self, s: _Slots) -> list[tuple[str, int, int]]:
        """PLACE spans, with two neighbours joined when together they are one exact name."""
        phase_starts = [a for _, a, _ in s.all("PHASE")]
        spans = [  # a name right before a PHASE span is part of it ('Niehler' 'Str. left-turn')
            (t, a, b)
            for t, a, b in s.all("PLACE")
            if not any(p >= b and not s.question[b:p].strip() for p in phase_starts)
        ]
        out: list[tuple[str, int, int]] = []
        i = 0
        while i < len(spans):
            text, a, b = spans[i]
            if i + 1 < len(spans):
                _, a2, b2 = spans[i + 1]
                joined = s.question[a:b2]
                gap = s.question[b:a2]
                if len(gap.split()) <= 2 and any(
                    m.score == 100 and m.kind in ("sensor", "intersection")
                    for m in self.catalog.gazetteer.lookup(joined)
                ):
                    out.append((joined, a, b2))
                    i += 2
                    continue
            out.append((text, a, b))
            i += 1
        return out

    def _resolve(
        self,
        question: str,
        text: str,
        start: int,
        end: int,
        kinds: Sequence[str],
        sensor_kind: str | None,
        levels: Sequence[str] = (),
    ) -> Place | None:
        gaz = self.catalog.gazetteer
        clean = text.strip(" ,.?!;:'\"")
        clean = re.sub(r"^(the|a|in|at|on|for|and|or|with)\s+", "", clean, flags=re.I)
        clean = re.sub(r"\s+(and|or|with|vs\.?|versus|compared)$", "", clean, flags=re.I)
        clean = re.sub(
            r"\s+(station|district|sub-?district|junction|intersection)$", "", clean, flags=re.I
        )
        matches = [m for m in gaz.lookup(clean, limit=20) if m.kind in kinds]
        if levels:
            matches = [m for m in matches if m.kind != "zone" or m.level in levels] or matches
        if sensor_kind:
            matches = [
                m for m in matches
                if m.kind != "sensor" or self.catalog.sensors[m.id].kind == sensor_kind
            ]  # fmt: skip
        if not matches:
            return None
        best = matches[0].score
        readings = [m for m in matches if m.score == best]
        after, before = question[end:].lower(), question[:start].lower()
        hinted = [m for m in readings if self._hinted(m, before, after)]
        if hinted:
            readings = hinted
        if len({(m.kind, m.id) for m in readings}) > 1:
            readings = self._choose(question, clean, start, end, readings, sensor_kind)
        m = readings[0]
        return Place(m.kind, m.id, m.name, m.city_id, m.level)

    @staticmethod
    def _hinted(m: Match, before: str, after: str) -> bool:
        key = f"zone:{m.level}" if m.kind == "zone" else m.kind
        pattern = KIND_WORDS.get(key)
        if pattern is None:
            return False
        return bool(pattern.search(after[:30]) or pattern.search(before[-30:]))

    def _choose(
        self,
        question: str,
        name: str,
        start: int,
        end: int,
        readings: list[Match],
        sensor_kind: str | None,
    ) -> list[Match]:
        """Several readings of one name: the natural one if they select the same data, else ask."""
        scopes = {
            (m.kind, m.id): frozenset(self.catalog.sensors_in(m.kind, m.id, sensor_kind))
            for m in readings
        }
        if len(set(scopes.values())) == 1:
            return readings  # same data either way; lookup order is the natural reading
        described = [_reading_label(m) for m in readings]
        options = [question[:start] + label + question[end:] for label in described]
        raise NeedsClarification(
            f"'{name}' can mean {', '.join(described[:-1])} or {described[-1]}, and they cover "
            "different sensors. Which one do you mean?",
            options,
        )

    def _time(self, s: _Slots, as_of: datetime, tz: str) -> TimeRange | None:
        """The time the question names (None: it names none, the caller's default applies).

        Words the model marked as a time that no rule reads, with no other time in the
        question, get a clarification: answering them as "now" would answer another question.
        """
        text = s.text("TIME")
        if text:
            try:
                return resolve_time(text, as_of, tz)
            except TimeExpressionError:
                pass
        masked = s.question
        for _, a, b in s.all("PLACE"):
            masked = masked[:a] + " " * (b - a) + masked[b:]
        found = extract_time(masked, as_of, tz)
        if found is None and text:
            _, start, end = s.all("TIME")[0]
            options = [s.question[:start] + alt + s.question[end:] for alt in UNREAD_TIME_OPTIONS]
            raise NeedsClarification(
                f"I cannot read '{text}' as a time. Which time do you mean, for example "
                "'now', 'yesterday', 'at 18:00' or 'in the last 2 hours'?",
                options,
            )
        return found

    def _city_for(self, places: list[Place], sensor_kind: str) -> str:
        cities = {p.city_id for p in places}
        if len(cities) == 1:
            return cities.pop()
        if len(cities) > 1:
            raise NeedsClarification(
                "The places you name are in different cities; ask about one city at a time.",
                sorted(self.catalog.cities[c]["name"] for c in cities),
            )
        candidates = self.catalog.cities_with(sensor_kind)
        if len(candidates) == 1:
            return candidates[0]
        raise NeedsClarification(
            "Which city do you mean?", [self.catalog.cities[c]["name"] for c in candidates]
        )

    # --- window questions ----------------------------------------------------------------------

    def _metric(self, s: _Slots, default: str | None = None) -> str:
        for text in (s.text("METRIC"), s.text("ORDER"), s.question):
            if not text:
                continue
            metric = lexicon.lookup(lexicon.ORDER_METRIC, text) if text is s.text("ORDER") else None
            metric = metric or lexicon.lookup(lexicon.METRIC, text)
            if metric:
                return str(metric)
        if default:
            return default
        raise NeedsClarification(
            "Which measurement do you mean?",
            ["average speed", "vehicle count", "congestion index", "PM2.5", "AQI"],
        )

    def _window_base(
        self, s: _Slots, as_of: datetime, metric: str
    ) -> tuple[list[Place], Scope, str, TimeRange | None, str]:
        sensor_kind = "air_quality" if metric in AIR_METRICS else "traffic"
        kinds = ("city", "zone", "sensor") if sensor_kind == "air_quality" else (
            "city", "zone", "sensor", "intersection", "street")  # fmt: skip
        places = self._places(s, kinds, sensor_kind)
        city = self._city_for(places, sensor_kind)
        tz = self.catalog.timezone(city)
        scope = _scope(places, city)
        when = self._time(s, as_of, tz) or TimeRange(as_of, as_of, RangeKind.LATEST, "now")
        return places, scope, city, when, tz

    def _aggregate(self, s: _Slots, as_of: datetime) -> Understood:
        metric = self._metric(s)
        places, scope, _, when, tz = self._window_base(s, as_of, metric)
        agg = _aggregation(s, metric)
        groups = list(_groups(s))
        if len(scope.ids) > 1 and not groups:
            groups.append(_scope_group(scope.kind))
        if scope.kind is ScopeKind.SENSOR and len(scope.ids) == 1 and not groups:
            if when is not None and when.kind in (RangeKind.LATEST, RangeKind.AT):
                agg = Aggregation.VALUE
        plan = QueryPlan(metric, scope, when, tz, agg, tuple(groups))
        return Understood("aggregate", plan=plan, places=places, time=when, timezone=tz)

    def _rank(self, s: _Slots, as_of: datetime) -> Understood:
        metric = self._metric(s)
        places, scope, _, when, tz = self._window_base(s, as_of, metric)
        entity = _entity(s, metric)
        order_text = s.text("ORDER") or "most"
        order = _order(order_text, metric)
        agg = _aggregation(s, metric, ranking=True)
        plan = QueryPlan(
            metric, scope, when, tz, agg, (entity,), order, _limit(s, default=_default_limit(s))
        )
        return Understood("rank", plan=plan, places=places, time=when, timezone=tz)

    def _top_reading(self, s: _Slots, as_of: datetime) -> Understood:
        metric = self._metric(s)
        places, scope, _, when, tz = self._window_base(s, as_of, metric)
        order = _order(s.text("ORDER") or "highest", metric)
        plan = QueryPlan(metric, scope, when, tz, Aggregation.VALUE, (), order, _limit(s, 1))
        return Understood("top_reading", plan=plan, places=places, time=when, timezone=tz)

    def _condition(self, s: _Slots, metric: str) -> Condition:
        text = s.text("CMP")
        if not text:
            raise NeedsClarification(
                "Above or below which value?", ["above 100", "above 200", "below 20"]
            )
        value = lexicon.number(text)
        op = lexicon.lookup(lexicon.COMPARE, text)
        if op is None:  # "above AQI 300": the comparison word sits before the metric
            cmp_start = s.all("CMP")[0][1]
            op = lexicon.lookup(lexicon.COMPARE, s.question[max(0, cmp_start - 40) : cmp_start])
        if value is None or op is None:
            raise NeedsClarification(
                f"I could not read the threshold '{text}'. Above or below which value?",
                ["above 100", "below 20"],
            )
        return Condition(metric, str(op), value)

    def _which_exceed(self, s: _Slots, as_of: datetime) -> Understood:
        metric = self._metric(s)
        places, scope, _, when, tz = self._window_base(s, as_of, metric)
        cond = self._condition(s, metric)
        entity = _entity(s, metric)
        plan = QueryPlan(
            metric, scope, when, tz, Aggregation.VALUE, (entity,), conditions=(cond,), distinct=True
        )
        return Understood("which_exceed", plan=plan, places=places, time=when, timezone=tz)

    def _count_exceed(self, s: _Slots, as_of: datetime) -> Understood:
        metric = self._metric(s)
        places, scope, _, when, tz = self._window_base(s, as_of, metric)
        cond = self._condition(s, metric)
        plan = QueryPlan(metric, scope, when, tz, Aggregation.COUNT, conditions=(cond,))
        return Understood("count_exceed", plan=plan, places=places, time=when, timezone=tz)

    # --- lookups: zones, alerts, phases --------------------------------------------------------

    def _gazetteer(self, s: _Slots, as_of: datetime) -> Understood:
        from cityos.nlq import lookups

        group = s.text("GROUP") or ""
        entity = lexicon.lookup(lexicon.ENTITY, group) if group else None
        levels: tuple[str, ...] = ()
        if entity == "district" and not _plural(group):  # "which district is X in": X is below
            levels = ("subdistrict", "special")
        elif entity == "subdistrict":  # "the sub-districts of X": X has sub-districts
            levels = ("district",)
        places = self._places(
            s, ("city", "zone", "sensor", "intersection", "street"), levels=levels
        )
        counting = bool(re.search(r"\bhow many\b|\bnumber of\b|\bcount\b", s.question, re.I))
        metric = s.text("METRIC") or s.question
        if re.search(r"\b(area|size|big|large|km)\b", metric, re.I) and places:
            return Understood("gazetteer", lookup=lookups.zone_area(places), places=places)
        if not places:
            raise NeedsClarification("Which place do you mean?", _example_places(self.catalog))
        place = places[0]
        if entity in ("district", "subdistrict") and place.kind == "zone":
            zone = self.catalog.zones[place.id]
            if zone.parent_zone_id and entity == "district" and not _plural(group):
                return Understood("gazetteer", lookup=lookups.zone_parent(place), places=places)
            level = "subdistrict" if entity == "subdistrict" or zone.level == "district" else entity
            return Understood(
                "gazetteer", lookup=lookups.zone_children(place, level, counting), places=places
            )
        if entity in ("district", "subdistrict") and place.kind == "city":
            return Understood(
                "gazetteer", lookup=lookups.city_zones(place, entity, counting), places=places
            )
        if entity in ("sensor", "intersection"):
            return Understood(
                "gazetteer",
                lookup=lookups.points_in(self.catalog, place, entity, group, counting),
                places=places,
            )
        return Understood("gazetteer", lookup=lookups.where_is(place), places=places)

    def _alerts(self, s: _Slots, as_of: datetime) -> Understood:
        from cityos.nlq import lookups

        places = self._places(s, ("city", "zone", "sensor", "intersection", "street"))
        statuses = _alert_statuses(s)
        severity = lexicon.lookup(lexicon.SEVERITY, s.text("SEVERITY") or "")
        kind = lexicon.lookup(lexicon.ALERT_KIND, s.text("KIND") or "")
        alert_ids = s.alert_ids()
        group = s.text("GROUP") or ""
        by = lexicon.lookup(lexicon.ALERT_GROUP, s.question) if re.search(
            r"\b(each|per|by|every)\b", s.question, re.I) else None  # fmt: skip
        entity = lexicon.lookup(lexicon.ENTITY, group) if group else None
        counting = bool(re.search(r"\bhow many\b|\bnumber of\b|\bcount\b", s.question, re.I))
        query = lookups.alerts(
            self.catalog,
            places=places,
            statuses=statuses,
            severity=str(severity) if severity else None,
            kind=str(kind) if kind else None,
            alert_ids=alert_ids,
            group_by=str(by) if by else None,
            entity=str(entity) if entity in POINT_ENTITIES else None,
            counting=counting,
        )  # fmt: skip
        return Understood("alerts", lookup=query, places=places)

    def _intersection(self, s: _Slots, places: list[Place]) -> Place:
        inters = [p for p in places if p.kind == "intersection"]
        if inters:
            return inters[0]
        streets = [p.name for p in places if p.kind == "street"]
        phase_street = _street_in(self.catalog, s.phase_text())
        if phase_street and phase_street not in streets:
            streets.insert(0, phase_street)
        if streets:
            found = self.catalog.intersections_on(*streets)
            if len(found) == 1:
                row = self.catalog.intersections[found[0]]
                return Place("intersection", found[0], row["name"], row["city_id"])
            if found:
                raise NeedsClarification(
                    "Which intersection do you mean?",
                    [self.catalog.intersections[i]["name"] for i in found],
                )
        raise NeedsClarification(
            "Which intersection do you mean?",
            sorted(r["name"] for r in self.catalog.intersections.values())[:8],
        )

    def _phase(self, s: _Slots, inter: Place, places: list[Place]) -> Phase:
        phases = self.catalog.phases(inter.id)
        if not phases:
            raise Refused(f"{inter.name} has no signal plan on record.", "no signal phases")
        text = s.phase_text()
        m = re.search(r"phase\s*#?\s*(\d+)|(\d+)(?:st|nd|rd|th)? phase", text, re.I)
        if m:
            index = int(m.group(1) or m.group(2))
            chosen = [p for p in phases if p.phase_index == index]
            if not chosen:
                raise Refused(
                    f"{inter.name} has no phase {index}; its phases are "
                    f"{', '.join(str(p.phase_index) for p in phases)}.",
                    f"phase {index} does not exist at {inter.name}",
                )
            return chosen[0]
        street = _street_in(self.catalog, text)
        if street is None:
            others = [p.name for p in places if p.kind == "street"]
            street = others[0] if others else None
        movement = lexicon.lookup(lexicon.MOVEMENT, text) or "through"
        scored = []
        for p in phases:
            parts = [part.strip() for part in p.description.split("+")]
            score = 0
            for part in parts:
                if street and fold(part).startswith(fold(street)):
                    score = max(score, 2 + (part.endswith(str(movement))))
            scored.append((score, -len(parts), p))
        scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
        if scored[0][0] == 0 or (len(scored) > 1 and scored[0][:2] == scored[1][:2]):
            raise NeedsClarification(
                f"Which phase at {inter.name} do you mean?",
                [f"phase {p.phase_index}: {p.description}" for p in phases],
            )
        return scored[0][2]

    def _phases(self, s: _Slots, as_of: datetime) -> Understood:
        from cityos.nlq import lookups

        places = self._places(s, ("intersection", "street"))
        attribute = str(lexicon.lookup(lexicon.PHASE_ATTRIBUTE, s.text("METRIC") or s.question))
        if re.search(r"\bcycle\b", s.question, re.I):
            attribute = "cycle"
        if not places and s.text("ORDER"):
            order = _order(s.text("ORDER") or "longest", "green")
            return Understood("phases", lookup=lookups.phase_rank(order))
        inter = self._intersection(s, places)
        places = [inter]
        if attribute == "cycle":
            return Understood("phases", lookup=lookups.cycle(inter), places=places)
        if re.search(r"\bhow many\b", s.question, re.I):
            return Understood("phases", lookup=lookups.phase_count(inter), places=places)
        if s.text("PHASE"):
            phase = self._phase(s, inter, places)
            return Understood(
                "phases", lookup=lookups.phase_value(inter, phase, attribute), places=places
            )
        return Understood("phases", lookup=lookups.phase_list(inter), places=places)

    # --- actions -------------------------------------------------------------------------------

    def _set_green(self, s: _Slots, as_of: datetime) -> Understood:
        places = self._places(s, ("intersection", "street"))
        inter = self._intersection(s, places)
        phase = self._phase(s, inter, places)
        green_text = s.text("GREEN") or ""
        value = lexicon.number(green_text)
        if value is None:
            raise NeedsClarification(
                f"How many seconds of green should phase {phase.phase_index} at {inter.name} "
                f"get? It has {phase.green_s:g} s now.",
                [
                    f"set it to {phase.green_s + 5:g} s",
                    f"set it to {max(0, phase.green_s - 5):g} s",
                ],
            )
        sign = _relative_sign(green_text, s.question)
        new = phase.green_s + sign * value if sign else value
        draft = ActionDraft(
            kind="signal_timing",
            target={"intersection_id": inter.id},
            params={"phase_index": phase.phase_index, "green_s": float(new)},
            summary=(
                f"phase {phase.phase_index} ({phase.description}) at {inter.name}: "
                f"{phase.green_s:g} s -> {new:g} s of green"
            ),
            question=s.question,
        )
        return Understood("set_green", action=draft, places=[inter])

    def _alert_op(self, s: _Slots, as_of: datetime) -> Understood:
        op_text = s.text("OP") or s.question
        operation = str(lexicon.lookup(lexicon.ALERT_OP, op_text) or "")
        if not operation:
            raise NeedsClarification(
                "Acknowledge, resolve or raise the alert?", ["acknowledge", "resolve", "raise"]
            )
        places = self._places(s, ("city", "zone", "sensor", "intersection", "street"))
        if operation == "raise":
            return self._raise_alert(s, places)
        ids = s.alert_ids()
        if ids:
            target = ids[0]
        else:
            target = self._find_alert(s, places, operation)
        draft = ActionDraft(
            kind="alert",
            target={"alert_id": target},
            params={"operation": operation},
            summary=f"{operation} alert {target}",
            question=s.question,
        )
        return Understood("alert_op", action=draft, places=places)

    def _find_alert(self, s: _Slots, places: list[Place], operation: str) -> str:
        statuses = ("firing",) if operation == "acknowledge" else ("firing", "acknowledged")
        candidates = self.catalog.alerts(statuses)
        kind = lexicon.lookup(lexicon.ALERT_KIND, (s.text("KIND") or "") + " " + s.question)
        metric = s.text("METRIC")
        scoped = []
        for a in candidates:
            if places and not any(_alert_in(self.catalog, a, p) for p in places):
                continue
            scoped.append(a)
        if len(scoped) > 1 and metric:
            wanted = lexicon.lookup(lexicon.METRIC, metric)
            narrowed = [a for a in scoped if a["metric"] == wanted]
            scoped = narrowed or scoped
        if len(scoped) > 1 and kind:
            narrowed = [a for a in scoped if a["kind"] == kind]
            scoped = narrowed or scoped
        if len(scoped) == 1:
            return str(scoped[0]["alert_id"])
        if not scoped:
            where = f" for {places[0].label}" if places else ""
            raise Refused(
                f"I found no {' or '.join(statuses)} alert{where} to {operation}.",
                "no matching alert",
            )
        raise NeedsClarification(
            f"Several alerts match; which one should I {operation}?",
            [f"{operation} {a['alert_id']} ({a['message']})" for a in scoped[:6]],
        )

    def _raise_alert(self, s: _Slots, places: list[Place]) -> Understood:
        zones = [p for p in places if p.kind in ("zone", "city")]
        if not zones:
            raise NeedsClarification("For which zone should I raise the alert?", [])
        severity = lexicon.lookup(lexicon.SEVERITY, s.text("SEVERITY") or "") or "warning"
        m = re.search(r"(?::|saying|about|that)\s*(.+)$", s.question)
        message = (m.group(1) if m else s.question).strip()[:200]
        target = {"zone_id": zones[0].id} if zones[0].kind == "zone" else {"zone_id": ""}
        draft = ActionDraft(
            kind="alert",
            target=target,
            params={"operation": "raise", "severity": severity, "message": message},
            summary=f"raise a {severity} alert for {zones[0].label}: {message}",
            question=s.question,
        )
        return Understood("alert_op", action=draft, places=zones)


# --- helpers ---------------------------------------------------------------------------------


def _reading_label(m: Match) -> str:
    if m.kind == "zone":
        level = (m.level or "zone").replace("subdistrict", "sub-district")
        return f"the {m.name} {level}"
    if m.kind == "sensor":
        return f"the {m.name} station"
    return f"the {m.name} {m.kind}"


def _scope(places: list[Place], city: str) -> Scope:
    if not places:
        return Scope(ScopeKind.CITY, (city,))
    kinds = {p.kind for p in places}
    kind = places[0].kind if len(kinds) == 1 else places[0].kind
    chosen = [p for p in places if p.kind == kind]
    scope_kind = {
        "city": ScopeKind.CITY,
        "zone": ScopeKind.ZONE_TREE,
        "sensor": ScopeKind.SENSOR,
        "intersection": ScopeKind.INTERSECTION,
        "street": ScopeKind.STREET,
    }[kind]
    return Scope(scope_kind, tuple(p.id for p in chosen))


def _scope_group(kind: ScopeKind) -> GroupBy:
    return {
        ScopeKind.ZONE_TREE: GroupBy.ZONE,
        ScopeKind.ZONE: GroupBy.ZONE,
        ScopeKind.SENSOR: GroupBy.SENSOR,
        ScopeKind.INTERSECTION: GroupBy.INTERSECTION,
        ScopeKind.STREET: GroupBy.STREET,
        ScopeKind.CITY: GroupBy.ZONE,
    }[kind]


def _aggregation(s: _Slots, metric: str, ranking: bool = False) -> Aggregation | None:
    text = s.text("AGG")
    if text:
        agg = lexicon.lookup(lexicon.AGGREGATION, text)
        if isinstance(agg, Aggregation):
            if ranking and agg in (Aggregation.MAX, Aggregation.MIN):
                return None  # "the highest average": the order, not the aggregate
            return agg
    if re.search(r"\bhow many\b", s.question, re.I) and metric == "vehicle_count":
        return Aggregation.SUM
    return None


def _groups(s: _Slots) -> list[GroupBy]:
    out = []
    for text, _, _ in s.all("GROUP"):
        g = lexicon.lookup(lexicon.GROUP, text)
        if isinstance(g, GroupBy) and g not in out:
            out.append(g)
    if not out:
        for m in GROUP_WORDS.finditer(s.question):
            g = lexicon.lookup(lexicon.GROUP, m.group("what") or m.group("adverb"))
            if isinstance(g, GroupBy) and g not in out:
                out.append(g)
    return out


def _entity(s: _Slots, metric: str) -> GroupBy:
    for text, _, _ in s.all("GROUP"):
        g = lexicon.lookup(lexicon.GROUP, text)
        if isinstance(g, GroupBy) and g not in (GroupBy.HOUR, GroupBy.DAY):
            return g
    return GroupBy.SENSOR


def _plural(text: str) -> bool:
    return bool(re.search(r"s\b", text.strip().lower())) and not text.strip().lower().endswith("ss")


def _default_limit(s: _Slots) -> int:
    group = s.text("GROUP") or ""
    return 5 if _plural(group) else 1


def _limit(s: _Slots, default: int | None) -> int | None:
    text = s.text("LIMIT")
    if text:
        n = lexicon.number(text)
        if n is not None and n >= 1:
            return int(n)
    return default


def _order(text: str, metric: str) -> Order:
    order = lexicon.lookup(lexicon.ORDER, text)
    return order if isinstance(order, Order) else Order.DESC


def _alert_statuses(s: _Slots) -> tuple[str, ...] | None:
    text = s.text("STATUS")
    if not text:
        return None
    found = lexicon.lookup(lexicon.ALERT_STATUS, text)
    return tuple(found) if isinstance(found, tuple) else None


def _relative_sign(green_text: str, question: str) -> int:
    low = green_text.lower()
    if re.search(r"\b(more|extra|additional|longer)\b", low):
        return 1
    if re.search(r"\b(less|fewer|shorter)\b", low):
        return -1
    if re.search(r"\bby\b", low):
        if re.search(r"\b(shorten|cut|reduce|decrease|trim|lower)\b", question, re.I):
            return -1
        return 1
    if re.search(r"\b(add|another)\b", question, re.I) and not re.search(r"\bto\b", low):
        return 1
    return 0


def _street_in(catalog: Catalog, text: str) -> str | None:
    """The street a phase description names ('the Niehler Str. left-turn phase')."""
    if not text:
        return None
    folded = fold(text)
    streets = {s.road_name for s in catalog.sensors.values() if s.road_name}
    for row in catalog.intersections.values():
        streets.update(p.strip() for p in str(row["name"]).split("/"))
    best = None
    for street in streets:
        key = fold(street)
        if key and key in folded and (best is None or len(key) > len(fold(best))):
            best = street
    return best


def _alert_in(catalog: Catalog, alert: dict[str, object], place: Place) -> bool:
    if place.kind == "city":
        return alert["city_id"] == place.id
    if place.kind == "zone":
        tree = catalog.zone_tree(place.id)
        zone = alert.get("zone_id")
        if zone in tree:
            return True
        sensor = catalog.sensors.get(str(alert.get("sensor_id") or ""))
        return bool(sensor and sensor.zone_id in tree)
    if place.kind == "sensor":
        return alert.get("sensor_id") == place.id
    if place.kind == "intersection":
        return alert.get("intersection_id") == place.id
    if place.kind == "street":
        sensor = catalog.sensors.get(str(alert.get("sensor_id") or ""))
        return bool(sensor and sensor.road_name == place.id)
    return False


def _example_places(catalog: Catalog) -> list[str]:
    districts = [z.name for z in catalog.zones.values() if z.level == "district"]
    return sorted(districts)[:6]
