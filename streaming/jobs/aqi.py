"""Air quality index from hourly mean concentrations, one function for every standard.

The breakpoint tables are data (``cityos/data/aqi_breakpoints.csv``): per standard and pollutant,
piecewise-linear segments ``[c_lo, c_hi] -> [i_lo, i_hi]`` in the unit the standard publishes,
plus the category name of each index range. Inputs are µg/m³ for every pollutant (CO included, as
the serving contract says); :data:`MICROGRAMS_PER_UNIT` converts them to the table's unit.

One rule covers both standards: a concentration uses the first segment (by ``c_hi``) whose
``c_hi`` it does not exceed; a value inside a gap between two published ranges (US EPA ranges are
discrete: 9.0 then 9.1) takes the lower index of the next range; above the last segment the index is
that segment's ``i_hi`` (500). The AQI is the maximum sub-index, rounded per standard, and the
category is the one of the first index range the AQI does not exceed.

* ``china_hj633`` (HJ 633-2012, as China's real-time hourly release and the NLQ fixture do): PM2.5
  and PM10 use the 24-hour limits applied to the hourly value; SO2 above 800 µg/m³ continues on the
  24-hour SO2 table; CO in mg/m³; AQI rounded up.
* ``us_epa`` (EPA AQI technical assistance document, PM2.5 breakpoints of the 2024 revision):
  hourly means are applied to the 24-hour (PM), 8-hour (O3, CO) and 1-hour (SO2, NO2) tables, as
  there is no NowCast over a single hour; SO2 at or above 305 ppb and O3 above 0.200 ppm take the
  tables EPA prescribes for those ranges (24-hour SO2, 1-hour O3, whose 301-500 range starts at
  0.405 ppm: hourly O3 between 0.201 and 0.404 ppm reads 301). Concentrations are truncated to the
  table's decimals (``decimals`` column) as EPA does; the AQI is rounded half up. Gases are
  converted at 25 °C and 1 atm: ppb = µg/m³ × 24.45 / molar mass (NO2 46.0055, O3 47.9982,
  SO2 64.066, CO 28.010 g/mol); ppm = ppb / 1000.
* ``eu_eaqi`` (European Environment Agency's European Air Quality Index, the bands it published
  for 2017-2023): the index is the band level 1 (Good) .. 6 (Extremely poor) of the worst of PM2.5,
  PM10, NO2, O3 and SO2, each hourly mean in µg/m³ (CO is not rated). Each band is a segment
  whose index is constant, so the same rule applies.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

POLLUTANTS = ("pm25", "pm10", "no2", "o3", "so2", "co")

MOLAR_VOLUME_L = 24.45  # litres per mole of an ideal gas at 25 °C, 1 atm
MOLAR_MASS = {"no2": 46.0055, "o3": 47.9982, "so2": 64.066, "co": 28.010}


def _per_ppb(pollutant: str) -> float:
    return MOLAR_MASS[pollutant] / MOLAR_VOLUME_L


# µg/m³ in one unit of each table unit, per pollutant
MICROGRAMS_PER_UNIT: dict[str, Callable[[str], float]] = {
    "ug/m3": lambda _p: 1.0,
    "mg/m3": lambda _p: 1000.0,
    "ppb": _per_ppb,
    "ppm": lambda p: 1000.0 * _per_ppb(p),
}


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


# how each standard turns the maximum sub-index into the published integer
ROUNDING: dict[str, Callable[[float], int]] = {
    "china_hj633": math.ceil,
    "us_epa": _round_half_up,
    "eu_eaqi": round,  # a band level 1..6, constant over each band
}


@dataclass(frozen=True)
class Segment:
    unit: str
    decimals: int | None
    c_lo: float
    c_hi: float
    i_lo: float
    i_hi: float
    category: str


@cache
def breakpoints() -> dict[tuple[str, str], tuple[Segment, ...]]:
    """(standard, pollutant) -> segments ordered by concentration, read once from the CSV."""
    text = (resources.files("cityos") / "data" / "aqi_breakpoints.csv").read_text(encoding="utf-8")
    table: dict[tuple[str, str], list[Segment]] = {}
    for row in csv.DictReader(text.splitlines()):
        segment = Segment(
            unit=row["unit"],
            decimals=int(row["decimals"]) if row["decimals"] else None,
            c_lo=float(row["c_lo"]),
            c_hi=float(row["c_hi"]),
            i_lo=float(row["i_lo"]),
            i_hi=float(row["i_hi"]),
            category=row["category"],
        )
        table.setdefault((row["standard"], row["pollutant"]), []).append(segment)
    return {key: tuple(sorted(segs, key=lambda s: s.c_hi)) for key, segs in table.items()}


@cache
def categories(standard: str) -> tuple[tuple[float, str], ...]:
    """(upper index, category) of a standard, ascending."""
    found = {
        (s.i_hi, s.category)
        for (std, _), segs in breakpoints().items()
        if std == standard
        for s in segs
    }
    return tuple(sorted(found))


def standards() -> frozenset[str]:
    return frozenset(std for std, _ in breakpoints())


def _truncate(value: float, decimals: int | None) -> float:
    if decimals is None:
        return value
    scale = 10**decimals
    return math.floor(round(value * scale, 6)) / scale


def sub_index(standard: str, pollutant: str, ugm3: float) -> float | None:
    """Index of one pollutant (unrounded), or None if the standard does not rate it."""
    segments = breakpoints().get((standard, pollutant))
    if not segments:
        return None
    first = segments[0]
    c = _truncate(ugm3 / MICROGRAMS_PER_UNIT[first.unit](pollutant), first.decimals)
    for seg in segments:
        if c <= seg.c_hi:
            return seg.i_lo + (seg.i_hi - seg.i_lo) * max(c - seg.c_lo, 0.0) / (seg.c_hi - seg.c_lo)
    return segments[-1].i_hi


def aqi(standard: str, concentrations: Mapping[str, float | None]) -> tuple[int | None, str | None]:
    """(AQI, category) of hourly means in µg/m³; (None, None) when nothing rateable was measured.

    An unknown standard also gives (None, None): the serving row then says "not computed" rather
    than an index under a standard the city does not use.
    """
    if standard not in ROUNDING:
        return None, None
    subs = [
        s
        for pollutant, value in concentrations.items()
        if value is not None and (s := sub_index(standard, pollutant, value)) is not None
    ]
    if not subs:
        return None, None
    index = ROUNDING[standard](round(max(subs), 6))
    top = categories(standard)
    index = min(index, int(top[-1][0]))
    category = next(name for upper, name in top if index <= upper)
    return index, category
