"""The online per-series anomaly detector: one instance per sensor, fed one point at a time.

``Detector.update(timestamp, value)`` sees each point once, in order, and returns an anomaly
score in [0, 1] computed only from the past and the point itself. Four parts, combined:

* **seasonal baseline** — a time-of-week profile of the last values per bin, falling back while a
  bin is young to a time-of-day profile of the same kind of day (weekday or weekend), then to
  time-of-day over all days (once this kind of day has been seen before: a city's first weekend
  is not judged by its weekday rush hours), then to the whole recent series; the residual against
  the bin's median, in units of the bin's MAD, is a robust z-score;
* **forecaster** — a small torch MLP that predicts the next value's mean and spread from the
  last few values (relative to the seasonal median), the time of day and the gap since the
  previous point, retrained every ``train_every`` points on the series' own recent past; the
  prediction error in units of the predicted spread is a second z-score;
* **anomaly likelihood** — as HTM's post-processing does: the short-term mean of the combined
  surprise is compared with its long-run distribution, and the tail probability becomes the score
  (on a log scale, so that thresholds near 1 spread out), then damped right after an alert so one
  event gives one detection, not a run of them (a later point of the refractory period alerts
  again only with a clearly higher score or twice the alert's distance from the baseline). A
  second, slower channel watches for a
  *sustained* deviation: the least surprise of the last few points (high only when every one of
  them is off) against its own long-run distribution, at a lower weight; the score takes the
  stronger of the two. A series with past spikes learns that spikes are normal, and a moderate
  shift that lasts would otherwise never reach the first channel's threshold.
* **new level** — for the same reason, a spike no larger than earlier ones scores low in the
  likelihood, however rare its kind. So the detector also remembers which levels the series has
  visited lately (a histogram of the values on a log scale whose counts fade with a half-life of
  a few hundred points): once past the forecaster's warm-up, a point far off its seasonal
  baseline *and* at a level the series has visited at most twice lately scores at least 0.99
  before the damping, whatever the likelihood says. A spike to a level visited a few times
  lately (a daily peak, an incident's readings after its first few) gains nothing from it.

Days, hours and weekends are those of the detector's ``timezone`` (the series' city's; the
timestamps themselves are instants). Timestamps may be irregular, have gaps (the lag buffer is
reset after a long gap) and repeat (a duplicate stamp is scored as another observation at the
same time). The whole state is plain
data (``state_dict``/``to_bytes``) so the streaming job can persist it per sensor and resume
exactly. ``forecast(k)`` gives the next ``k`` steps with a prediction interval for predictive
alerts. The defaults of :class:`DetectorConfig` are the settings used everywhere (NAB, Cologne,
Beijing): nothing is tuned per series.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import statistics
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from cityos.errors import CityOSError

# 2: the sustained-deviation channel; 3: the visited levels (new-level channel); 4: the day-kind
# (weekday/weekend) profile and the time zone of the calendar
STATE_VERSION = 4
_WEEK_S = 7 * 86400
_DAY_S = 86400
_MAD_TO_SIGMA = 1.4826
WEEKDAY, WEEKEND = 0, 1  # kinds of day; Saturday and Sunday are the weekend


class DetectorError(CityOSError):
    """A detector state cannot be restored (wrong version or configuration)."""


@dataclass(frozen=True)
class DetectorConfig:
    """Every knob of the detector; the defaults are the settings used for every series."""

    bin_minutes: int = 60  # width of a time-of-day / time-of-week bin
    bin_memory: int = 48  # values kept per bin (the most recent ones)
    min_bin_count: int = 5  # a bin younger than this falls back to the coarser profile
    recent_memory: int = 512  # values kept for the whole-series fallback and scale floor
    lags: int = 4  # forecaster inputs: the last values (relative to the seasonal median)
    hidden: int = 16  # forecaster hidden units
    train_every: int = 128  # retrain the forecaster every this many points
    train_window: int = 2048  # on at most this many recent (inputs, target) pairs
    train_steps: int = 60  # Adam steps per retraining, minibatches of `batch`
    batch: int = 64
    learning_rate: float = 0.01
    warmup: int = 200  # points before the forecaster's error counts
    gap_steps: float = 12.0  # a gap longer than this many typical steps resets the lags
    short_window: int = 2  # anomaly likelihood: mean surprise over the last few points
    long_window: int = 1000  # … against its distribution over this many points
    sustain_window: int = 6  # sustained channel: the least surprise of the last few points …
    sustain_weight: float = 0.4  # … counts at this share of its z-score against its history
    refractory: int = 12  # points over which an alert damps the following scores …
    realert_margin: float = 0.01  # … unless they exceed the alert's score by more than this
    forecast_weight: float = 0.25  # share of the forecaster's surprise in the combined one
    level_width: float = 0.15  # new-level channel: a level is a log-scale bin 15 % wide …
    level_z: float = 10.0  # … a point this many robust sigmas off its seasonal median …
    level_visits: float = 2.0  # … at a level (or its two neighbours) visited at most this often
    level_half_life: float = 256.0  # … lately: a visit counts half after this many points
    floor_every: int = 1  # refresh the series-wide scale floor every this many points
    seed: int = 7

    def __post_init__(self) -> None:
        """Refuse settings the detector cannot run with, naming them (not a crash mid-stream)."""
        bad = []
        if not (self.level_width > 0 and math.isfinite(self.level_width)):
            bad.append(f"level_width={self.level_width!r} (a finite share > 0)")
        if not self.level_half_life > 0:  # inf: visits never fade
            bad.append(f"level_half_life={self.level_half_life!r} (points > 0, or inf)")
        if not self.level_z > 0:  # inf: the channel is off
            bad.append(f"level_z={self.level_z!r} (robust sigmas > 0, or inf)")
        if not self.level_visits >= 0:
            bad.append(f"level_visits={self.level_visits!r} (>= 0)")
        if not self.realert_margin >= 0:
            bad.append(f"realert_margin={self.realert_margin!r} (>= 0)")
        if bad:
            raise DetectorError("invalid detector settings: " + "; ".join(bad))


@dataclass(frozen=True)
class Forecast:
    """The next steps of a series: timestamps, expected values and a prediction interval."""

    timestamps: list[datetime]
    mean: list[float]
    lower: list[float]
    upper: list[float]
    level: float  # coverage of [lower, upper], e.g. 0.9


def _median_mad(values: Any) -> tuple[float, float]:
    """Median and median absolute deviation (as numpy's median computes them, without its
    per-call overhead: this runs several times per point)."""
    a = np.fromiter(values, dtype=float)
    a.sort()
    n = len(a)
    med = float((a[(n - 1) // 2] + a[n // 2]) / 2)
    d = np.abs(a - med)
    d.sort()
    return med, float((d[(n - 1) // 2] + d[n // 2]) / 2)


def _surprise(z: float) -> float:
    """-log10 of the two-sided Gaussian tail probability of ``z`` (0 for z = 0, ~6 at 5 sigma)."""
    tail = math.erfc(abs(z) / math.sqrt(2.0))
    return -math.log10(max(tail, 1e-300))


def _gauss_tail(z: float) -> float:
    """Upper tail probability of a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _push(history: deque[float], value: float, total: float, squares: float) -> tuple[float, float]:
    """Append ``value`` to a bounded history; its running sum and sum of squares, updated."""
    if len(history) == history.maxlen:
        dropped = history[0]
        total -= dropped
        squares -= dropped * dropped
    history.append(value)
    return total + value, squares + value * value


