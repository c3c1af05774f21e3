"""The Cologne traffic twin: SUMO (libsumo, in-process) publishing what its detectors see.

Every ``PERIOD_S`` simulated seconds the twin publishes one TrafficFlowObserved per approach
sensor (network.py) to the traffic topic and, per virtual station (environment.py), one
AirQualityObserved and one NoiseLevelObserved to the environment topic.

Time: simulated second ``scenario.begin`` maps to ``start`` (wall clock, UTC); the run is paced
to ``speedup`` simulated seconds per wall second (a huge value = as fast as the CPU allows).

Demand: the RESCO scenarios hold one morning hour of trips. The twin injects that hour again
for every simulated hour (depart times shifted by 3600 s · h), times ``demand_scale``: the
integer part in whole copies, the fraction as a seeded random share of the trips. Like the
evaluation fixture, it starts from an empty network with a 10-minute warm-up that replays the
hour's last 10 minutes; nothing is published during the warm-up.

Control seam: :meth:`Twin.signal_state` reads the live plans; :meth:`Twin.set_green` changes a
green phase's duration within its [min, max] (the control-action part calls it).
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cityos import events
from cityos.streaming.sources.environment import RADIUS_M, Station
from cityos.streaming.sources.network import Layout, NetworkError, Scenario
from cityos.topics import Topics

log = logging.getLogger(__name__)

PERIOD_S = 60
WARMUP_S = 600
TELEPORT_S = 300
PROGRESS_EVERY_S = 10.0  # wall seconds between progress log lines


@dataclass(frozen=True)
class Trip:
    id: str
    offset_s: float  # depart time after the scenario's begin
    from_edge: str
    to_edge: str
    vtype: str


@dataclass
class Demand:
    """The scenario's hour of trips, and the vehicle types they use (kept as XML)."""

    trips: list[Trip]
    vtypes_xml: list[str]

    @classmethod
    def read(cls, scenario: Scenario) -> Demand:
        root = ET.parse(scenario.routes).getroot()  # noqa: S314 - a shipped scenario file
        trips = [
            Trip(
                el.get("id", ""),
                float(el.get("depart", "0")) - scenario.begin,
                el.get("from", ""),
                el.get("to", ""),
                el.get("type", "DEFAULT_VEHTYPE"),
            )
            for el in root.iter("trip")
        ]
        if not trips:
            raise NetworkError(f"{scenario.routes} has no <trip> elements to repeat")
        vtypes = [ET.tostring(el, encoding="unicode") for el in root.iter("vType")]
        return cls(trips, vtypes)

    def hour(self, h: int, scale: float, rng: random.Random) -> list[tuple[str, Trip, float]]:
        """(vehicle id, trip, depart offset) for simulated hour h (h = -1: the warm-up)."""
        copies = int(scale)
        chosen: list[tuple[str, Trip, float]] = []
        for trip in self.trips:
            n = copies + (1 if rng.random() < scale - int(scale) else 0)
            if h < 0 and trip.offset_s < 3600 - WARMUP_S:
                continue
            for k in range(n):
                chosen.append((f"{trip.id}.h{h}.{k}", trip, trip.offset_s + 3600 * h))
        return chosen


@dataclass
class PhaseState:
    index: int  # 0-based green-phase index
    sumo_index: int
    green_s: float
    intergreen_s: float
    min_green_s: float
    max_green_s: float


@dataclass
class SignalState:
    tls_id: str
    program_id: str
    sumo_phase: int  # the SUMO phase running now (greens, yellows, all-reds)
    green_phase: int | None  # the running green phase, None during an intergreen
    seconds_to_switch: float
    phases: list[PhaseState] = field(default_factory=list)


@dataclass
class RunStats:
    periods: int = 0
    traffic_events: int = 0
    environment_events: int = 0
    simulated_s: float = 0.0


