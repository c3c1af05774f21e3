"""The online detector on real NAB traffic series: scores, persistence, no look-ahead, forecast."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from cityos.anomaly.detector import Detector, DetectorConfig, DetectorError, score_series
from cityos.settings import SHARED_DIR

NAB = SHARED_DIR / "data" / "nab"
DONGSI = "PRSA_Data_Dongsi_20130301-20170228.csv"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The forecaster's tiny batches run fastest (and as the streaming job runs them) on one
    thread; several threads on a shared 2-core machine only contend."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def series(name: str) -> pd.DataFrame:
    return pd.read_csv(NAB / "data" / "realTraffic" / name, parse_dates=["timestamp"])


def windows(name: str) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    raw = json.loads((NAB / "labels" / "combined_windows.json").read_text())
    return [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in raw[f"realTraffic/{name}"]]


@pytest.fixture(scope="module")
def speed_7578() -> tuple[pd.DataFrame, np.ndarray]:
    data = series("speed_7578.csv")
    return data, score_series(data["timestamp"], data["value"])


def test_labelled_speed_drops_score_high_and_normal_days_low(speed_7578) -> None:
    data, scores = speed_7578
    assert ((scores >= 0) & (scores <= 1)).all()
    inside = np.zeros(len(data), dtype=bool)
    for start, end in windows("speed_7578.csv"):
        in_window = ((data["timestamp"] >= start) & (data["timestamp"] <= end)).to_numpy()
        assert scores[in_window].max() >= 0.9, f"window {start} .. {end} missed"
        inside |= in_window
    normal = scores[200:][~inside[200:]]  # after the detector's first days
    assert (normal >= 0.9).mean() < 0.01
    assert np.median(normal) < 0.3


def test_an_injected_level_shift_is_detected_at_once() -> None:
    data = series("speed_6005.csv").iloc[:900].astype({"value": float})
    data.loc[850:, "value"] = data.loc[850:, "value"] * 0.4  # a sudden slowdown
    scores = score_series(data["timestamp"], data["value"])
    assert scores[850:853].max() >= 0.9
    assert (scores[300:850] >= 0.9).mean() < 0.01


def test_a_lasting_shift_after_bigger_spikes_is_detected() -> None:
    """Past spikes teach the spike channel that big surprises are normal; a moderate drop that
    lasts two hours is still caught, by the sustained channel (without it, it is not)."""
    data = series("speed_6005.csv").iloc[:900].astype({"value": float})
    values = data["value"].to_numpy().copy()
    values[[300, 301, 302, 420, 421, 422]] = 5.0  # two deep, short drops: spikes
    values[800:824] -= 40.0  # a lasting drop, shallower than the spikes
    with_channel = score_series(data["timestamp"], values)
    without = score_series(
        data["timestamp"], values, dataclasses.replace(DetectorConfig(), sustain_weight=0.0)
    )
    assert with_channel[800:824].max() >= 0.9
    assert without[800:824].max() < 0.5
    assert (with_channel[450:800] >= 0.9).mean() < 0.01  # and no more alerts before it


def test_a_spike_to_a_level_not_visited_lately_is_detected() -> None:
    """TravelTime_387's first labelled spike (2,003 s at row 428) is smaller than the spikes of
    its first days (2,858-2,941 s), so the likelihood scores it low; it is the first time in
    days the series is at that level, which the new-level channel sees. The same spike right
    after an incident at that level gains nothing from the channel."""
    data = series("TravelTime_387.csv").iloc[:700]
    stamps, values = data["timestamp"], data["value"].to_numpy(dtype=float)
    assert values[428] == 2003.0
    no_levels = dataclasses.replace(DetectorConfig(), level_z=math.inf)
    assert score_series(stamps, values)[428] >= 0.99
    assert score_series(stamps, values, no_levels)[428] < 0.5

    visited = values.copy()
    visited[400:406] = 2003.0  # half an hour at that level, 22 readings before
    with_channel = score_series(stamps, visited)
    without = score_series(stamps, visited, no_levels)
    assert with_channel[428] == without[428] < 0.5


def test_the_first_weekend_is_not_judged_by_weekday_hours() -> None:
    """occupancy_6005 has eight weekdays of data before its first weekend. That Saturday's
    morning (median occupancy 2.4 % at 06:00-08:00) is far below the weekdays' (10.4 %):
    normal for a Saturday, and the detector, having never seen one, must not call it an
    anomaly. It compares a kind of day it has not seen with the series as a whole, not with the
    other kind's hours."""
    data = series("occupancy_6005.csv").iloc[:1200]
    stamps, values = data["timestamp"], data["value"].to_numpy(dtype=float)
    saturday = (stamps.dt.dayofweek == 5) & stamps.dt.hour.between(6, 7)
    weekdays = (stamps.dt.dayofweek < 5) & stamps.dt.hour.between(6, 7)
    assert saturday.sum() >= 10 and stamps[saturday].dt.date.nunique() == 1  # the first one
    assert np.median(values[saturday]) < np.median(values[weekdays]) / 3
    scores = score_series(stamps, values)
    assert scores[saturday.to_numpy()].max() < 0.5


