"""NAB scoring reproduces the published per-file results of the numenta and contextOSE detectors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cityos.anomaly.nab import (
    PROFILES,
    Corpus,
    LabelledFile,
    Profile,
    corpus_bounds,
    normalised,
    scaled_sigmoid,
    sweep,
)
from cityos.settings import SHARED_DIR

ROOT = SHARED_DIR / "data" / "nab"
CORPUS = Corpus.real_traffic(ROOT)
THRESHOLDS = json.loads((ROOT / "config" / "thresholds.json").read_text())
STANDARD = Profile("standard", tp=1.0, fp=0.11, fn=1.0)


def detector_rows(detector: str, name: str) -> pd.DataFrame | None:
    folder, file = name.split("/")
    path = ROOT / "results" / detector / folder / f"{detector}_{file}"
    return pd.read_csv(path, parse_dates=["timestamp"]) if path.exists() else None


@pytest.mark.parametrize("detector", ["numenta", "contextOSE"])
@pytest.mark.parametrize("profile", PROFILES)
def test_reproduces_published_per_file_scores(detector: str, profile: str) -> None:
    published = CORPUS.published(detector, profile)
    threshold = THRESHOLDS[detector][profile]["threshold"]
    cost = CORPUS.profiles()[profile]
    checked = 0
    for name in CORPUS.files:
        rows = detector_rows(detector, name)
        if rows is None:
            continue
        got = CORPUS.labelled(name, rows["timestamp"]).score(
            rows["anomaly_score"].to_numpy(), threshold, cost
        )
        want = published.loc[name]
        assert got.score == pytest.approx(want["Score"], abs=1e-6), name
        assert (got.tp, got.tn, got.fp, got.fn, got.total) == (
            want["TP"],
            want["TN"],
            want["FP"],
            want["FN"],
            want["Total_Count"],
        ), name
        checked += 1
    assert checked == 7


def test_sweep_finds_a_threshold_at_least_as_good_as_the_published_one() -> None:
    files, scores = [], []
    for name in CORPUS.files:
        rows = detector_rows("numenta", name)
        assert rows is not None, name
        files.append(CORPUS.labelled(name, rows["timestamp"]))
        scores.append(rows["anomaly_score"].to_numpy())
    best = sweep(files, scores, STANDARD)
    at_best = sum(
        f.score(s, best.threshold, STANDARD).score for f, s in zip(files, scores, strict=True)
    )
    published = CORPUS.published("numenta", "standard")["Score"].sum()
    assert best.score == pytest.approx(at_best, abs=1e-9)
    assert best.score >= published - 1e-9
    null, perfect = corpus_bounds(files, STANDARD)
    assert (null, perfect) == (-14.0, 14.0)
    assert 0 < normalised(best.score, null, perfect) < 100


def test_window_weights_and_probation() -> None:
    stamps = pd.date_range("2015-01-01", periods=200, freq="5min")
    window = (stamps[100], stamps[119])  # 20 rows
    f = LabelledFile("toy.csv", stamps, [window])
    assert f.probation == 30
    scores = np.zeros(200)
    scores[100] = 1.0  # first row of the window: worth exactly tp
    assert f.score(scores, 0.5, STANDARD).score == pytest.approx(1.0)
    scores[110] = 1.0  # a later detection in the same window changes nothing
    assert f.score(scores, 0.5, STANDARD).score == pytest.approx(1.0)
    scores[10] = 1.0  # inside probation: ignored
    assert f.score(scores, 0.5, STANDARD).score == pytest.approx(1.0)
    scores[60] = 1.0  # before any window: a full false positive
    assert f.score(scores, 0.5, STANDARD).score == pytest.approx(1.0 - 0.11)
    scores[120] = 1.0  # just after the window: nearly free
    just_after = 0.11 * scaled_sigmoid(1 / 19)
    assert f.score(scores, 0.5, STANDARD).score == pytest.approx(1.0 - 0.11 + just_after)
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    none = f.score(np.zeros(200), 0.5, STANDARD)
    assert none.score == -1.0
    assert (none.tp, none.fn, none.fp, none.tn) == (0, 20, 0, 150)


def test_published_detectors_normalise_between_null_and_perfect() -> None:
    from cityos.anomaly.nab_bench import published_scores

    labelled = {}
    for name in CORPUS.files:
        stamps = pd.read_csv(ROOT / "data" / name, usecols=["timestamp"])["timestamp"]
        labelled[name] = CORPUS.labelled(name, stamps)
    published = published_scores(CORPUS, labelled)
    assert "random" not in published  # its score files have no realTraffic rows
    for profile in PROFILES:
        assert published["null"][profile]["normalised"] == 0.0
        for detector, row in published.items():
            assert -100 < row[profile]["normalised"] < 100, detector
    # numenta on these files: raw 9.10 within [null -14, perfect 14] → 82.5 (standard)
    numenta = CORPUS.published("numenta", "standard")["Score"].sum()
    assert published["numenta"]["standard"]["raw"] == pytest.approx(numenta)
    assert published["numenta"]["standard"]["normalised"] == pytest.approx(
        100 * (numenta + 14) / 28
    )
    assert round(published["numenta"]["standard"]["normalised"], 1) == 82.5


def test_published_detectors_reswept_on_these_files_as_ours_is() -> None:
    """The like-for-like rows: numenta's and contextOSE's own per-row scores with a threshold
    swept over the 7 files, as CityOS's is. Sweeping can only match or beat the published
    threshold on these files, and for contextOSE it lifts the low-FN profile from 92.7 to 94.1."""
    from cityos.anomaly.nab_bench import published_scores, reswept_published

    labelled = {}
    for name in CORPUS.files:
        stamps = pd.read_csv(ROOT / "data" / name, usecols=["timestamp"])["timestamp"]
        labelled[name] = CORPUS.labelled(name, stamps)
    reswept = reswept_published(CORPUS, labelled)
    published = published_scores(CORPUS, labelled)
    assert set(reswept) == {"numenta", "contextOSE"}  # the only per-row scores in the extract
    for detector, row in reswept.items():
        for profile in PROFILES:
            assert row[profile]["raw"] >= published[detector][profile]["raw"] - 1e-9
    figures = {d: tuple(round(r[p]["normalised"], 1) for p in PROFILES) for d, r in reswept.items()}
    assert figures == {"numenta": (83.2, 80.5, 86.4), "contextOSE": (91.2, 88.4, 94.1)}


def test_cityos_detector_on_realtraffic_keeps_its_published_figures() -> None:
    """The figures anomaly/README.md reports: the default detector, streamed, swept per profile.

    A change of the detector that moves these must update the README's table; the 0.5 margin
    leaves room for floating-point differences between CPUs (the forecaster is a torch MLP),
    not for a change of behaviour. CityOS is ahead of every published detector on every
    profile: that is the issue's target, and the margin over contextOSE is 0.1-0.2 points (less
    than the spread over the forecaster's seeds; anomaly/README.md), so a change that loses it
    fails here.
    """
    from cityos.anomaly.nab_bench import run_benchmark

    result = run_benchmark(ROOT)["results"]
    reported = {"standard": 91.3, "reward_low_FP_rate": 88.6, "reward_low_FN_rate": 94.2}
    for profile, figure in reported.items():
        assert result["cityos"][profile]["normalised"] == pytest.approx(figure, abs=0.5), profile
    for profile in PROFILES:
        assert result["rank"][profile] == 1, profile
        best = max(r[profile]["normalised"] for r in result["published"].values())
        assert result["cityos"][profile]["normalised"] > best, profile
    assert all(result["ahead_of_every_published"].values())
