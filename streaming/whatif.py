"""What-if before approval: a proposed signal-timing change simulated on the twin.

Two SUMO runs of the twin's network, side by side in two child processes (libsumo allows one
simulation per process), with the same demand: the twin's trips (:class:`Demand`, the same seed
and demand scale), the same 10-minute warm-up from an empty network, the same plan in force
(``plan``: the greens the twin runs now, where they differ from the scenario's). At the start of
the measured window one run keeps the plan ("current"), the other changes one green phase the way
:meth:`Twin.set_green` does ("changed"). ``start_hour`` places the window in the twin's repeated
demand hour (0: from the scenario's first minute).

Measured over the window, per run:

* network: average delay per vehicle that entered the network in the window, SUMO's time loss
  (time lost to driving below the desired speed, stops included) plus the time it waited to be
  inserted, from the trip info of every such vehicle, arrived or still travelling at the end;
  queue = vehicles halting (speed < 0.1 m/s) anywhere, mean and maximum over the simulated
  seconds; vehicles scheduled, inserted and completed (arrived) in the window;
* every approach of the changed intersection: delay = the edge's total time loss / vehicles that
  used it (SUMO edgeData), queue = vehicles halting on it, mean and maximum per second; and the
  same for the approaches the phase serves, and for all approaches together.

``simulate_change`` returns a :class:`WhatIf`; ``whatif_for_action`` is the call for an action's
target and params; :class:`WhatIfRunner` runs it in the background and stores the JSON in
``actions.what_if`` (migration 0006).
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cityos.errors import CityOSError
from cityos.streaming.sources.network import Layout, Signal

log = logging.getLogger(__name__)

MAX_MINUTES = 240.0
MAX_START_HOUR = 24.0
DEFAULT_SEED = 42  # the twin's


class WhatIfError(CityOSError):
    """The change cannot be simulated: unknown signal or phase, green out of bounds, bad window."""


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Measure:
    """Delay and queue over a set of roads (or the whole network) during the window."""

    delay_s: float | None  # mean time lost per vehicle; None when no vehicle was there
    queue_mean: float  # halting vehicles, mean over the simulated seconds
    queue_max: int  # and the most at any second
    vehicles: int  # vehicles the delay is averaged over


@dataclass(frozen=True)
class Run:
    """One plan simulated: what it measured and how long it took."""

    greens: dict[int, float]  # the changed signal's green per phase in this run
    network: Measure
    approaches: dict[str, Measure]  # by approach edge id
    vehicles_scheduled: int  # demand whose departure falls in the window
    vehicles_inserted: int  # vehicles that entered the network in the window
    vehicles_completed: int  # trips that ended in the window
    demand_digest: str  # SHA-256 over the scheduled vehicles and their departure times
    wall_s: float
    halting: dict[str, list[int]] = field(repr=False)  # per approach edge, per simulated second


@dataclass(frozen=True)
class ApproachInfo:
    edge_id: str
    sensor_id: str
    name: str  # '<street> <bound> at <cross street>', as the sensor is named
    short: str  # '<street> <bound>'
    served: bool  # the changed phase gives it green


@dataclass(frozen=True)
class WhatIf:
    """The current plan and the changed one, simulated with the same demand."""

    network: str
    tls_id: str
    intersection: str
    phase_index: int
    phase: str  # the phase's description
    intergreen_s: float  # per phase of the changed signal, for the cycle length
    approaches: list[ApproachInfo]
    minutes: float
    start_hour: float
    seed: int
    demand_scale: float
    current: Run
    changed: Run
    wall_s: float

    def cycle_s(self, run: Run) -> float:
        return sum(run.greens.values()) + self.intergreen_s

    def areas(self) -> list[dict[str, Any]]:
        """Served approaches, all approaches, each approach, and the network: both plans."""
        served = [a.edge_id for a in self.approaches if a.served]
        every = [a.edge_id for a in self.approaches]
        rows: list[tuple[str, str, Measure, Measure, dict[str, Any]]] = []
        if served and served != every:
            rows.append(
                (
                    "served",
                    f"approaches served by phase {self.phase_index}",
                    _combine(self.current, served),
                    _combine(self.changed, served),
                    {"short_label": f"served by phase {self.phase_index}"},
                )
            )
        rows.append(
            (
                "intersection",
                f"all approaches of {self.intersection}",
                _combine(self.current, every),
                _combine(self.changed, every),
                {"short_label": "all approaches"},
            )
        )
        for a in self.approaches:
            rows.append(
                (
                    "approach",
                    a.name,
                    self.current.approaches[a.edge_id],
                    self.changed.approaches[a.edge_id],
                    {
                        "short_label": a.short,
                        "edge_id": a.edge_id,
                        "sensor_id": a.sensor_id,
                        "served": a.served,
                    },
                )
            )
        rows.append(
            (
                "network",
                f"whole network ({self.network})",
                self.current.network,
                self.changed.network,
                {"short_label": "whole network"},
            )
        )
        return [
            {
                "kind": kind,
                "label": label,
                **extra,
                "current": _measure_json(cur),
                "changed": _measure_json(new),
                "difference": _difference(cur, new),
            }
            for kind, label, cur, new, extra in rows
        ]

    def summary(self) -> str:
        areas = {a["kind"]: a for a in self.areas() if a["kind"] != "approach"}
        local = areas.get("served", areas["intersection"])
        parts = []
        for area, what in ((local, local["label"]), (areas["network"], "the network")):
            cur, new = area["current"]["delay_s"], area["changed"]["delay_s"]
            if cur is not None and new is not None:
                parts.append(
                    f"delay on {what} {cur:.1f} -> {new:.1f} s per vehicle ({new - cur:+.1f} s)"
                )
        queue = areas["intersection"]
        parts.append(
            f"mean queue at the intersection {queue['current']['queue_mean']:.1f} -> "
            f"{queue['changed']['queue_mean']:.1f} vehicles"
        )
        return f"Over {self.minutes:g} simulated minutes: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (finite numbers, None for no data) for ``actions.what_if`` and the API."""
        return {
            "network": self.network,
            "intersection_id": self.tls_id,
            "intersection": self.intersection,
            "phase_index": self.phase_index,
            "phase": self.phase,
            "green_s": {
                "current": self.current.greens[self.phase_index],
                "changed": self.changed.greens[self.phase_index],
            },
            "cycle_s": {
                "current": _round(self.cycle_s(self.current)),
                "changed": _round(self.cycle_s(self.changed)),
            },
            "simulated_minutes": self.minutes,
            "start_hour": self.start_hour,
            "seed": self.seed,
            "demand_scale": self.demand_scale,
            "wall_s": _round(self.wall_s),
            "summary": self.summary(),
            "areas": self.areas(),
            "vehicles": {
                name: {
                    "scheduled": run.vehicles_scheduled,
                    "inserted": run.vehicles_inserted,
                    "completed": run.vehicles_completed,
                }
                for name, run in (("current", self.current), ("changed", self.changed))
            },
            "same_demand": self.current.demand_digest == self.changed.demand_digest,
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _measure_json(m: Measure) -> dict[str, Any]:
    return {
        "delay_s": _round(m.delay_s),
        "queue_mean": _round(m.queue_mean),
        "queue_max": m.queue_max,
        "vehicles": m.vehicles,
    }


def _difference(cur: Measure, new: Measure) -> dict[str, float | None]:
    delay = None if cur.delay_s is None or new.delay_s is None else new.delay_s - cur.delay_s
    return {
        "delay_s": _round(delay),
        "queue_mean": _round(new.queue_mean - cur.queue_mean),
        "queue_max": new.queue_max - cur.queue_max,
    }


def _combine(run: Run, edges: list[str]) -> Measure:
    """Several approaches as one: delay weighted by vehicles, queues added second by second."""
    parts = [run.approaches[e] for e in edges]
    vehicles = sum(p.vehicles for p in parts)
    lost = sum((p.delay_s or 0.0) * p.vehicles for p in parts)
    per_second = [sum(q) for q in zip(*(run.halting[e] for e in edges), strict=True)]
    return Measure(
        delay_s=lost / vehicles if vehicles else None,
        queue_mean=sum(per_second) / len(per_second) if per_second else 0.0,
        queue_max=max(per_second, default=0),
        vehicles=vehicles,
    )


# --------------------------------------------------------------------------- one run (child)
@dataclass(frozen=True)
class _Job:
    """What a child process simulates; plain data, so it pickles."""

    network: str
    data_dir: str
    tls_id: str
    approach_edges: tuple[str, ...]
    plan: dict[str, dict[int, float]]  # greens in force, set before the warm-up
    change: tuple[int, float] | None  # (phase, green) set at the window's start; None: current
    start_s: float  # the window, in simulated seconds after the twin's t=0
    window_s: float
    seed: int
    demand_scale: float


class _RecordedDemand:
    """The twin's demand, remembering every vehicle it hands out (the 'same demand' check)."""

    def __init__(self, demand: Any) -> None:
        self.demand = demand
        self.trips = demand.trips
        self.handed_out: list[tuple[str, float]] = []

    def hour(self, h: int, scale: float, rng: Any) -> list[Any]:
        chosen = self.demand.hour(h, scale, rng)
        self.handed_out.extend((vid, offset) for vid, _trip, offset in chosen)
        return chosen


def _measured_twin_class() -> type:
    """A Twin that also writes trip info and edge data (built in the child: imports libsumo)."""
    from cityos.streaming.sources.twin import TELEPORT_S, WARMUP_S, Twin

    class MeasuredTwin(Twin):
        window: tuple[float, float]  # absolute simulated seconds

        def start(self) -> None:
            import libsumo

            assert self.work_dir is not None
            vtypes = self.work_dir / "vtypes.rou.xml"
            vtypes.write_text(
                "<routes>\n" + "\n".join(self.demand.demand.vtypes_xml) + "\n</routes>\n"
            )
            begin, end = self.window
            additional = self.work_dir / "edges.add.xml"
            additional.write_text(
                f'<additional><edgeData id="whatif" file="{self.work_dir / "edges.xml"}" '
                f'begin="{begin:.0f}" end="{end:.0f}" excludeEmpty="true"/></additional>\n'
            )
            options = {  # the twin's, plus the trip info of every vehicle
                "-n": self.scenario.net,
                "-r": vtypes,
                "-a": additional,
                "-b": self.scenario.begin - WARMUP_S,
                "--seed": self.seed,
                "--time-to-teleport": TELEPORT_S,
                "--no-step-log": "true",
                "--no-warnings": "true",
                "--duration-log.disable": "true",
                "--tripinfo-output": self.work_dir / "tripinfo.xml",
                "--tripinfo-output.write-unfinished": "true",
            }
            libsumo.start(["sumo", *(str(v) for kv in options.items() for v in kv)])
            self._sumo = libsumo

        def measure(self, seconds: int, edges: tuple[str, ...]) -> _Counts:
            """Step ``seconds`` times, counting halting vehicles and finished trips."""
            halting_id = self._sumo.constants.LAST_STEP_VEHICLE_HALTING_NUMBER
            edge_api = self._sumo.edge
            for edge_id in edge_api.getIDList():
                if not edge_id.startswith(":"):  # internal (junction) edges hold no queue
                    edge_api.subscribe(edge_id, [halting_id])
            counts = _Counts({e: [0] * seconds for e in edges}, [0] * seconds)
            for second in range(seconds):
                self.step()
                counts.completed += self._sumo.simulation.getArrivedNumber()
                results = edge_api.getAllSubscriptionResults()
                counts.network[second] = sum(r[halting_id] for r in results.values())
                for edge_id in edges:
                    counts.approaches[edge_id][second] = results[edge_id][halting_id]
            return counts

    return MeasuredTwin


@dataclass
class _Counts:
    approaches: dict[str, list[int]]  # halting vehicles per approach edge, per second
    network: list[int]  # halting vehicles on every edge, per second
    completed: int = 0


def _simulate(job: _Job) -> Run:
    """One plan, in this (child) process: warm up, run to the window, measure it."""
    from cityos.streaming.sources.network import EdgeNamer, build_layout, find_scenario, read_net
    from cityos.streaming.sources.twin import city_of

    wall0 = time.monotonic()
    scenario = find_scenario(job.network, Path(job.data_dir))
    net = read_net(scenario)
    layout = build_layout(net, EdgeNamer(net), city_of(scenario.name))  # names do not matter
    begin = scenario.begin + job.start_s
    end = begin + job.window_s
    with tempfile.TemporaryDirectory(prefix="cityos-whatif-") as tmp:
        sim = _measured_twin_class()(
            scenario, layout, [], demand_scale=job.demand_scale, seed=job.seed, work_dir=Path(tmp)
        )
        sim.demand = _RecordedDemand(sim.demand)
        sim.window = (begin, end)
        with sim:
            for tls_id, greens in job.plan.items():
                for phase_index, green_s in greens.items():
                    sim.set_green(tls_id, phase_index, green_s)
            sim.warm_up()
            while sim.time < job.start_s:
                sim.step()
            if job.change is not None:
                sim.set_green(job.tls_id, *job.change)
            greens = {p.index: p.green_s for p in sim.signal_state()[job.tls_id].phases}
            counts = sim.measure(int(job.window_s), job.approach_edges)
        trips = _read_trips(Path(tmp) / "tripinfo.xml", begin, end)  # written on close
        edges = _read_edges(Path(tmp) / "edges.xml", job.approach_edges)
    scheduled = sorted(
        (vid, offset)
        for vid, offset in sim.demand.handed_out
        if job.start_s <= offset < job.start_s + job.window_s
    )
    digest = hashlib.sha256("\n".join(f"{v} {o:.2f}" for v, o in scheduled).encode()).hexdigest()
    approaches = {}
    for edge_id, series in counts.approaches.items():
        lost, vehicles = edges.get(edge_id, (0.0, 0))
        approaches[edge_id] = Measure(
            delay_s=lost / vehicles if vehicles else None,
            queue_mean=sum(series) / len(series),
            queue_max=max(series),
            vehicles=vehicles,
        )
    network = Measure(
        delay_s=sum(trips) / len(trips) if trips else None,
        queue_mean=sum(counts.network) / len(counts.network),
        queue_max=max(counts.network),
        vehicles=len(trips),
    )
    return Run(
        greens=greens,
        network=network,
        approaches=approaches,
        vehicles_scheduled=len(scheduled),
        vehicles_inserted=len(trips),
        vehicles_completed=counts.completed,
        demand_digest=digest,
        wall_s=time.monotonic() - wall0,
        halting=counts.approaches,
    )


def _read_trips(path: Path, begin: float, end: float) -> list[float]:
    """Delay (time loss + insertion wait) of every vehicle inserted in [begin, end)."""
    delays = []
    for _, el in ET.iterparse(path):  # noqa: S314 - SUMO's own output
        if el.tag == "tripinfo":
            depart = float(el.get("depart", "-1"))
            if begin <= depart < end:
                delays.append(float(el.get("timeLoss", "0")) + float(el.get("departDelay", "0")))
            el.clear()
    return delays


def _read_edges(path: Path, edges: tuple[str, ...]) -> dict[str, tuple[float, int]]:
    """(total time loss, vehicles that entered or were inserted) per edge, over the window."""
    wanted, out = set(edges), {}
    for el in ET.parse(path).getroot().iter("edge"):  # noqa: S314 - SUMO's own output
        if el.get("id") in wanted:
            vehicles = int(float(el.get("entered", "0"))) + int(float(el.get("departed", "0")))
            out[el.get("id", "")] = (float(el.get("timeLoss", "0")), vehicles)
    return out


# --------------------------------------------------------------------------- both runs
@lru_cache(maxsize=4)
def twin_layout(network: str, data_dir: Path) -> tuple[Layout, str]:
    """The twin's layout, named as the registry names it (cached: naming reads the city's geo)."""
    from cityos.streaming.sources.twin import prepare

    prepared = prepare(network, data_dir)
    return prepared.layout, prepared.scenario.name


def _signal(layout: Layout, network: str, tls_id: str) -> Signal:
    signal = next((s for s in layout.signals if s.tls_id == tls_id), None)
    if signal is None:
        known = ", ".join(sorted(s.tls_id for s in layout.signals))
        raise WhatIfError(f"{network} has no signal {tls_id!r} (its signals: {known})")
    return signal


def _check_green(signal: Signal, phase_index: Any, green_s: Any) -> tuple[int, float]:
    if isinstance(phase_index, bool) or not isinstance(phase_index, int):
        raise WhatIfError(f"phase index must be a whole number, got {phase_index!r}")
    if not 0 <= phase_index < len(signal.phases):
        raise WhatIfError(
            f"{signal.tls_id} has no phase {phase_index} "
            f"(its green phases: 0..{len(signal.phases) - 1})"
        )
    if (
        isinstance(green_s, bool)
        or not isinstance(green_s, int | float)
        or not math.isfinite(green_s)
    ):
        raise WhatIfError(f"green time must be a number of seconds, got {green_s!r}")
    phase = signal.phases[phase_index]
    if not phase.min_green_s <= green_s <= phase.max_green_s:
        raise WhatIfError(
            f"green {green_s:g} s of {signal.tls_id} phase {phase_index} is "
            f"outside [{phase.min_green_s:g}, {phase.max_green_s:g}] s"
        )
    return phase_index, float(green_s)


def _served(signal: Signal, phase_index: int) -> set[str]:
    """Approach edges the phase gives green (its street, in one of its directions)."""
    served = signal.phases[phase_index].served
    return {
        a.edge_id
        for a in signal.approaches
        if a.street in served and a.bound in served[a.street][0]
    }


def simulate_change(
    network: str,
    tls_id: str,
    phase_index: int,
    green_s: float,
    *,
    minutes: float = 30.0,
    start_hour: float = 0.0,
    seed: int = DEFAULT_SEED,
    demand_scale: float = 1.0,
    plan: Mapping[str, Mapping[int, float]] | None = None,
    data_dir: Path,
) -> WhatIf:
    """Simulate the current plan and the one with ``phase_index`` at ``green_s`` side by side.

    ``plan``: greens in force now ({tls id: {phase index: green s}}) where they differ from the
    scenario's program; both runs start from it. Raises :class:`WhatIfError` on bad input.
    """
    if not (isinstance(minutes, int | float) and 0 < minutes <= MAX_MINUTES):
        raise WhatIfError(f"minutes must lie in (0, {MAX_MINUTES:g}], got {minutes!r}")
    if not (isinstance(start_hour, int | float) and 0 <= start_hour <= MAX_START_HOUR):
        raise WhatIfError(f"start_hour must lie in [0, {MAX_START_HOUR:g}], got {start_hour!r}")
    if not (isinstance(demand_scale, int | float) and 0 < demand_scale <= 10):
        raise WhatIfError(f"demand_scale must lie in (0, 10], got {demand_scale!r}")
    layout, scenario_name = twin_layout(network, Path(data_dir))
    signal = _signal(layout, network, tls_id)
    phase_index, green_s = _check_green(signal, phase_index, green_s)
    in_force: dict[str, dict[int, float]] = {}
    for other_id, greens in (plan or {}).items():
        other = _signal(layout, network, other_id)
        for index, green in greens.items():
            index, green = _check_green(other, index, green)
            if green != other.phases[index].green_s:
                in_force.setdefault(other_id, {})[index] = green

    served = _served(signal, phase_index)
    approaches = [
        ApproachInfo(a.edge_id, a.sensor_id, a.name, f"{a.street} {a.bound}", a.edge_id in served)
        for a in signal.approaches
    ]
    base = _Job(
        network=network,
        data_dir=str(data_dir),
        tls_id=tls_id,
        approach_edges=tuple(a.edge_id for a in approaches),
        plan=in_force,
        change=None,
        start_s=round(start_hour * 3600),
        window_s=round(minutes * 60),
        seed=seed,
        demand_scale=float(demand_scale),
    )
    jobs = {"current": base, "changed": _replace_change(base, (phase_index, green_s))}
    wall0 = time.monotonic()
    runs = _run_side_by_side(jobs)
    wall_s = time.monotonic() - wall0
    log.info(
        "what-if %s %s phase %d -> %g s: %.1f simulated minutes in %.1f s",
        scenario_name,
        tls_id,
        phase_index,
        green_s,
        minutes,
        wall_s,
    )
    return WhatIf(
        network=network,
        tls_id=tls_id,
        intersection=signal.name,
        phase_index=phase_index,
        phase=signal.phases[phase_index].description,
        intergreen_s=sum(p.intergreen_s for p in signal.phases),
        approaches=approaches,
        minutes=float(minutes),
        start_hour=float(start_hour),
        seed=seed,
        demand_scale=float(demand_scale),
        current=runs["current"],
        changed=runs["changed"],
        wall_s=wall_s,
    )


def _replace_change(job: _Job, change: tuple[int, float]) -> _Job:
    return _Job(**{**asdict(job), "change": change})


def _run_side_by_side(jobs: dict[str, _Job]) -> dict[str, Run]:
    """Each job in a fresh child process (spawned: libsumo holds one simulation per process)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=len(jobs), mp_context=context, max_tasks_per_child=1
    ) as pool:
        futures = {name: pool.submit(_simulate, job) for name, job in jobs.items()}
        runs = {}
        for name, future in futures.items():
            try:
                runs[name] = future.result()
            except CityOSError:
                raise
            except Exception as err:  # SUMO or the child process failed: say which run
                raise WhatIfError(f"simulating the {name} plan failed: {err}") from err
    return runs


# --------------------------------------------------------------------------- the service's hook
def whatif_for_action(
    settings: Any,
    action_target: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    plan: Mapping[str, Mapping[int, float]] | None = None,
    minutes: float = 30.0,
) -> dict[str, Any]:
    """The what-if of a ``signal_timing`` action (target and params as the action stores them),
    on the twin's network ``settings.twin_network``, as JSON."""
    tls_id = action_target.get("intersection_id")
    if not isinstance(tls_id, str) or not tls_id:
        raise WhatIfError("a signal timing action names its intersection (intersection_id)")
    # as stored: simulate_change refuses anything but a whole phase index and a number of seconds
    phase_index: Any = params.get("phase_index")
    green_s: Any = params.get("green_s")
    return simulate_change(
        settings.twin_network,
        tls_id,
        phase_index,
        green_s,
        minutes=minutes,
        plan=plan,
        data_dir=settings.data_dir,
    ).to_json()


Connect = Callable[[], AbstractContextManager[Any]]


class WhatIfRunner:
    """Runs what-ifs one at a time in a background thread and stores them in ``actions``.

    A what-if that cannot run is stored as ``{"error": reason}``, so whoever waits for it (the
    console) stops waiting and shows why.
    """

    def __init__(self, connect: Connect, settings: Any, *, minutes: float = 30.0) -> None:
        self._connect = connect
        self._settings = settings
        self._minutes = minutes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whatif")

    def submit(
        self, action_id: str, target: Mapping[str, Any], params: Mapping[str, Any]
    ) -> Future[dict[str, Any]]:
        """Queue the what-if of an action; the future resolves to the JSON that was stored."""
        return self._pool.submit(self._run, action_id, dict(target), dict(params))

    def close(self, wait: bool = True) -> None:
        self._closed = True  # a simulation still running is not stored: its database may be gone
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def _run(
        self, action_id: str, target: dict[str, Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            result = whatif_for_action(
                self._settings, target, params, plan=self._plan_in_force(), minutes=self._minutes
            )
        except CityOSError as err:
            log.warning("what-if for action %s not run: %s", action_id, err)
            result = {"error": str(err)}
        except Exception:  # a background job: log it, and tell the waiting console
            log.exception("what-if for action %s failed", action_id)
            result = {"error": "the simulation failed; the service log has the details"}
        if getattr(self, "_closed", False):
            log.info(
                "what-if for action %s finished after the service stopped; not stored", action_id
            )
            return result
        try:
            self._store(action_id, result)
        except Exception:
            log.exception("what-if for action %s could not be stored", action_id)
            raise
        return result

    def _plan_in_force(self) -> dict[str, dict[int, float]]:
        """The greens in ``signal_phases`` for the twin's signals, within their bounds."""
        from psycopg.rows import dict_row

        layout, _ = twin_layout(self._settings.twin_network, Path(self._settings.data_dir))
        signals = {s.tls_id: s for s in layout.signals}
        with self._connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT intersection_id, phase_index, green_s FROM signal_phases"
                " WHERE intersection_id = ANY(%s)",
                (list(signals),),
            )
            rows = cur.fetchall()
        plan: dict[str, dict[int, float]] = {}
        for row in rows:
            try:
                index, green = _check_green(
                    signals[row["intersection_id"]], row["phase_index"], row["green_s"]
                )
            except WhatIfError as err:
                log.warning("what-if ignores the plan in signal_phases: %s", err)
                continue
            plan.setdefault(row["intersection_id"], {})[index] = green
        return plan

    def _store(self, action_id: str, result: dict[str, Any]) -> None:
        from psycopg.types.json import Jsonb

        with self._connect() as conn:
            conn.execute(
                "UPDATE actions SET what_if = %s WHERE action_id = %s", (Jsonb(result), action_id)
            )