def test_a_kind_of_day_seen_before_has_its_own_profile() -> None:
    """On the Sunday after that Saturday, 07:00 is judged by the weekend's 07:00 (Saturday's
    readings), not by the weekdays' (whose median is four times higher)."""
    data = series("occupancy_6005.csv")
    stamps = data["timestamp"].dt.tz_localize("UTC")
    sunday = pd.Timestamp("2015-09-13 07:05", tz="UTC")
    detector = Detector()
    for t, v in zip(stamps[stamps < sunday], data["value"][stamps < sunday], strict=True):
        detector.update(t, v)
    at_seven = stamps.dt.hour == 7
    saturday = data["value"][at_seven & (stamps.dt.dayofweek == 5)]
    weekdays = data["value"][at_seven & (stamps.dt.dayofweek < 5) & (stamps < sunday)]
    assert weekdays.median() > 3 * saturday.median()
    baseline = detector._baseline(sunday.timestamp())
    assert baseline is not None
    assert baseline[0] == pytest.approx(saturday.median())


def test_the_calendar_is_the_city_s_local_time() -> None:
    """NAB's stamps are local wall-clock times (Minneapolis, UTC-5 in September 2015). Given as
    UTC instants, a detector in America/Chicago time scores them exactly as the wall-clock
    stamps are scored in UTC; one left in UTC would put the weekend and the rush hours five
    hours off, and scores differently. The zone is part of the state."""
    data = series("occupancy_6005.csv").iloc[:1300]
    wall = data["timestamp"].dt.tz_localize("UTC")
    instants = data["timestamp"].dt.tz_localize("America/Chicago").dt.tz_convert("UTC")
    values = data["value"].to_numpy(dtype=float)

    def scores(detector: Detector, stamps: pd.Series) -> np.ndarray:
        return np.array([detector.update(t, v) for t, v in zip(stamps, values, strict=True)])

    chicago = Detector(timezone="America/Chicago")
    local = scores(chicago, instants)
    np.testing.assert_array_equal(local, scores(Detector(), wall))
    assert not np.array_equal(local, scores(Detector(), instants))
    assert Detector.from_bytes(chicago.to_bytes()).timezone == "America/Chicago"


def test_summer_time_keeps_the_hours_in_their_bins() -> None:
    """08:30 in Cologne is the same hour of day in winter (07:30 UTC) and summer (06:30 UTC)."""
    cologne = Detector(timezone="Europe/Berlin")
    winter = pd.Timestamp("2026-03-27 08:30", tz="Europe/Berlin").timestamp()
    summer = pd.Timestamp("2026-03-30 08:30", tz="Europe/Berlin").timestamp()
    assert cologne._bins(cologne._local(winter))[1] == cologne._bins(cologne._local(summer))[1] == 8
    utc = Detector()
    assert utc._bins(utc._local(winter))[1] == 7 and utc._bins(utc._local(summer))[1] == 6


def test_an_unknown_time_zone_is_refused_by_name() -> None:
    with pytest.raises(DetectorError, match="Mars/Olympus_Mons"):
        Detector(timezone="Mars/Olympus_Mons")


