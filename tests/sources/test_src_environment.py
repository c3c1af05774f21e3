"""The documented dispersion and noise models."""

from __future__ import annotations

import pytest

from cityos.streaming.sources import environment as env


def test_no_traffic_means_background():
    conc = env.concentrations({"nox": 0.0, "pmx": 0.0, "co": 0.0})
    assert conc["no2"] == env.BACKGROUND_UG_M3["no2"] and conc["co"] == env.BACKGROUND_UG_M3["co"]
    assert conc["o3"] is None and conc["so2"] is None
    assert env.noise_at_station([(0.0, 10.0)]) == pytest.approx(env.BACKGROUND_DBA)


def test_box_model_increment():
    # 40 mg/s into a 2 m/s wind through a 10 m x 200 m box = 10 µg/m³
    assert env.increment(40.0) == pytest.approx(
        40_000 / (env.WIND_MS * env.MIXING_HEIGHT_M * 2 * env.RADIUS_M)
    )
    more = env.concentrations({"nox": 80.0, "pmx": 1.0, "co": 100.0})
    assert more["no2"] > env.BACKGROUND_UG_M3["no2"] and more["pm10"] > more["pm25"]


def test_noise_is_attenuated_with_distance_and_adds_energetically():
    near = env.noise_at_station([(75.0, 7.5)])
    far = env.noise_at_station([(75.0, 75.0)])
    assert near == pytest.approx(75.0, abs=0.1) and far == pytest.approx(65.0, abs=0.5)
    assert env.noise_at_station([(75.0, 7.5), (75.0, 7.5)]) == pytest.approx(near + 3.0, abs=0.1)
