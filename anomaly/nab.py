"""Numenta Anomaly Benchmark (NAB) scoring, re-implemented from its published semantics.

NAB is Numenta's benchmark for streaming anomaly detectors (https://github.com/numenta/NAB, MIT
licence, "Copyright 2014-2024 Numenta Inc."; Ahmad, Lavin, Purdy & Agha, "Unsupervised real-time
anomaly detection for streaming data", Neurocomputing 2017). This module follows the behaviour of
its ``nab/sweeper.py`` and ``nab/runner.py`` (the scorer that produced the published
``results/*/*_scores.csv``); it is a re-implementation, not a copy:

* every labelled anomaly is a *window* of rows ``[start, end]`` (inclusive timestamps);
* the first ``min(floor(0.15 * n), 750)`` rows of a file are *probationary*: never scored;
* a row whose anomaly score is ``>= threshold`` is a detection. Within a window only the earliest
  detection counts, worth ``tp * S(p) / S(-1)`` where ``p = -(right - i + 1) / width`` and
  ``S(x) = 2 * sigmoid(-5x) - 1`` (a detection at the window's first row is worth exactly ``tp``);
  a window without a detection costs ``-fn``;
* a detection outside every window costs ``fp * S(d)`` with ``d`` its distance past the end of the
  preceding window in units of that window's width minus one (``S(d) = -1`` for ``d >= 3`` and
  before the first window), so detections just after a window are cheap;
* the counts TP/TN/FP/FN are per row (after probation), as NAB reports them;
* one threshold per profile is chosen by an exact sweep over every distinct anomaly score of the
  whole corpus at once, and the corpus score is normalised to 0 (null detector: no detection) ..
  100 (perfect detector: every window detected at its first row).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cityos.errors import CityOSError

PROBATION_PERCENT = 0.15
PROBATION_CAP_ROWS = 5000  # NAB caps the probation at 15% of 5000 rows
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


class NABError(CityOSError):
    """The NAB data or labels are missing or inconsistent."""


@dataclass(frozen=True)
class Profile:
    """One NAB application profile: the cost matrix that weighs TP, FP and FN."""

    name: str
    tp: float
    fp: float
    fn: float
    tn: float = 1.0


@dataclass(frozen=True)
class FileScore:
    """The score of one file at one threshold, with NAB's per-row counts."""

    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int


@dataclass(frozen=True)
class SweepResult:
    """The best threshold of a profile over a corpus and the raw score it gives."""

    threshold: float
    score: float