def test_a_far_bigger_second_spike_right_after_an_alert_still_alerts() -> None:
    """The re-alert margin keeps one event to one alert; a point twice as far from its
    baseline as the alert's, six readings later, is another event and is not hidden."""
    data = series("TravelTime_387.csv").iloc[:460]
    values = data["value"].to_numpy(dtype=float)
    values[434] = 9000.0  # 1.6 times the series' largest value, 6 readings after row 428's
    scores = score_series(data["timestamp"], values)
    assert scores[428] >= 0.99 and scores[434] >= 0.99


def test_the_new_level_channel_waits_for_the_warm_up() -> None:
    """A fresh detector has seen too little to call a level new: at Dongsi, hour 49 (127 µg/m³
    after two clean days) would alert on it alone."""
    raw = pd.read_csv(SHARED_DIR / "data" / "beijing-air-quality-prsa" / DONGSI).iloc[:300]
    stamps = pd.to_datetime(raw[["year", "month", "day", "hour"]]).dt.tz_localize("UTC")
    values = raw["PM2.5"].to_numpy(dtype=float)
    warmup = DetectorConfig().warmup
    with_channel = score_series(stamps, values)[:warmup]
    without = score_series(stamps, values, dataclasses.replace(DetectorConfig(), level_z=math.inf))[
        :warmup
    ]
    np.testing.assert_array_equal(with_channel, without)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("level_half_life", 0.0),
        ("level_half_life", math.nan),
        ("level_width", 0.0),
        ("level_width", -1.0),
        ("level_z", 0.0),
        ("level_visits", -1.0),
        ("realert_margin", -0.1),
    ],
)
def test_settings_the_detector_cannot_run_with_are_refused_by_name(setting, value) -> None:
    with pytest.raises(DetectorError, match=f"invalid detector settings: {setting}="):
        DetectorConfig(**{setting: value})


def test_visits_that_never_fade_and_a_channel_turned_off_are_settings_too() -> None:
    data = series("speed_6005.csv").iloc[:300]
    for config in (DetectorConfig(level_half_life=math.inf), DetectorConfig(level_z=math.inf)):
        detector = Detector(config)
        pairs = zip(data["timestamp"], data["value"], strict=True)
        scores = [detector.update(t, v) for t, v in pairs]
        assert all(0.0 <= s <= 1.0 for s in scores)
        restored = Detector.from_bytes(detector.to_bytes())
        assert restored.state_dict() == detector.state_dict()


def test_one_event_alerts_once(speed_7578) -> None:
    """Scores near 1 differ in the 4th decimal from one point of an event to the next: within
    the refractory period only a clearly higher score (or a far bigger distance from the
    baseline, a second event) alerts again."""
    data, scores = speed_7578
    no_margin = score_series(
        data["timestamp"], data["value"], dataclasses.replace(DetectorConfig(), realert_margin=0)
    )

    def repeats(s: np.ndarray) -> int:
        alerts = np.flatnonzero(s >= 0.99)
        return int((np.diff(alerts) <= DetectorConfig().refractory).sum())

    assert len(np.flatnonzero(scores >= 0.99)) >= 4  # the labelled drops
    assert repeats(no_margin) >= 3  # 317/318, 920/921, 955/956: drops alerted twice
    assert repeats(scores) <= 1  # 921, 28 sigmas off, the reading after 920's alert (11)


def test_state_round_trips_and_continues_identically() -> None:
    data = series("occupancy_t4013.csv").iloc[:700]
    stamps, values = list(data["timestamp"]), list(data["value"])
    original = Detector()
    for t, v in zip(stamps[:450], values[:450], strict=True):
        original.update(t, v)
    restored = Detector.from_bytes(original.to_bytes())
    assert restored.state_dict() == original.state_dict()
    assert restored.net is not None  # the forecaster was trained before the snapshot
    a = [original.update(t, v) for t, v in zip(stamps[450:], values[450:], strict=True)]
    b = [restored.update(t, v) for t, v in zip(stamps[450:], values[450:], strict=True)]
    assert a == b
    assert original.trainings == restored.trainings == 5  # both retrained after the snapshot


