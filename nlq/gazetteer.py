"""Place names of the loaded cities -> ids, accent-, case- and spelling-tolerant, with ambiguity.

Names come from the serving tables (cities, zones, sensors, intersections) plus the street
names carried by sensors.road_name and by intersection names ("A / B"). ``lookup`` never
chooses between readings: a name that is a district and a sub-district, or a district and a
station, comes back once per reading with its kind and level, so the caller can prefer the
larger zone or ask the operator. ``ZONE_LEVEL_RANK`` is the order "most natural first".
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz, process

log = logging.getLogger(__name__)

Row = Mapping[str, Any]

ZONE_LEVEL_RANK = {"district": 0, "special": 1, "subdistrict": 2}
KIND_RANK = {"city": 0, "zone": 1, "intersection": 2, "street": 3, "sensor": 4}
FUZZY_CUTOFF = 85.0  # rapidfuzz ratio 0..100; below this a name is not offered at all

# Spelling variants folded before comparison: (pattern, replacement) on lowercase ASCII text.
SPELLING = [
    (re.compile(r"stra(ss|ß)e\b"), "str"),
    (re.compile(r"\bstr\b\.?"), "str"),
    (re.compile(r"str\."), "str"),
    (re.compile(r"[-/'.,()]"), " "),
]
GERMAN_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})


def fold(text: str) -> str:
    """Comparison key: NFKD without accents, lowercase, ß->ss, 'Straße'/'Str.' -> 'str'."""
    text = unicodedata.normalize("NFKD", text.replace("ß", "ss").replace("ẞ", "ss"))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    for pattern, repl in SPELLING:
        text = pattern.sub(repl, text)
    return " ".join(text.split())


def compact(text: str) -> str:
    """``fold`` without spaces: 'Blücher Str.' and 'Blucherstrasse' share 'blucherstr'."""
    return fold(text).replace(" ", "")


@dataclass(frozen=True)
class Match:
    """One reading of a name: what it is, its id, and how well the text matched (0..100)."""

    kind: str  # 'city' | 'zone' | 'intersection' | 'street' | 'sensor'
    id: str  # zone_id, sensor_id, ...; a street's id is its road_name
    name: str
    city_id: str
    score: float
    level: str | None = None  # zones: 'district' | 'subdistrict' | 'special'
    parent_id: str | None = None

    @property
    def rank(self) -> tuple[float, int, int]:
        """Sort key: best score, then the larger / more general reading."""
        return (-self.score, KIND_RANK[self.kind], ZONE_LEVEL_RANK.get(self.level or "", 9))


@dataclass(frozen=True)
class _Entry:
    kind: str
    id: str
    name: str
    city_id: str
    level: str | None = None
    parent_id: str | None = None


class Gazetteer:
    """All names of all loaded cities; build once per service start (a few hundred rows)."""

    def __init__(
        self,
        cities: Iterable[Row],
        zones: Iterable[Row] = (),
        sensors: Iterable[Row] = (),
        intersections: Iterable[Row] = (),
    ) -> None:
        self._aliases: dict[str, set[_Entry]] = {}
        for c in cities:
            entry = _Entry("city", c["city_id"], c["name"], c["city_id"])
            self._add(entry, c["name"], c.get("local_name"), c["city_id"])
        for z in zones:
            entry = _Entry(
                "zone",
                z["zone_id"],
                z["name"],
                z["city_id"],
                z["level"],
                z.get("parent_zone_id") or None,
            )
            self._add(entry, z["name"], z.get("local_name"))
        for i in intersections:
            entry = _Entry("intersection", i["intersection_id"], i["name"], i["city_id"])
            parts = [p.strip() for p in i["name"].split("/")]
            self._add(entry, i["name"], " / ".join(reversed(parts)))
            for street in parts:
                self._add(_Entry("street", street, street, i["city_id"]), street)
        for s in sensors:
            self._add(_Entry("sensor", s["sensor_id"], s["name"], s["city_id"]), s["name"])
            if s.get("road_name"):
                road = s["road_name"]
                self._add(_Entry("street", road, road, s["city_id"]), road)
        self._keys = list(self._aliases)
        log.info("gazetteer: %d names", len(self._keys))

    def _add(self, entry: _Entry, *names: str | None) -> None:
        for name in names:
            if not name:
                continue
            for variant in {name, name.translate(GERMAN_UMLAUTS)}:
                key = compact(variant)
                if key:
                    self._aliases.setdefault(key, set()).add(entry)

    @classmethod
    def from_connection(cls, conn: Any) -> Gazetteer:
        """Read the names from the serving tables over a psycopg 3 connection."""
        from psycopg.rows import dict_row

        def rows(sql: str) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(sql)
                return list(cur.fetchall())

        return cls(
            rows("SELECT city_id, name, local_name FROM cities"),
            rows("SELECT zone_id, city_id, name, local_name, level, parent_zone_id FROM zones"),
            rows("SELECT sensor_id, city_id, name, road_name FROM sensors"),
            rows("SELECT intersection_id, city_id, name FROM intersections"),
        )

    def lookup(
        self,
        text: str,
        *,
        kinds: Iterable[str] | None = None,
        city_id: str | None = None,
        cutoff: float = FUZZY_CUTOFF,
        limit: int = 10,
    ) -> list[Match]:
        """Every reading of ``text``, best first; exact (folded) matches score 100.

        Fuzzy readings are offered only when no exact one exists, so 'Nippes' never drags in
        near-misses, while 'Neuser Strase' still finds 'Neusser Str.'.
        """
        key = compact(text)
        wanted = set(kinds) if kinds is not None else None
        scored: dict[_Entry, float] = {}
        if key in self._aliases:
            scored = {e: 100.0 for e in self._aliases[key]}
        else:
            for alias, score, _ in process.extract(
                key, self._keys, scorer=fuzz.ratio, score_cutoff=cutoff, limit=limit * 3
            ):
                for e in self._aliases[alias]:
                    scored[e] = max(scored.get(e, 0.0), float(score))
        matches = [
            Match(e.kind, e.id, e.name, e.city_id, round(score, 1), e.level, e.parent_id)
            for e, score in scored.items()
            if (wanted is None or e.kind in wanted) and (city_id is None or e.city_id == city_id)
        ]
        return sorted(matches, key=lambda m: (m.rank, m.id))[:limit]

    def is_ambiguous(self, matches: list[Match]) -> bool:
        """True when the best score has more than one reading (the caller must choose or ask)."""
        if not matches:
            return False
        best = matches[0].score
        return len({(m.kind, m.id) for m in matches if m.score == best}) > 1