def scaled_sigmoid(position: float) -> float:
    """NAB's weight of a detection at a relative ``position`` (-1 window start, 0 window end)."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


def probation_length(rows: int, percent: float = PROBATION_PERCENT) -> int:
    return int(min(math.floor(percent * rows), percent * PROBATION_CAP_ROWS))


def load_profiles(path: Path) -> dict[str, Profile]:
    """``config/profiles.json`` → one Profile per name."""
    raw = json.loads(path.read_text())
    return {
        name: Profile(
            name=name,
            tp=m["CostMatrix"]["tpWeight"],
            fp=m["CostMatrix"]["fpWeight"],
            fn=m["CostMatrix"]["fnWeight"],
            tn=m["CostMatrix"]["tnWeight"],
        )
        for name, m in raw.items()
    }


def load_windows(path: Path) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    """``labels/combined_windows.json`` → file (e.g. ``realTraffic/speed_7578.csv``) → windows."""
    raw = json.loads(path.read_text())
    return {
        name: [(pd.Timestamp(start), pd.Timestamp(end)) for start, end in windows]
        for name, windows in raw.items()
    }


class LabelledFile:
    """One data file's timestamps and anomaly windows, prepared for scoring.

    ``window_of[i]`` is the window index of row ``i`` (-1 outside every window) and
    ``weight_tp``/``weight_fp`` are, per row, the unit-weight value of a detection there: the
    scaled sigmoid relative to the window end for rows in a window, relative to the end of the
    preceding window for rows outside.
    """

    def __init__(
        self,
        name: str,
        timestamps: Sequence[pd.Timestamp] | pd.Series | np.ndarray,
        windows: Iterable[tuple[pd.Timestamp, pd.Timestamp]],
        probation_percent: float = PROBATION_PERCENT,
    ) -> None:
        self.name = name
        stamps = pd.to_datetime(pd.Series(timestamps)).to_numpy()
        n = len(stamps)
        self.rows = n
        self.probation = probation_length(n, probation_percent)
        self.windows = sorted((pd.Timestamp(a), pd.Timestamp(b)) for a, b in windows)
        self.window_of = np.full(n, -1, dtype=np.int64)
        self.window_rows: list[tuple[int, int]] = []  # (first row, last row) of each window
        for k, (start, end) in enumerate(self.windows):
            inside = np.flatnonzero(
                (stamps >= start.to_datetime64()) & (stamps <= end.to_datetime64())
            )
            if len(inside) == 0:
                raise NABError(f"{name}: window {start} .. {end} holds no row")
            first, last = int(inside[0]), int(inside[-1])
            self.window_of[first : last + 1] = k
            self.window_rows.append((first, last))
        self.weight = np.empty(n)  # unit-weight value of a detection at each row
        previous: tuple[int, int] | None = None
        k = 0
        for i in range(n):
            while k < len(self.window_rows) and self.window_rows[k][1] < i:
                previous = self.window_rows[k]
                k += 1
            w = self.window_of[i]
            if w >= 0:
                first, last = self.window_rows[w]
                width = last - first + 1
                self.weight[i] = scaled_sigmoid(-(last - i + 1) / width) / MAX_TP
            elif previous is None:
                self.weight[i] = -1.0
            else:
                first, last = previous
                span = last - first  # the window's width minus one
                position = abs(i - last) / span if span > 0 else 3.0
                self.weight[i] = scaled_sigmoid(position)
        # windows that lie wholly inside the probation period are not scored (as NAB's sweeper)
        self.scored_windows = [
            k for k, (_, last) in enumerate(self.window_rows) if last >= self.probation
        ]

    def score(self, anomaly_scores: np.ndarray, threshold: float, profile: Profile) -> FileScore:
        """NAB's score of this file when rows with ``anomaly_score >= threshold`` are detections."""
        scores = np.asarray(anomaly_scores, dtype=float)
        if len(scores) != self.rows:
            raise NABError(f"{self.name}: {len(scores)} scores for {self.rows} rows")
        scored = np.arange(self.rows) >= self.probation
        detected = (scores >= threshold) & scored
        in_window = self.window_of >= 0
        total = 0.0
        for k in self.scored_windows:
            hits = np.flatnonzero(detected & (self.window_of == k))
            total += profile.tp * self.weight[hits[0]] if len(hits) else -profile.fn
        total += profile.fp * float(self.weight[detected & ~in_window].sum())
        return FileScore(
            score=total,
            tp=int((detected & in_window).sum()),
            tn=int((scored & ~detected & ~in_window).sum()),
            fp=int((detected & ~in_window).sum()),
            fn=int((scored & ~detected & in_window).sum()),
            total=self.rows,
        )

    def null_score(self, profile: Profile) -> float:
        return -profile.fn * len(self.scored_windows)

    def perfect_score(self, profile: Profile) -> float:
        return profile.tp * len(self.scored_windows)