def stations_for(layout: Layout, net: Any) -> list[Station]:
    """One virtual station per intersection, seeing the edges within RADIUS_M of its node."""
    stations = []
    for number, signal in enumerate(layout.signals, 1):
        hits = net.getNeighboringEdges(signal.x, signal.y, RADIUS_M)
        edges = sorted((e.getID(), round(d, 1)) for e, d in hits)
        stations.append(
            Station(
                sensor_id=f"{layout.city_id}-aq-{number:02d}",
                name=f"{signal.name} (modelled)",
                lon=signal.lon,
                lat=signal.lat,
                edges=edges,
            )
        )
    return stations


class Twin:
    """One SUMO run; libsumo allows one per process, so a Twin is used as a context manager."""

    def __init__(
        self,
        scenario: Scenario,
        layout: Layout,
        stations: list[Station],
        *,
        demand_scale: float = 1.0,
        seed: int = 42,
        work_dir: Path | None = None,
    ):
        self.scenario, self.layout, self.stations = scenario, layout, stations
        self.demand = Demand.read(scenario)
        self.demand_scale = demand_scale
        self.seed = seed
        self._rng = random.Random(seed)  # noqa: S311 - reproducible demand, not secrets
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.work_dir = work_dir
        self._hours_injected = -2
        self._sumo: Any = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Twin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        import libsumo

        if self.work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cityos-twin-")
            self.work_dir = Path(self._tmp.name)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        additional = self._write_detectors(self.work_dir / "detectors.add.xml")
        vtypes = self.work_dir / "vtypes.rou.xml"
        vtypes.write_text("<routes>\n" + "\n".join(self.demand.vtypes_xml) + "\n</routes>\n")
        begin = self.scenario.begin - WARMUP_S
        libsumo.start(
            [
                "sumo",
                "-n",
                str(self.scenario.net),
                "-r",
                str(vtypes),
                "-a",
                str(additional),
                "-b",
                str(begin),
                "--seed",
                str(self.seed),
                "--time-to-teleport",
                str(TELEPORT_S),
                "--no-step-log",
                "true",
                "--no-warnings",
                "true",
                "--duration-log.disable",
                "true",
            ]
        )
        self._sumo = libsumo
        log.info("SUMO started on %s (work dir %s)", self.scenario.net.name, self.work_dir)

    def close(self) -> None:
        if self._sumo is not None:
            self._sumo.close()
            self._sumo = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _write_detectors(self, path: Path) -> Path:
        lines = ["<additional>"]
        for ap in self.layout.approaches:
            for lane_id, pos in ap.lanes:
                lines.append(
                    f'  <inductionLoop id="{ap.sensor_id}__{lane_id}" lane="{lane_id}" '
                    f'pos="{pos:.2f}" period="{PERIOD_S}" file="NUL"/>'
                )
        lines.append("</additional>")
        path.write_text("\n".join(lines) + "\n")
        return path

    # ------------------------------------------------------------------ simulation
    @property
    def time(self) -> float:
        """Simulated seconds since the scenario's begin (negative during the warm-up)."""
        return self._sumo.simulation.getTime() - self.scenario.begin

    def _inject(self, upto_hour: int) -> None:
        """Add the trips of every simulated hour up to ``upto_hour`` not yet added."""
        while self._hours_injected < upto_hour:
            self._hours_injected += 1
            h = self._hours_injected
            for vid, trip, offset in self.demand.hour(h, self.demand_scale, self._rng):
                route = f"r.{vid}"
                self._sumo.route.add(route, [trip.from_edge, trip.to_edge])  # routed on insert
                self._sumo.vehicle.add(
                    vid, route, typeID=trip.vtype, depart=f"{self.scenario.begin + offset:.2f}"
                )

    def step(self) -> None:
        """Advance one simulated second, adding demand one hour ahead."""
        self._inject(int(max(self.time, 0) // 3600) + 1)
        self._sumo.simulationStep()
        if self.time > 0:
            edge_api = self._sumo.edge
            for station in self.stations:
                station.sample(edge_api)

    def warm_up(self) -> None:
        while self.time < 0:
            self.step()
        for station in self.stations:  # the warm-up's readings are not published
            station.reset()

    def detector_events(self, start: datetime, end: datetime) -> list[events.Event]:
        """One TrafficFlowObserved per approach for the loop interval that just closed."""
        loop = self._sumo.inductionloop
        out = []
        for ap in self.layout.approaches:
            count, weighted, occupancy = 0, 0.0, []
            for lane_id, _ in ap.lanes:
                det = f"{ap.sensor_id}__{lane_id}"
                n = loop.getLastIntervalVehicleNumber(det)
                count += n
                if n > 0:
                    weighted += n * loop.getLastIntervalMeanSpeed(det)
                # SUMO reports a tiny negative share for some empty intervals; clamp to 0
                occupancy.append(max(0.0, loop.getLastIntervalOccupancy(det)) / 100.0)
            speed = weighted / count * 3.6 if count else None
            out.append(
                events.traffic_flow(
                    ap.sensor_id,
                    start,
                    end,
                    intensity=count,
                    occupancy=min(1.0, sum(occupancy) / len(occupancy)),
                    average_speed_kmh=speed,
                )
            )
        return out

    # ------------------------------------------------------------------ control seam
    def signal_state(self) -> dict[str, SignalState]:
        """The plan in force at every signal, read live from SUMO."""
        tl = self._sumo.trafficlight
        out = {}
        for signal in self.layout.signals:
            tid = signal.tls_id
            program = tl.getProgram(tid)
            logic = next(lg for lg in tl.getAllProgramLogics(tid) if lg.programID == program)
            running = tl.getPhase(tid)
            phases = [
                PhaseState(
                    p.index,
                    p.sumo_index,
                    float(logic.phases[p.sumo_index].duration),
                    p.intergreen_s,
                    p.min_green_s,
                    p.max_green_s,
                )
                for p in signal.phases
            ]
            green = next((p.index for p in signal.phases if p.sumo_index == running), None)
            out[tid] = SignalState(
                tid,
                program,
                running,
                green,
                tl.getNextSwitch(tid) - self._sumo.simulation.getTime(),
                phases,
            )
        return out

    def set_green(self, tls_id: str, phase_index: int, green_s: float) -> None:
        """Set a green phase's duration (from its next start) within [min_green, max_green]."""
        signal = self.layout.signal(tls_id)
        if not 0 <= phase_index < len(signal.phases):
            raise ValueError(f"{tls_id} has green phases 0..{len(signal.phases) - 1}")
        phase = signal.phases[phase_index]
        if not phase.min_green_s <= green_s <= phase.max_green_s:
            raise ValueError(
                f"green {green_s:g} s of {tls_id} phase {phase_index} is outside "
                f"[{phase.min_green_s:g}, {phase.max_green_s:g}] s"
            )
        tl = self._sumo.trafficlight
        program = tl.getProgram(tls_id)
        logic = next(lg for lg in tl.getAllProgramLogics(tls_id) if lg.programID == program)
        logic.phases[phase.sumo_index].duration = float(green_s)
        logic.currentPhaseIndex = tl.getPhase(tls_id)
        tl.setProgramLogic(tls_id, logic)
        log.info("%s: green phase %d set to %g s", tls_id, phase_index, green_s)


class Pacer:
    """Sleeps so that simulated time advances ``speedup`` times faster than the wall clock."""

    def __init__(self, speedup: float):
        self.speedup = speedup
        self._wall0 = time.monotonic()

    def wait(
        self, simulated_s: float, idle: Callable[[], object] | None = None, every_s: float = 0.05
    ) -> None:
        """Sleep until ``simulated_s`` is due; ``idle`` (control polling) runs every ``every_s``
        wall seconds meanwhile, so a slow twin still takes a change within ``every_s``."""
        if math.isinf(self.speedup) or self.speedup >= 1e6:
            return
        while (ahead := self._wall0 + simulated_s / self.speedup - time.monotonic()) > 0:
            if idle is None:
                time.sleep(ahead)
                return
            idle()
            time.sleep(min(ahead, every_s))


def default_start(
    speedup: float, duration_s: float | None, now: datetime | None = None
) -> datetime:
    """Wall time of simulated t=0 when twin_start is unset.

    Real time: now. Accelerated and bounded: now minus the duration, so the run ends at about
    now and never stamps an event in the future (the pipeline rejects those). Accelerated and
    unbounded: now, and event times run ahead of the clock (logged as a warning).
    """
    now = now or datetime.now(UTC)
    if speedup > 1 and duration_s:
        return now - timedelta(seconds=duration_s)
    if speedup > 1:
        log.warning("accelerated run without a duration: event times will run ahead of now")
    return now


def run(
    twin: Twin,
    producer: Any,
    topics: Topics,
    *,
    start: datetime,
    speedup: float,
    duration_s: float | None,
    stop: threading.Event | None = None,
    progress: Callable[[float], None] | None = None,
    control: Callable[[], object] | None = None,
) -> RunStats:
    """Simulate and publish until ``duration_s`` simulated seconds passed or ``stop`` is set.

    ``progress`` is called with the simulated seconds after every published period; ``control``
    (``ControlLoop.poll``, non-blocking) between simulation steps from the warm-up's end, and
    every 50 ms while the pacer waits."""
    stop = stop or threading.Event()
    stats = RunStats()
    twin.warm_up()
    pacer = Pacer(speedup)
    last_log = time.monotonic()
    while not stop.is_set() and (duration_s is None or twin.time < duration_s):
        twin.step()
        if control is not None:
            control()
        t = twin.time
        pacer.wait(t, idle=control)
        if t % PERIOD_S == 0:
            end = start + timedelta(seconds=t)
            begin = end - timedelta(seconds=PERIOD_S)
            for event in twin.detector_events(begin, end):
                producer.send(topics.traffic, event)
                stats.traffic_events += 1
            for station in twin.stations:
                for event in station.emit(begin, end):
                    producer.send(topics.environment, event)
                    stats.environment_events += 1
            stats.periods += 1
            if progress is not None:
                progress(t)
        if time.monotonic() - last_log >= PROGRESS_EVERY_S:
            last_log = time.monotonic()
            log.info(
                "twin at %s (+%.0f s simulated): %d traffic, %d environment events, "
                "%d delivered, %d failed",
                events.iso(start + timedelta(seconds=t)),
                t,
                stats.traffic_events,
                stats.environment_events,
                producer.stats.sent,
                producer.stats.failed,
            )
    stats.simulated_s = twin.time
    return stats


@dataclass
class Prepared:
    """Everything a twin run needs, built once from the scenario and the city's geo data."""

    scenario: Scenario
    layout: Layout
    stations: list[Station]
    city: Any  # cityos.geo.CityGeo, or None for a city without a geo spec


def city_of(network: str) -> str:
    """'cologne8' -> 'cologne', 'ingolstadt21' -> 'ingolstadt'."""
    return network.rstrip("0123456789") or network


def prepare(network: str, data_dir: Path) -> Prepared:
    """Scenario, layout named by the city's street register (if it has one), stations."""
    from cityos.geo import SpecError, available_cities
    from cityos.streaming.sources.network import EdgeNamer, build_layout, find_scenario, read_net
    from cityos.streaming.sources.registry import open_city

    scenario = find_scenario(network, data_dir)
    net = read_net(scenario)
    city_id = city_of(scenario.name)
    city = None
    if city_id in available_cities():
        city = open_city(city_id, data_dir, streets=True)
    try:
        namer = city.street_index() if city is not None else EdgeNamer(net)
    except SpecError:
        namer = EdgeNamer(net)
    layout = build_layout(net, namer, city_id)
    return Prepared(scenario, layout, stations_for(layout, net), city)