def test_cached_step_and_floor_never_go_stale() -> None:
    """The scorer's pattern, ``forecast(1)`` then ``update`` per point, on a detector that
    keeps its typical step and scale floor between calls, gives exactly what a detector
    restored from the same state (nothing cached) gives, at every point, across a duplicate
    stamp, a 3-day gap and a sensor that starts reporting every 10 minutes instead of 5."""
    data = series("occupancy_t4013.csv").iloc[560:900]  # a duplicate stamp and a 3-day gap
    stamps, values = list(data["timestamp"]), list(data["value"])
    slower = pd.Timedelta(minutes=10)
    stamps[300:] = [stamps[299] + slower * k for k in range(1, len(stamps) - 299)]
    kept = Detector()
    for t, v in zip(stamps[:250], values[:250], strict=True):
        kept.update(t, v)
    for t, v in zip(stamps[250:], values[250:], strict=True):
        fresh = Detector.from_bytes(kept.to_bytes())
        assert kept.forecast(1) == fresh.forecast(1)
        assert kept.update(t, v) == fresh.update(t, v)
        assert kept.forecast(3) == fresh.forecast(3)


def test_restoring_a_foreign_state_is_refused() -> None:
    state = Detector().state_dict() | {"version": 999}
    with pytest.raises(DetectorError):
        Detector.from_state(state)


def test_a_state_of_the_previous_format_is_refused_clearly() -> None:
    """Version 1 states (before the sustained channel) fail with a DetectorError naming the
    version, so a caller can start that series afresh."""
    state = Detector().state_dict() | {"version": 1}
    for key in ("sustained", "sustained_sum", "sustained_sq"):
        del state[key]
    with pytest.raises(DetectorError, match="version 1"):
        Detector.from_bytes(json.dumps(state).encode())


def test_no_look_ahead() -> None:
    data = series("speed_t4013.csv").iloc[:520]
    first = score_series(data["timestamp"][:300], data["value"][:300])
    longer = score_series(data["timestamp"], data["value"])
    assert np.array_equal(first, longer[:300])


def test_duplicate_out_of_order_and_gappy_stamps() -> None:
    data = series("occupancy_t4013.csv").iloc[600:920]  # a duplicate stamp and a 3-day gap
    assert data["timestamp"].duplicated().any()
    assert data["timestamp"].diff().max() > pd.Timedelta(days=2)
    detector = Detector()
    scores = [detector.update(t, v) for t, v in zip(data["timestamp"], data["value"], strict=True)]
    late = detector.update(data["timestamp"].iloc[0], 5.0)  # far out of order: still a score
    seen = detector.count
    assert detector.update(data["timestamp"].iloc[-1], float("nan")) == 0.0  # a missing reading
    assert detector.count == seen
    assert all(0.0 <= s <= 1.0 and math.isfinite(s) for s in [*scores, late])
    # naive stamps are UTC: the same series with aware stamps scores identically
    aware = score_series(data["timestamp"].dt.tz_localize("UTC"), data["value"])
    assert np.array_equal(aware, np.array(scores))


def test_forecast_gives_an_interval_around_the_next_steps() -> None:
    data = series("speed_6005.csv")
    detector = Detector()
    for t, v in zip(data["timestamp"][:800], data["value"][:800], strict=True):
        detector.update(t, v)
    fc = detector.forecast(12, level=0.9)
    assert len(fc.mean) == len(fc.timestamps) == 12
    assert all(lo < m < hi for lo, m, hi in zip(fc.lower, fc.mean, fc.upper, strict=True))
    gaps = np.diff([t.timestamp() for t in fc.timestamps])
    assert (gaps > 0).all() and gaps[0] == pytest.approx(300, rel=0.5)  # the 5-minute step
    actual = data["value"].iloc[800:812].to_numpy()
    covered = ((actual >= fc.lower) & (actual <= fc.upper)).mean()
    assert covered >= 0.6
    assert abs(np.mean(fc.mean) - np.mean(actual)) < 15  # mph


def test_one_frozen_configuration() -> None:
    config = DetectorConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lags = 3  # type: ignore[misc]
    assert Detector().config == config
    with pytest.raises(DetectorError):
        Detector().forecast(3)
