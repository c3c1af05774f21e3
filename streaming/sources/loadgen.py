"""Load generator: events at a target rate for benchmarks, with optional malformed events.

Good events use realistic value distributions (seeded): traffic counts of a busy urban
approach per minute, occupancy and speeds that fall as counts rise; air quality log-normal
around a polluted-city mean; noise around 65 dB(A). Bad events (``malformed_share``) are
drawn from :data:`MALFORMED`, one named generator per kind of fault seen in the field, for the
dead-letter tests: each must be rejected with a reason (``unknown_sensor`` passes the schema and
is caught by the pipeline's sensor look-up).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from cityos import events
from cityos.streaming.producer import ProducerError, make_producer
from cityos.topics import Topics

log = logging.getLogger(__name__)

PERIOD = timedelta(minutes=1)
TICK_S = 0.005  # pacing granularity
OVERSIZE_BYTES = 256 * 1024  # well above the pipeline's max_event_bytes (64 KiB default)


@dataclass(frozen=True)
class Target:
    sensor_id: str
    kind: str  # 'traffic' | 'air_quality'


def synthetic_targets(n: int, air_share: float = 0.2) -> list[Target]:
    """N made-up sensors: ids 'load-tr-NNNNN' and 'load-aq-NNNNN'."""
    n_air = int(round(n * air_share))
    return [Target(f"load-tr-{i:05d}", "traffic") for i in range(n - n_air)] + [
        Target(f"load-aq-{i:05d}", "air_quality") for i in range(n_air)
    ]


def registered_targets(conn: Any, city_id: str | None = None) -> list[Target]:
    """The sensors of the serving table (optionally of one city)."""
    query = "SELECT sensor_id, kind FROM sensors"
    params: tuple[str, ...] = ()
    if city_id:
        query, params = query + " WHERE city_id = %s", (city_id,)
    return [Target(sid, kind) for sid, kind in conn.execute(query + " ORDER BY sensor_id", params)]


# --------------------------------------------------------------------------- good events
def traffic_event(rng: random.Random, sensor_id: str, now: datetime) -> events.Event:
    count = max(0, int(rng.lognormvariate(math.log(12), 0.6)))  # vehicles per minute
    occupancy = min(1.0, rng.betavariate(1.5, 12) + count / 400)
    speed = None if count == 0 else max(3.0, rng.gauss(48 - count * 0.6, 8))
    return events.traffic_flow(
        sensor_id, now - PERIOD, now, intensity=count, occupancy=occupancy, average_speed_kmh=speed
    )


def air_event(rng: random.Random, sensor_id: str, now: datetime) -> events.Event:
    pm25 = rng.lognormvariate(math.log(35), 0.8)
    return events.air_quality(
        sensor_id,
        now - PERIOD,
        pm25=pm25,
        pm10=pm25 * rng.uniform(1.1, 1.8),
        no2=rng.lognormvariate(math.log(40), 0.5),
        o3=rng.lognormvariate(math.log(50), 0.6),
        so2=rng.lognormvariate(math.log(8), 0.7),
        co=rng.lognormvariate(math.log(800), 0.6),
        temperature=rng.gauss(12, 8),
        relative_humidity=rng.uniform(0.2, 0.95),
        wind_speed=rng.expovariate(1 / 2.5),
    )


def noise_event(rng: random.Random, sensor_id: str, now: datetime) -> events.Event:
    laeq = rng.gauss(65, 6)
    return events.noise_level(
        sensor_id, now - PERIOD, now, laeq=laeq, lamax=laeq + rng.uniform(3, 15)
    )


# --------------------------------------------------------------------------- bad events
Bad = tuple[bytes | None, bytes]


def _json(event: Any) -> bytes:
    return orjson.dumps(event)


def _with(event: events.Event, **changes: Any) -> bytes:
    return _json({**event, **changes})


def _nan(event: events.Event) -> bytes:
    # what Python's json.dumps writes for float('nan'): not JSON, but common in the wild
    text = _json({**event, "occupancy": 0.5}).decode().replace('"occupancy":0.5', '"occupancy":NaN')
    return text.encode()


MALFORMED: dict[str, Callable[[random.Random, events.Event], bytes]] = {
    "wrong_type": lambda rng, e: _with(e, intensity=str(e["intensity"])),
    "nan": lambda rng, e: _nan(e),
    "negative_count": lambda rng, e: _with(e, intensity=-rng.randint(1, 50)),
    "occupancy_over_one": lambda rng, e: _with(e, occupancy=rng.uniform(1.01, 100)),
    "far_future": lambda rng, e: _with(
        e,
        dateObservedFrom=events.iso(datetime.now(UTC) + timedelta(days=30)),
        dateObservedTo=events.iso(datetime.now(UTC) + timedelta(days=30, minutes=1)),
    ),
    "ancient": lambda rng, e: _with(
        e, dateObservedFrom="1970-01-01T00:00:00Z", dateObservedTo="1970-01-01T00:01:00Z"
    ),
    "period_reversed": lambda rng, e: _with(
        e, dateObservedFrom=e["dateObservedTo"], dateObservedTo=e["dateObservedFrom"]
    ),
    "no_timezone": lambda rng, e: _with(e, dateObservedFrom=e["dateObservedFrom"].rstrip("Z")),
    "missing_field": lambda rng, e: _json({k: v for k, v in e.items() if k != "refDevice"}),
    "unknown_type": lambda rng, e: _with(e, type="ParkingSpot"),
    "not_an_object": lambda rng, e: _json([e]),
    "truncated": lambda rng, e: _json(e)[: rng.randint(1, 40)],
    "binary_garbage": lambda rng, e: bytes(rng.getrandbits(8) for _ in range(rng.randint(8, 200))),
    "oversize": lambda rng, e: _with(e, note="x" * OVERSIZE_BYTES),
    "unknown_sensor": lambda rng, e: _with(e, refDevice=f"unknown-{rng.randrange(10**6):06d}"),
}


def malformed(kind: str, rng: random.Random, now: datetime | None = None) -> Bad:
    """(key, value) of one bad event of the named kind, built from a good traffic event."""
    good = traffic_event(rng, "load-tr-00000", now or datetime.now(UTC))
    value = MALFORMED[kind](rng, good)
    key = None if kind in ("binary_garbage", "truncated") else b"load-tr-00000"
    return key, value


# --------------------------------------------------------------------------- the loop
@dataclass
class LoadStats:
    target_rate: float
    duration_s: float = 0.0
    sent: int = 0
    malformed: int = 0
    delivered: int = 0
    failed: int = 0

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.duration_s if self.duration_s else 0.0


class LoadGenerator:
    def __init__(
        self,
        targets: list[Target],
        *,
        malformed_share: float = 0.0,
        seed: int = 7,
        malformed_kinds: list[str] | None = None,
    ):
        if not targets:
            raise ValueError("no sensors to generate events for")
        if not 0 <= malformed_share <= 1:
            raise ValueError(f"malformed share {malformed_share} is not within 0..1")
        unknown = set(malformed_kinds or ()) - set(MALFORMED)
        if unknown:
            raise ValueError(
                f"unknown malformed kinds {sorted(unknown)}; known: {', '.join(MALFORMED)}"
            )
        self.targets = targets
        self.malformed_share = malformed_share
        self.kinds = malformed_kinds or list(MALFORMED)
        self.rng = random.Random(seed)  # noqa: S311 - reproducible load, not secrets

    def next(self, topics: Topics, now: datetime) -> tuple[str, events.Event | None, Bad | None]:
        """(topic, good event or None, bad (key, value) or None)."""
        target = self.targets[self.rng.randrange(len(self.targets))]
        if self.malformed_share and self.rng.random() < self.malformed_share:
            kind = self.kinds[self.rng.randrange(len(self.kinds))]
            return topics.traffic, None, malformed(kind, self.rng, now)
        if target.kind == "traffic":
            return topics.traffic, traffic_event(self.rng, target.sensor_id, now), None
        build = air_event if self.rng.random() < 0.5 else noise_event
        return topics.environment, build(self.rng, target.sensor_id, now), None

    def run(
        self,
        producer: Any,
        topics: Topics,
        *,
        rate: float,
        duration_s: float,
        stop: threading.Event | None = None,
    ) -> LoadStats:
        """Send at ``rate`` events/s for ``duration_s`` wall seconds; flushes at the end."""
        stop = stop or threading.Event()
        stats = LoadStats(target_rate=rate)
        t0 = time.monotonic()
        last_log = t0
        while not stop.is_set():
            elapsed = time.monotonic() - t0
            if elapsed >= duration_s:
                break
            now = datetime.now(UTC)
            for _ in range(int(rate * elapsed) + 1 - stats.sent):
                topic, event, bad = self.next(topics, now)
                if bad is not None:
                    producer.send_raw(topic, *bad)
                    stats.malformed += 1
                else:
                    producer.send(topic, event)
                stats.sent += 1
            if time.monotonic() - last_log >= 5:
                last_log = time.monotonic()
                log.info(
                    "load: %d sent (%.0f/s), %d delivered, %d failed",
                    stats.sent,
                    stats.sent / (last_log - t0),
                    producer.stats.sent,
                    producer.stats.failed,
                )
            time.sleep(TICK_S)
        stats.duration_s = time.monotonic() - t0
        producer.flush()
        stats.delivered, stats.failed = producer.stats.sent, producer.stats.failed
        return stats


# --------------------------------------------------------------------------- in its own process
def run_in_process(
    bootstrap: str,
    client: str,
    targets: list[Target],
    topics: Topics,
    *,
    rate: float,
    duration_s: float,
    seed: int = 7,
    malformed_share: float = 0.0,
) -> LoadStats:
    """:meth:`LoadGenerator.run` in a child process, which makes its own producer.

    A generator in the same interpreter as a Spark driver competes for its GIL: every Py4J call
    of a micro-batch then waits for the generator's loop to let go of it. Sources never share
    the job's process in a deployment, so the latency benchmark must not either.
    """
    ctx = multiprocessing.get_context("spawn")  # no forked copy of a JVM gateway's threads
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_child,
        args=(
            send,
            bootstrap,
            client,
            targets,
            topics.prefix,
            rate,
            duration_s,
            seed,
            malformed_share,
        ),
        name="cityos-load",
        daemon=True,
    )
    child.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:
        outcome = f"its process ended with code {child.exitcode} before reporting"
    finally:
        child.join(timeout=30)
    if isinstance(outcome, str):
        raise ProducerError(f"the load generator failed: {outcome}")
    return outcome


def _child(
    send: Any,
    bootstrap: str,
    client: str,
    targets: list[Target],
    prefix: str,
    rate: float,
    duration_s: float,
    seed: int,
    malformed_share: float,
) -> None:
    """The child's side of :func:`run_in_process`: sends the LoadStats, or the error's text."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    outcome: LoadStats | str
    try:
        producer = make_producer(bootstrap, client, client_id="cityos-load")
        try:
            generator = LoadGenerator(targets, malformed_share=malformed_share, seed=seed)
            outcome = generator.run(producer, Topics(prefix), rate=rate, duration_s=duration_s)
        finally:
            producer.close()
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises
        outcome = f"{type(err).__name__}: {err}"
    send.send(outcome)
    send.close()
