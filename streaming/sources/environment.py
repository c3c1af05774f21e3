"""Modelled air quality and noise at virtual stations, from SUMO's emission and noise models.

One virtual station per signalised intersection, at the junction. Each simulated second it
reads, for every edge within ``RADIUS_M`` of the station, SUMO's emissions (HBEFA model; mg/s
on the edge in the last 1 s step) and its noise emission (Harmonoise; dB(A)). Once per period
the readings become one AirQualityObserved and one NoiseLevelObserved event.

Air — a well-mixed street box (documented, deliberately simple):

    increment [µg/m³] = mean emission [mg/s] × 1000 / (WIND_MS × MIXING_HEIGHT_M × 2·RADIUS_M)

i.e. the period's mean emission of the box's roads is diluted into the air that a light wind
carries through a box 2·R wide and H high. Reported concentration = urban background +
increment, with NO2 = background + NO2_SHARE × NOx increment (primary NO2 and fast
conversion), PM2.5 = background + exhaust PM, PM10 = background + 2 × exhaust PM (non-exhaust
wear and resuspension taken as equal to exhaust), CO = background + increment. O3 and SO2 are
not modelled (null). Backgrounds are typical German urban-background annual means.

Noise — energetic sum at the station of the edges' levels, attenuated as a line source
(−10·log10(d / 7.5 m), d ≥ 7.5 m), plus a constant urban background; LAeq is the energetic
mean of the 1 s levels over the period, LAmax their maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cityos import events

RADIUS_M = 100.0
WIND_MS = 2.0
MIXING_HEIGHT_M = 10.0
NO2_SHARE = 0.25
BACKGROUND_UG_M3 = {"no2": 22.0, "pm25": 10.0, "pm10": 16.0, "co": 250.0}
BACKGROUND_DBA = 45.0
NOISE_REF_M = 7.5
# SUMO edge emission getters per pollutant (libsumo/traci ``edge`` domain)
EMISSION_GETTERS = {"nox": "getNOxEmission", "pmx": "getPMxEmission", "co": "getCOEmission"}


@dataclass
class Station:
    """A virtual station and the edges (with their distance, m) that it sees."""

    sensor_id: str
    name: str
    lon: float
    lat: float
    edges: list[tuple[str, float]]
    _sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(EMISSION_GETTERS, 0.0))
    _energy: float = 0.0
    _lmax: float = 0.0
    _steps: int = 0

    def sample(self, edge_api: Any) -> None:
        """Read one simulation step's emissions and noise of the station's edges."""
        for pollutant, getter in EMISSION_GETTERS.items():
            read = getattr(edge_api, getter)
            self._sums[pollutant] += sum(read(e) for e, _ in self.edges)
        level = noise_at_station((edge_api.getNoiseEmission(e), d) for e, d in self.edges)
        self._energy += 10 ** (level / 10)
        self._lmax = max(self._lmax, level)
        self._steps += 1

    def emit(self, start: datetime, end: datetime) -> list[events.Event]:
        """The period's two events; resets the accumulators."""
        if not self._steps:
            return []
        mean = {p: s / self._steps for p, s in self._sums.items()}
        conc = concentrations(mean)
        laeq = 10 * math.log10(self._energy / self._steps)
        out = [
            events.air_quality(self.sensor_id, start, **conc),
            events.noise_level(self.sensor_id, start, end, laeq=laeq, lamax=self._lmax),
        ]
        self.reset()
        return out

    def reset(self) -> None:
        self._sums = dict.fromkeys(EMISSION_GETTERS, 0.0)
        self._energy, self._lmax, self._steps = 0.0, 0.0, 0


def increment(mean_mg_s: float) -> float:
    """Box-model concentration increment, µg/m³, of a mean emission in mg/s."""
    return mean_mg_s * 1000.0 / (WIND_MS * MIXING_HEIGHT_M * 2 * RADIUS_M)


def concentrations(mean_mg_s: dict[str, float]) -> dict[str, float | None]:
    """AirQualityObserved fields from the box's mean emissions (mg/s per pollutant)."""
    nox, pm, co = (increment(mean_mg_s[p]) for p in ("nox", "pmx", "co"))
    return {
        "no2": BACKGROUND_UG_M3["no2"] + NO2_SHARE * nox,
        "pm25": BACKGROUND_UG_M3["pm25"] + pm,
        "pm10": BACKGROUND_UG_M3["pm10"] + 2 * pm,
        "co": BACKGROUND_UG_M3["co"] + co,
        "o3": None,
        "so2": None,
    }


def noise_at_station(edge_levels: Any) -> float:
    """dB(A) at the station from (edge level dB(A), distance m) pairs plus the background."""
    energy = 10 ** (BACKGROUND_DBA / 10)
    for level, distance in edge_levels:
        if level > 0:  # SUMO reports 0 for an edge without vehicles
            attenuation = 10 * math.log10(max(distance, NOISE_REF_M) / NOISE_REF_M)
            energy += 10 ** ((level - attenuation) / 10)
    return 10 * math.log10(energy)