def sweep(
    files: Sequence[LabelledFile], scores: Sequence[np.ndarray], profile: Profile
) -> SweepResult:
    """The threshold that maximises the corpus score, by an exact sweep over all distinct scores.

    Rows of all files are visited from the highest anomaly score down; lowering the threshold to a
    row's score makes it a detection: outside a window it adds ``fp * weight``, inside it raises
    its window's value to the best (earliest) detection so far. The score is recorded once every
    row of a distinct value has been added. Ties keep NAB's choice: the first (highest) threshold
    reaching the maximum.
    """
    values, weights, keys = [], [], []
    window_value: dict[tuple[int, int], float] = {}
    for f_index, (f, s) in enumerate(zip(files, scores, strict=True)):
        s = np.asarray(s, dtype=float)
        rows = np.arange(f.probation, f.rows)
        values.append(s[rows])
        weights.append(f.weight[rows])
        keys.append(np.where(f.window_of[rows] >= 0, f_index * 1_000_000 + f.window_of[rows], -1))
        for k in f.scored_windows:
            window_value[(f_index, k)] = -profile.fn
    value = np.concatenate(values)
    weight = np.concatenate(weights)
    key = np.concatenate(keys)
    order = np.argsort(-value, kind="stable")
    current = sum(window_value.values())
    best = SweepResult(threshold=1.1, score=current)  # above every score: nothing detected
    windows = {f * 1_000_000 + k: v for (f, k), v in window_value.items()}
    for j, i in enumerate(order):
        if key[i] < 0:
            current += profile.fp * weight[i]
        else:
            gain = profile.tp * weight[i]
            if gain > windows[key[i]]:
                current += gain - windows[key[i]]
                windows[key[i]] = gain
        last_of_value = j + 1 == len(order) or value[order[j + 1]] != value[i]
        if last_of_value and current > best.score + 1e-12:
            best = SweepResult(threshold=float(value[i]), score=current)
    return best


def normalised(raw: float, null: float, perfect: float) -> float:
    """NAB's final score: 0 for the null detector, 100 for the perfect one."""
    return 100.0 * (raw - null) / (perfect - null)


@dataclass(frozen=True)
class Corpus:
    """A NAB extract on disk (data/, labels/, config/, results/) restricted to some files."""

    root: Path
    files: tuple[str, ...]

    @classmethod
    def real_traffic(cls, root: Path) -> Corpus:
        names = sorted(p.name for p in (root / "data" / "realTraffic").glob("*.csv"))
        if not names:
            raise NABError(f"no realTraffic files under {root / 'data'}")
        return cls(root=root, files=tuple(f"realTraffic/{n}" for n in names))

    def data(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.root / "data" / name, parse_dates=["timestamp"])

    def profiles(self) -> dict[str, Profile]:
        return load_profiles(self.root / "config" / "profiles.json")

    def labelled(self, name: str, timestamps: Sequence[pd.Timestamp] | pd.Series) -> LabelledFile:
        windows = load_windows(self.root / "labels" / "combined_windows.json")
        if name not in windows:
            raise NABError(f"{name} has no entry in combined_windows.json")
        return LabelledFile(name, timestamps, windows[name])

    def published(self, detector: str, profile: str) -> pd.DataFrame:
        """A published detector's per-file rows (Score, TP, …) restricted to this corpus."""
        path = self.root / "results" / detector / f"{detector}_{profile}_scores.csv"
        table = pd.read_csv(path)
        return table[table["File"].isin(self.files)].set_index("File")

    def published_rows(self, detector: str, name: str) -> np.ndarray | None:
        """A published detector's per-row ``anomaly_score`` of one file (None: not in the
        extract, which holds them for numenta and contextOSE only)."""
        folder, file = name.split("/")
        path = self.root / "results" / detector / folder / f"{detector}_{file}"
        if not path.exists():
            return None
        return pd.read_csv(path, usecols=["anomaly_score"])["anomaly_score"].to_numpy(float)

    def published_detectors(self) -> list[str]:
        return sorted(
            p.name
            for p in (self.root / "results").iterdir()
            if p.is_dir() and all((p / f"{p.name}_{q}_scores.csv").exists() for q in PROFILES)
        )


def corpus_bounds(files: Sequence[LabelledFile], profile: Profile) -> tuple[float, float]:
    """(null, perfect) raw scores of a set of files: the normalisation bounds."""
    return (
        sum(f.null_score(profile) for f in files),
        sum(f.perfect_score(profile) for f in files),
    )


def results_rows(results: Mapping[str, FileScore]) -> pd.DataFrame:
    return pd.DataFrame(
        [(name, r.score, r.tp, r.tn, r.fp, r.fn, r.total) for name, r in results.items()],
        columns=["File", "Score", "TP", "TN", "FP", "FN", "Total_Count"],
    ).set_index("File")
