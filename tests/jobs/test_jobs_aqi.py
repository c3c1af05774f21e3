"""The AQI function against the NLQ fixture (HJ 633) on real Beijing rows, and EPA spot values."""

from __future__ import annotations

import pytest

from cityos.streaming.jobs.aqi import aqi, categories, sub_index
from tests.jobs.conftest import prsa_december, val

STATIONS = [
    "Aotizhongxin",
    "Changping",
    "Dingling",
    "Dongsi",
    "Guanyuan",
    "Gucheng",
    "Huairou",
    "Nongzhanguan",
    "Shunyi",
    "Tiantan",
    "Wanliu",
    "Wanshouxigong",
]


@pytest.mark.parametrize("station", STATIONS)
def test_china_aqi_matches_the_fixture_on_december_2016(station, nlq_fixture):
    rows = prsa_december(station)
    assert len(rows) == 9 * 24
    compared = 0
    for r in rows.itertuples():
        pol = {
            "pm25": val(r[6]),
            "pm10": val(r[7]),
            "so2": val(r[8]),
            "no2": val(r[9]),
            "co": val(r[10]),
            "o3": val(r[11]),
        }
        assert aqi("china_hj633", pol) == nlq_fixture.aqi_of(pol), (station, r.observed, pol)
        compared += 1
    assert compared == 216


def test_china_so2_above_800_continues_on_the_24h_table(nlq_fixture):
    for so2 in (800.0, 800.5, 1200.0, 2620.0, 3000.0):
        assert aqi("china_hj633", {"so2": so2}) == nlq_fixture.aqi_of({"so2": so2})
    assert aqi("china_hj633", {"so2": 1200.0}) == (250, "Heavily Polluted")


def test_china_caps_at_500_and_is_null_without_pollutants():
    assert aqi("china_hj633", {"pm25": 900.0}) == (500, "Severely Polluted")
    assert aqi("china_hj633", {"pm25": None, "temperature": 3.0}) == (None, None)


@pytest.mark.parametrize(
    ("pollutants", "expected"),
    [
        ({"pm25": 9.0}, (50, "Good")),  # top of the 2024 'Good' range
        ({"pm25": 9.04}, (50, "Good")),  # truncated to 9.0 as EPA does
        ({"pm25": 35.4}, (100, "Moderate")),
        ({"pm25": 55.5}, (151, "Unhealthy")),
        ({"pm25": 12.0}, (56, "Moderate")),  # 51 + 49 * 2.9 / 26.3 = 56.4
        ({"pm10": 154.0}, (100, "Moderate")),
        ({"pm25": 400.0}, (500, "Hazardous")),
    ],
)
def test_us_epa_pm_breakpoints(pollutants, expected):
    assert aqi("us_epa", pollutants) == expected


def test_us_epa_converts_gases_to_ppb_and_ppm():
    # NO2 100 ppb = 100 * 46.0055 / 24.45 µg/m³ -> index 100
    assert aqi("us_epa", {"no2": 100 * 46.0055 / 24.45 + 0.01}) == (100, "Moderate")
    # CO 4.4 ppm = 4.4 * 1000 * 28.010 / 24.45 µg/m³ -> index 50
    assert sub_index("us_epa", "co", 4.4 * 1000 * 28.010 / 24.45 + 0.01) == pytest.approx(50)
    # O3 0.070 ppm (8-hour table) -> 100
    assert aqi("us_epa", {"o3": 0.0705 * 1000 * 47.9982 / 24.45}) == (100, "Moderate")


def test_unknown_standard_gives_no_index():
    assert aqi("who_2021", {"pm25": 30.0}) == (None, None)


def test_categories_are_ordered_per_standard():
    names = [name for _, name in categories("us_epa")]
    assert names == [
        "Good",
        "Moderate",
        "Unhealthy for Sensitive Groups",
        "Unhealthy",
        "Very Unhealthy",
        "Hazardous",
    ]


@pytest.mark.parametrize(
    ("pollutants", "expected"),
    [
        ({"pm25": 10.0, "no2": 40.0}, (1, "Good")),  # band upper edges are inclusive
        ({"pm25": 12.0, "no2": 35.0}, (2, "Fair")),
        ({"pm25": 4.0, "o3": 131.0}, (4, "Poor")),  # the worst pollutant decides
        ({"pm10": 1500.0}, (6, "Extremely poor")),  # above the last band stays in it
        ({"co": 3000.0}, (None, None)),  # CO is not rated by the EAQI
    ],
)
def test_eu_eaqi_is_the_band_of_the_worst_pollutant(pollutants, expected):
    assert aqi("eu_eaqi", pollutants) == expected