def _standardised(value: float, total: float, squares: float, n: int) -> float:
    """``value`` as a z-score against a history given by its count, sum and sum of squares."""
    mean = total / n
    std = max(math.sqrt(max(squares / n - mean * mean, 0.0)), 1e-3)
    return (value - mean) / std


def _day_kind(local: float) -> int:
    """WEEKDAY or WEEKEND of a local wall-clock time in seconds since 1970-01-01 00:00 (a
    Thursday)."""
    return WEEKEND if (int(local // _DAY_S) + 3) % 7 >= 5 else WEEKDAY


def _zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; DetectorError naming it if this machine does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise DetectorError(f"unknown time zone {name!r} for the detector's calendar") from err


@functools.lru_cache(maxsize=4096)
def _utc_offset(name: str, quarter: int) -> float:
    """The UTC offset, s, of zone ``name`` in the quarter hour starting at POSIX time
    ``quarter * 900`` (zones change offset at whole quarter hours of UTC; points arrive in
    order, so the cache holds the few recent quarters a series asks for)."""
    offset = datetime.fromtimestamp(quarter * 900, _zone(name)).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def _as_utc(ts: datetime | float | int | str) -> float:
    """A timestamp as POSIX seconds; naive datetimes are taken as UTC."""
    if isinstance(ts, int | float):
        return float(ts)
    moment = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    if hasattr(moment, "to_pydatetime"):  # a pandas Timestamp
        moment = moment.to_pydatetime()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass
class _Net:
    """The forecaster's weights as numpy arrays: the forward pass runs in numpy (cheap per point),
    training runs in torch."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @classmethod
    def init(cls, inputs: int, hidden: int, seed: int) -> _Net:
        rng = np.random.default_rng(seed)
        bound1, bound2 = 1 / math.sqrt(inputs), 1 / math.sqrt(hidden)
        return cls(
            w1=rng.uniform(-bound1, bound1, (hidden, inputs)).astype(np.float32),
            b1=np.zeros(hidden, dtype=np.float32),
            w2=rng.uniform(-bound2, bound2, (2, hidden)).astype(np.float32),
            b2=np.zeros(2, dtype=np.float32),
        )

    def forward(self, x: np.ndarray) -> tuple[float, float]:
        h = np.tanh(self.w1 @ x + self.b1)
        mu, log_sigma = self.w2 @ h + self.b2
        return float(mu), float(log_sigma)

    def train(self, x: np.ndarray, y: np.ndarray, config: DetectorConfig, seed: int) -> None:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny batches: more threads only contend (and cost 10x)
        try:
            self._train(torch, x, y, config, seed)
        finally:
            torch.set_num_threads(threads)

    def _train(
        self, torch: Any, x: np.ndarray, y: np.ndarray, config: DetectorConfig, seed: int
    ) -> None:
        params = [torch.tensor(a, requires_grad=True) for a in (self.w1, self.b1, self.w2, self.b2)]
        w1, b1, w2, b2 = params
        xt = torch.from_numpy(x.astype(np.float32))
        yt = torch.from_numpy(y.astype(np.float32))
        opt = torch.optim.Adam(params, lr=config.learning_rate)
        rng = np.random.default_rng(seed)
        for _ in range(config.train_steps):
            idx = torch.from_numpy(rng.integers(0, len(x), min(config.batch, len(x))))
            h = torch.tanh(xt[idx] @ w1.T + b1)
            out = h @ w2.T + b2
            mu, log_sigma = out[:, 0], out[:, 1].clamp(-5.0, 5.0)
            loss = (log_sigma + 0.5 * ((yt[idx] - mu) / log_sigma.exp()) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.w1, self.b1, self.w2, self.b2 = (p.detach().numpy().copy() for p in params)

    def to_dict(self) -> dict[str, Any]:
        return {k: _encode(getattr(self, k)) for k in ("w1", "b1", "w2", "b2")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Net:
        return cls(**{k: _decode(v) for k, v in d.items()})


def _encode(a: np.ndarray) -> dict[str, Any]:
    return {
        "dtype": str(a.dtype),
        "shape": list(a.shape),
        "data": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode(),
    }


def _decode(d: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(d["data"])
    return np.frombuffer(raw, dtype=d["dtype"]).reshape(d["shape"]).copy()


@dataclass
class Detector:
    """The anomaly detector of one series (one sensor's one measure)."""

    config: DetectorConfig = field(default_factory=DetectorConfig)
    count: int = 0
    last_ts: float | None = None
    steps: deque[float] = field(default_factory=lambda: deque(maxlen=64))  # recent gaps, s
    week_bins: dict[int, deque[float]] = field(default_factory=dict)
    day_bins: dict[int, deque[float]] = field(default_factory=dict)
    # time of day per kind of day: key kind * bins_per_day + bin (see _bins)
    kind_bins: dict[int, deque[float]] = field(default_factory=dict)
    kind_first: dict[int, int] = field(default_factory=dict)  # kind -> first local day seen
    recent: deque[float] = field(default_factory=deque)
    residuals: deque[float] = field(default_factory=deque)  # recent seasonal residuals
    lags: deque[float] = field(default_factory=deque)  # recent values relative to the baseline
    pairs_x: deque[list[float]] = field(default_factory=deque)
    pairs_y: deque[float] = field(default_factory=deque)
    net: _Net | None = None
    trainings: int = 0
    surprises: deque[float] = field(default_factory=deque)
    alert_age: int = 1_000_000  # points since the last score above the alert level
    alert_peak: float = 0.0
    alert_distance: float = 0.0  # the alert's |z| from its seasonal median
    floor: float | None = None  # the cached scale floor (see _scale_floor)
    surprise_sum: float = 0.0  # running sums over `surprises`, for the likelihood
    surprise_sq: float = 0.0
    sustained: deque[float] = field(default_factory=deque)  # least surprise of recent runs
    sustained_sum: float = 0.0  # running sums over `sustained`
    sustained_sq: float = 0.0
    # visited levels: (sign, log-scale bin) -> [visits, count at the last visit]; see _visit
    levels: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    # retrain when (count + phase) % train_every == 0: the detectors of a city's sensors, started
    # together, then retrain at different points instead of all in the same micro-batch
    phase: int = 0
    # the IANA time zone whose days and hours the seasonal profile and the forecaster's time of
    # day follow: the series' city's (rush hour is at 08:00 local, summer time or not)
    timezone: str = "UTC"
    # derived from the state above, not part of it: (count it was computed at, value)
    _floor_cache: tuple[int, float] | None = field(default=None, repr=False, compare=False)
    _step_cache: float | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        c = self.config
        _zone(self.timezone)  # an unknown zone fails here, by name, not at the first point
        self.recent = deque(self.recent, maxlen=c.recent_memory)
        self.residuals = deque(self.residuals, maxlen=c.recent_memory)
        self.lags = deque(self.lags, maxlen=c.lags)
        self.pairs_x = deque(self.pairs_x, maxlen=c.train_window)
        self.pairs_y = deque(self.pairs_y, maxlen=c.train_window)
        self.surprises = deque(self.surprises, maxlen=c.long_window)
        self.sustained = deque(self.sustained, maxlen=c.long_window)

    # --- the seasonal baseline -------------------------------------------------------------

    def _local(self, t: float) -> float:
        """POSIX time ``t`` as seconds of the local wall clock of ``timezone`` (for bins)."""
        return t if self.timezone == "UTC" else t + _utc_offset(self.timezone, int(t // 900))

    def _bins(self, local: float) -> tuple[int, int, int]:
        """The time-of-week, time-of-day and kind-of-day-and-time-of-day bins of a local time
        (see ``_local``)."""
        width = self.config.bin_minutes * 60
        day = int((local % _DAY_S) // width)
        per_day = -(-_DAY_S // width)
        return int((local % _WEEK_S) // width), day, _day_kind(local) * per_day + day

    def _baseline(self, t: float) -> tuple[float, float] | None:
        """Median and robust sigma of the seasonal profile at time ``t`` (None: no history).

        The first bin with ``min_bin_count`` values of: the time of week, the time of day on the
        same kind of day, the time of day on any day — the last only once this kind of day was
        seen on an earlier day (the first weekend of a series is not compared with weekdays,
        nor the first weekday with a weekend) — then the recent series as a whole."""
        c = self.config
        local = self._local(t)
        week, day, kind = self._bins(local)
        first = self.kind_first.get(_day_kind(local))
        stores = [(self.week_bins, week), (self.kind_bins, kind)]
        if first is not None and first < local // _DAY_S:
            stores.append((self.day_bins, day))
        for store, key in stores:
            values = store.get(key)
            if values is not None and len(values) >= c.min_bin_count:
                med, mad = _median_mad(values)
                return med, _MAD_TO_SIGMA * mad
        if len(self.recent) >= c.min_bin_count:
            med, mad = _median_mad(self.recent)
            return med, _MAD_TO_SIGMA * mad
        return None

    def _scale_floor(self) -> float:
        """The smallest sigma a bin may claim: a share of the series' residual spread.

        Cached per point: the residuals and recent values change only when a point is learned,
        and ``count`` moves with them (the scorer calls ``forecast`` and ``update`` per point)."""
        if self._floor_cache is not None and self._floor_cache[0] == self.count:
            return self._floor_cache[1]
        floor = self._compute_floor()
        self._floor_cache = (self.count, floor)
        return floor

    def _compute_floor(self) -> float:
        if len(self.residuals) >= self.config.min_bin_count:
            _, mad = _median_mad(self.residuals)
            floor = 0.5 * _MAD_TO_SIGMA * mad
        else:
            floor = 0.0
        if len(self.recent) >= 2:
            _, mad = _median_mad(self.recent)
            floor = max(floor, 0.05 * _MAD_TO_SIGMA * mad)
        return max(floor, 1e-6)

    def _learn_seasonal(self, t: float, value: float) -> None:
        c = self.config
        local = self._local(t)
        week, day, kind = self._bins(local)
        self.week_bins.setdefault(week, deque(maxlen=c.bin_memory)).append(value)
        self.day_bins.setdefault(day, deque(maxlen=c.bin_memory)).append(value)
        self.kind_bins.setdefault(kind, deque(maxlen=c.bin_memory)).append(value)
        self.kind_first.setdefault(_day_kind(local), int(local // _DAY_S))
        self.recent.append(value)

    # --- the forecaster ---------------------------------------------------------------------

    @property
    def _inputs(self) -> int:
        return self.config.lags + 3  # lags, sin and cos of the time of day, the gap

    def _typical_step(self) -> float:
        """The median gap between points, s (cached until a new gap is seen)."""
        if self._step_cache is None:
            self._step_cache = float(statistics.median(self.steps)) if self.steps else 300.0
        return self._step_cache

    def _features(
        self, lags: deque[float], t: float, gap: float, scale: float
    ) -> np.ndarray | None:
        """The forecaster's inputs: scaled lags, time of day, the gap (None: too few lags)."""
        if len(lags) < self.config.lags:
            return None
        phase = 2 * math.pi * (self._local(t) % _DAY_S) / _DAY_S
        return np.concatenate(
            [
                np.clip(np.asarray(lags, dtype=np.float64) / scale, -10, 10),
                [
                    math.sin(phase),
                    math.cos(phase),
                    math.log1p(gap / max(self._typical_step(), 1.0)) - math.log(2.0),
                ],
            ]
        ).astype(np.float32)

    def _retrain(self) -> None:
        c = self.config
        if self.net is None:
            self.net = _Net.init(self._inputs, c.hidden, c.seed)
        x = np.asarray(self.pairs_x, dtype=np.float32)
        y = np.asarray(self.pairs_y, dtype=np.float32)
        self.net.train(x, y, c, seed=c.seed * 1_000_003 + self.trainings)
        self.trainings += 1

    # --- scoring ------------------------------------------------------------------------------

    def update(self, timestamp: datetime | float | int | str, value: float) -> float:
        """Score one point (seen once, in order) and learn from it; returns a score in [0, 1]."""
        c = self.config
        t = _as_utc(timestamp)
        value = float(value)
        if not math.isfinite(value):
            return 0.0  # a missing reading: nothing to score, nothing to learn
        if self.last_ts is not None and t < self.last_ts:
            t = self.last_ts  # out of order: treat as a duplicate of the latest stamp
        gap = t - self.last_ts if self.last_ts is not None else self._typical_step()
        if self.last_ts is not None and gap > 0:
            if gap > c.gap_steps * self._typical_step():
                self.lags.clear()  # the recent past no longer predicts the next point
            self.steps.append(gap)
            self._step_cache = None

        base = self._baseline(t)
        if self.floor is None or self.count % c.floor_every == 0:
            self.floor = self._scale_floor()
        floor = self.floor
        z_seasonal = z_forecast = 0.0
        x = None
        if base is not None:
            med, sigma = base
            sigma = max(sigma, floor)
            residual = value - med
            z_seasonal = residual / sigma
            x = self._features(self.lags, t, gap, floor)
            if x is not None and self.net is not None and self.count >= c.warmup:
                mu, log_sigma = self.net.forward(x)
                z_forecast = (residual / floor - mu) / math.exp(min(max(log_sigma, -5.0), 5.0))
            self.residuals.append(residual)
        w = c.forecast_weight
        surprise = (1 - w) * _surprise(z_seasonal) + w * _surprise(z_forecast)
        new_level = self._new_level(value, z_seasonal) if self.count >= c.warmup else 0.0
        score = self._likelihood(surprise, new_level, abs(z_seasonal))

        # learn from the point
        if x is not None and base is not None:  # x is made only from a baseline
            self.pairs_x.append(x.tolist())
            self.pairs_y.append(float(np.clip((value - base[0]) / floor, -10, 10)))
        if base is not None:
            self.lags.append(value - base[0])
        self._learn_seasonal(t, value)
        self._visit(value)
        self.count += 1
        self.last_ts = t
        if (self.count + self.phase) % c.train_every == 0 and len(self.pairs_y) >= c.batch:
            self._retrain()
        return score

    # --- the new-level channel --------------------------------------------------------------

    def _level_key(self, value: float) -> tuple[int, int]:
        """The level of a value: its sign and its bin on a log scale (bins ``level_width`` wide,
        relative), so that levels mean the same at every scale of a series."""
        if value == 0.0:
            return 0, 0
        width = math.log1p(self.config.level_width)
        return (1 if value > 0 else -1), math.floor(math.log(abs(value)) / width)

    def _visits(self, key: tuple[int, int]) -> float:
        """How often the series was at a level lately: each visit fades by half every
        ``level_half_life`` points (an infinite half-life: never)."""
        found = self.levels.get(key)
        if found is None:
            return 0.0
        visits, at = found
        half_life = self.config.level_half_life
        return visits if math.isinf(half_life) else visits * 0.5 ** ((self.count - at) / half_life)

    def _new_level(self, value: float, z: float) -> float:
        """The new-level channel's score of a point: 0, or at least 0.99 for a point that is far
        off its seasonal median (``level_z``) at a level the series has not been at lately (at
        most ``level_visits`` recent visits to it and its two neighbouring bins), rising towards
        1 with the distance."""
        c = self.config
        if abs(z) < c.level_z:
            return 0.0
        sign, k = key = self._level_key(value)
        near = [key] if sign == 0 else [(sign, k - 1), key, (sign, k + 1)]
        if sum(self._visits(level) for level in near) > c.level_visits:
            return 0.0
        return 0.99 + 0.01 * (1.0 - c.level_z / abs(z))

    def _visit(self, value: float) -> None:
        """Count a visit to the value's level; forget levels whose visits have faded away."""
        key = self._level_key(value)
        self.levels[key] = [self._visits(key) + 1.0, float(self.count)]
        half_life = self.config.level_half_life
        if math.isfinite(half_life) and self.count % max(int(half_life), 1) == 0:
            self.levels = {k: v for k, v in self.levels.items() if self._visits(k) >= 1e-3}

    # --- the anomaly likelihood ---------------------------------------------------------------

    def _likelihood(self, surprise: float, new_level: float = 0.0, distance: float = 0.0) -> float:
        """HTM-style anomaly likelihood of the recent surprise, damped right after an alert.

        Two channels, each a z-score against its own history of the last ``long_window`` points:
        the mean surprise of the last ``short_window`` points (a spike), and the least surprise of
        the last ``sustain_window`` points (a deviation that lasts), the latter counted at
        ``sustain_weight``. The stronger one gives the tail probability; the new-level channel's
        score (``new_level``) replaces it when higher. ``distance`` is the point's |z| from its
        seasonal median: within the refractory period a point alerts again only with a score
        higher by ``realert_margin`` or twice the alert's distance (at least twice ``level_z``;
        scores stop at 1, distances do not: a far bigger second event is not hidden).
        """
        c = self.config
        history = self.surprises
        self.surprise_sum, self.surprise_sq = _push(
            history, surprise, self.surprise_sum, self.surprise_sq
        )
        n = len(history)
        run = min(history[-k] for k in range(1, min(c.sustain_window, n) + 1))
        self.sustained_sum, self.sustained_sq = _push(
            self.sustained, run, self.sustained_sum, self.sustained_sq
        )
        if n < max(c.short_window * 10, 50):
            return 0.0
        short = sum(history[-k] for k in range(1, c.short_window + 1)) / c.short_window
        z = max(
            _standardised(short, self.surprise_sum, self.surprise_sq, n),
            c.sustain_weight
            * _standardised(run, self.sustained_sum, self.sustained_sq, len(self.sustained)),
        )
        tail = _gauss_tail(z)  # how unlikely the recent surprise is
        score = min(1.0, max(0.0, math.log(tail + 1e-10) / math.log(1e-10)))
        score = max(score, new_level)
        # one event, one detection: right after an alert only a clearly higher score counts in
        # full (by a margin: near 1 the scores of one event's points differ in the 4th decimal)
        self.alert_age += 1
        damped = score
        far = 2 * max(self.alert_distance, c.level_z)  # a far bigger event: never hidden
        higher = score > self.alert_peak + c.realert_margin or distance > far
        if self.alert_age <= c.refractory and not higher:
            damped = score * 0.5
        if score >= 0.5 and (self.alert_age > c.refractory or higher):
            self.alert_age = 0
            self.alert_peak = score
            self.alert_distance = distance
        return damped

    # --- forecasting ----------------------------------------------------------------------

    def forecast(self, steps: int, level: float = 0.9) -> Forecast:
        """The next ``steps`` points at the series' typical step, with a ``level`` interval.

        The seasonal median gives the expected value; the forecaster (once trained) corrects the
        first steps from the recent residuals, iterating on its own means. The interval combines
        the forecaster's spread with the bin's robust spread.
        """
        if self.last_ts is None:
            raise DetectorError("forecast before any point was seen")
        step = self._typical_step()
        z = math.sqrt(2.0) * _erfinv(level)
        floor = self._scale_floor()
        lags = deque(self.lags, maxlen=self.config.lags)
        out = Forecast([], [], [], [], level)
        for k in range(1, steps + 1):
            t = self.last_ts + k * step
            base = self._baseline(t)
            med, sigma = (base[0], max(base[1], floor)) if base else (self.recent[-1], floor)
            mean, spread = med, sigma
            x = self._features(lags, t, step, floor) if self.net is not None else None
            if x is not None and self.net is not None:
                mu, log_sigma = self.net.forward(x)
                mean = med + mu * floor
                spread = max(math.exp(log_sigma) * floor, 0.5 * sigma)
                lags.append(mu * floor)
            out.timestamps.append(datetime.fromtimestamp(t, UTC))
            out.mean.append(mean)
            out.lower.append(mean - z * spread)
            out.upper.append(mean + z * spread)
        return out

    # --- persistence ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The whole state as plain JSON-able data."""
        return {
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "count": self.count,
            "last_ts": self.last_ts,
            "steps": list(self.steps),
            "week_bins": {str(k): list(v) for k, v in self.week_bins.items()},
            "day_bins": {str(k): list(v) for k, v in self.day_bins.items()},
            "kind_bins": {str(k): list(v) for k, v in self.kind_bins.items()},
            "kind_first": {str(k): v for k, v in self.kind_first.items()},
            "recent": list(self.recent),
            "residuals": list(self.residuals),
            "lags": list(self.lags),
            # the training pairs are most of the state: packed arrays, not JSON numbers
            "pairs_x": _encode(
                np.asarray(self.pairs_x, dtype=np.float32).reshape(-1, self._inputs)
            ),
            "pairs_y": _encode(np.asarray(self.pairs_y, dtype=np.float64)),
            "net": self.net.to_dict() if self.net is not None else None,
            "trainings": self.trainings,
            "surprises": list(self.surprises),
            "alert_age": self.alert_age,
            "alert_peak": self.alert_peak,
            "alert_distance": self.alert_distance,
            "floor": self.floor,
            "surprise_sum": self.surprise_sum,
            "surprise_sq": self.surprise_sq,
            "sustained": list(self.sustained),
            "sustained_sum": self.sustained_sum,
            "sustained_sq": self.sustained_sq,
            "levels": [[sign, k, *visit] for (sign, k), visit in self.levels.items()],
            "phase": self.phase,
            "timezone": self.timezone,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Detector:
        if state.get("version") != STATE_VERSION:
            raise DetectorError(f"detector state version {state.get('version')} != {STATE_VERSION}")
        config = DetectorConfig(**state["config"])
        memory = config.bin_memory
        return cls(
            config=config,
            count=state["count"],
            last_ts=state["last_ts"],
            steps=deque(state["steps"], maxlen=64),
            week_bins={int(k): deque(v, maxlen=memory) for k, v in state["week_bins"].items()},
            day_bins={int(k): deque(v, maxlen=memory) for k, v in state["day_bins"].items()},
            kind_bins={int(k): deque(v, maxlen=memory) for k, v in state["kind_bins"].items()},
            kind_first={int(k): int(v) for k, v in state["kind_first"].items()},
            recent=deque(state["recent"]),
            residuals=deque(state["residuals"]),
            lags=deque(state["lags"]),
            pairs_x=deque(_decode(state["pairs_x"]).tolist()),
            pairs_y=deque(_decode(state["pairs_y"]).tolist()),
            net=_Net.from_dict(state["net"]) if state["net"] is not None else None,
            trainings=state["trainings"],
            surprises=deque(state["surprises"]),
            alert_age=state["alert_age"],
            alert_peak=state["alert_peak"],
            alert_distance=state["alert_distance"],
            floor=state["floor"],
            surprise_sum=state["surprise_sum"],
            surprise_sq=state["surprise_sq"],
            sustained=deque(state["sustained"]),
            sustained_sum=state["sustained_sum"],
            sustained_sq=state["sustained_sq"],
            levels={(int(sign), int(k)): [visits, at] for sign, k, visits, at in state["levels"]},
            phase=state.get("phase", 0),
            timezone=state["timezone"],
        )

    def to_bytes(self) -> bytes:
        return json.dumps(self.state_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Detector:
        return cls.from_state(json.loads(raw))


def phase_for(series: str, config: DetectorConfig) -> int:
    """A stable retraining offset for a named series (see ``Detector.phase``)."""
    return zlib.crc32(series.encode()) % config.train_every


@functools.cache  # a handful of interval levels, asked for at every forecast
def _erfinv(p: float) -> float:
    """Inverse error function by bisection on math.erf (only for interval levels)."""
    lo, hi = 0.0, 6.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if math.erf(mid) < p else (lo, mid)
    return 0.5 * (lo + hi)


def warm_up() -> None:
    """Import torch and build its optimiser once (the first import takes seconds)."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def score_series(timestamps: Any, values: Any, config: DetectorConfig | None = None) -> np.ndarray:
    """Run a fresh detector over a whole series, point by point; the scores as an array."""
    detector = Detector(config or DetectorConfig())
    return np.array([detector.update(t, v) for t, v in zip(timestamps, values, strict=True)])


__all__ = ["Detector", "DetectorConfig", "DetectorError", "Forecast", "score_series", "warm_up"]
