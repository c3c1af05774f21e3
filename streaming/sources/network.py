"""What the twin's SUMO network looks like to CityOS: signals, green phases, approach sensors.

Conventions shared with the evaluation fixture (shared/nlq/fixture.py):

* an intersection per traffic light, id = the SUMO tls id, named after the two nearest streets;
* one traffic sensor per incoming approach edge that the signal controls, with an induction
  loop on each passenger lane 40 m upstream of the stop line (mid-lane on lanes < 80 m);
* sensors ordered by intersection name, then by the approach's bearing, and numbered
  ``<city>-tr-NN`` in that order; named '<street> <bound> at <cross street>';
* green phases (no yellow, at least one G/g) 0-based in cycle order; intergreen = the
  yellow/all-red phases up to the next green; min green 5 s; max green 20 s for protected
  left-turn phases (every movement served is a left turn), 90 s otherwise.

Street names come from a :class:`Namer` (the geo library's street index for Cologne), so the
geometry here can be built and tested without it.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import sumolib
from shapely.geometry import LineString

from cityos.errors import CityOSError, ConfigError

LOOP_SETBACK_M = 40.0
MIN_GREEN_S = 5.0
MAX_GREEN_S = {"left turns": 20.0}  # by what the phase serves; anything else:
MAX_GREEN_DEFAULT_S = 90.0
BOUNDS = ("northbound", "eastbound", "southbound", "westbound")
AXES = ("north-south", "northeast-southwest", "east-west", "northwest-southeast")
# SUMO link directions -> what a phase serves on a street
MOVES = (("through", {"s"}), ("left turns", {"l", "L", "t"}), ("right turns", {"r", "R"}))


class NetworkError(CityOSError):
    """The SUMO scenario is missing or not what the twin expects."""


class Namer(Protocol):
    """Street names at a point (the geo library's StreetIndex satisfies this)."""

    def intersection_name(self, lon: float, lat: float) -> str: ...

    def road_name(self, lon: float, lat: float) -> str | None: ...


# --------------------------------------------------------------------------- files
@dataclass(frozen=True)
class Scenario:
    """A RESCO scenario: network, demand and the simulated window of its .sumocfg."""

    name: str
    net: Path
    routes: Path
    begin: float
    end: float


def find_scenario(name_or_dir: str, data_dir: Path) -> Scenario:
    """A scenario by RESCO name ('cologne8') under data_dir/resco-sumo, or a folder path."""
    folder = Path(name_or_dir)
    if not folder.is_dir():
        folder = data_dir / "resco-sumo" / name_or_dir
    configs = sorted(folder.glob("*.sumocfg")) if folder.is_dir() else []
    if not configs:
        known = sorted(p.name for p in (data_dir / "resco-sumo").glob("*") if p.is_dir())
        raise ConfigError(
            "CITYOS_TWIN_NETWORK",
            f"no SUMO scenario {name_or_dir!r} (known: {', '.join(known) or 'none'})",
        )
    root = ET.parse(configs[0]).getroot()  # noqa: S314 - a shipped scenario file

    def value(tag: str) -> str:
        node = root.find(f".//{tag}")
        if node is None:
            raise NetworkError(f"{configs[0]} has no <{tag}>")
        return node.get("value", "")

    return Scenario(
        name=configs[0].stem,
        net=folder / value("net-file"),
        routes=folder / value("route-files").split(",")[0],
        begin=float(value("begin")),
        end=float(value("end")),
    )


def read_net(scenario: Scenario) -> sumolib.net.Net:
    return sumolib.net.readNet(str(scenario.net), withPrograms=True)


# --------------------------------------------------------------------------- geometry
def bound_of(bearing: float) -> str:
    """Direction of travel for a bearing in degrees (0 = north)."""
    return BOUNDS[int(((bearing + 45) % 360) // 90)]


def approach_bearing(edge: sumolib.net.edge.Edge) -> float:
    """Bearing of travel over the last ~30 m before the stop line, net coordinates."""
    line = LineString(edge.getShape())
    a, b = line.interpolate(max(line.length - 30, 0)), line.interpolate(line.length)
    return math.degrees(math.atan2(b.x - a.x, b.y - a.y)) % 360


def axis_of(bounds: set[str], bearings: set[float]) -> str:
    """'north-south' for two opposite approaches of a street; the bounds otherwise."""
    if bounds == {"northbound", "southbound"}:
        return "north-south"
    if bounds == {"eastbound", "westbound"}:
        return "east-west"
    if len(bearings) != 2:
        return "/".join(sorted(bounds))
    b1, b2 = sorted(bearings)
    if abs(abs(b2 - b1) - 180) > 45:
        return "/".join(sorted({bound_of(b1), bound_of(b2)}))
    doubled = [math.radians(2 * b) for b in (b1, b2)]
    mean = math.degrees(math.atan2(sum(map(math.sin, doubled)), sum(map(math.cos, doubled))))
    return AXES[int(((mean / 2 % 180 + 22.5) % 180) // 45)]


def served_kind(moves: set[str]) -> str:
    if "s" in moves:
        return "through"
    return next((name for name, kinds in MOVES[1:] if moves <= kinds), "turns")


# --------------------------------------------------------------------------- model
@dataclass
class Approach:
    """An incoming edge of a signal and the loops on its passenger lanes."""

    edge_id: str
    tls_id: str
    bearing: float
    bound: str
    lanes: list[tuple[str, float]]  # (lane id, loop position from lane start, m)
    lon: float
    lat: float
    speed_limit_kmh: float
    street: str = ""
    sensor_id: str = ""
    name: str = ""


@dataclass
class GreenPhase:
    index: int  # 0-based over the green phases
    sumo_index: int  # index in the SUMO program (greens, yellows and all-reds)
    state: str
    green_s: float
    intergreen_s: float
    min_green_s: float
    max_green_s: float
    description: str = ""
    served: dict[str, tuple[set[str], set[float], set[str]]] = field(default_factory=dict)


@dataclass
class Signal:
    tls_id: str
    program_id: str
    lon: float
    lat: float
    x: float
    y: float
    phases: list[GreenPhase]
    approaches: list[Approach]
    name: str = ""


@dataclass
class Layout:
    """Every signal with its phases and approach sensors, in the stable published order."""

    city_id: str
    signals: list[Signal]

    @property
    def approaches(self) -> list[Approach]:
        return sorted((a for s in self.signals for a in s.approaches), key=lambda a: a.sensor_id)

    def signal(self, tls_id: str) -> Signal:
        return next(s for s in self.signals if s.tls_id == tls_id)


def _links(tls: sumolib.net.TLS) -> dict[int, tuple[sumolib.net.edge.Edge, str]]:
    """Link index -> (incoming edge, SUMO movement direction)."""
    links = {}
    for in_lane, _out_lane, idx in tls.getConnections():
        for con in in_lane.getOutgoing():
            if con.getTLSID() == tls.getID() and con.getTLLinkIndex() == idx:
                links[idx] = (in_lane.getEdge(), con.getDirection())
    return links


def _tls_position(net: sumolib.net.Net, tls: sumolib.net.TLS) -> tuple[float, float]:
    """The junction of the same id (RESCO Cologne), else the centre of the junctions it controls."""
    if net.hasNode(tls.getID()):
        return net.getNode(tls.getID()).getCoord()
    nodes = {in_lane.getEdge().getToNode() for in_lane, _, _ in tls.getConnections()}
    coords = [n.getCoord() for n in nodes]
    return (sum(c[0] for c in coords) / len(coords), sum(c[1] for c in coords) / len(coords))


def _is_green(state: str) -> bool:
    return "y" not in state.lower() and any(c in "Gg" for c in state)


def _green_phases(tls: sumolib.net.TLS) -> tuple[str, list[GreenPhase]]:
    program_id, program = next(iter(tls.getPrograms().items()))
    phases = program.getPhases()
    green = [_is_green(p.state) for p in phases]
    out: list[GreenPhase] = []
    for i, phase in enumerate(phases):
        if not green[i]:
            continue
        intergreen, j = 0.0, (i + 1) % len(phases)
        while not green[j] and j != i:
            intergreen += float(phases[j].duration)
            j = (j + 1) % len(phases)
        out.append(
            GreenPhase(
                index=len(out),
                sumo_index=i,
                state=phase.state,
                green_s=float(phase.duration),
                intergreen_s=intergreen,
                min_green_s=MIN_GREEN_S,
                max_green_s=MAX_GREEN_DEFAULT_S,
            )
        )
    return program_id, out


def _approach(net: sumolib.net.Net, edge: sumolib.net.edge.Edge, tls_id: str) -> Approach:
    lanes = [ln for ln in edge.getLanes() if ln.allows("passenger")]
    if not lanes:
        raise NetworkError(f"approach edge {edge.getID()} of {tls_id} has no passenger lane")
    pos = {ln.getID(): max(ln.getLength() - LOOP_SETBACK_M, ln.getLength() / 2) for ln in lanes}
    # the sensor's location: the loop on the rightmost passenger lane
    x, y = sumolib.geomhelper.positionAtShapeOffset(lanes[0].getShape(), pos[lanes[0].getID()])
    lon, lat = net.convertXY2LonLat(x, y)
    bearing = approach_bearing(edge)
    return Approach(
        edge_id=edge.getID(),
        tls_id=tls_id,
        bearing=bearing,
        bound=bound_of(bearing),
        lanes=[(ln.getID(), pos[ln.getID()]) for ln in lanes],
        lon=lon,
        lat=lat,
        speed_limit_kmh=edge.getSpeed() * 3.6,
    )


def edge_street(net: sumolib.net.Net, edge: sumolib.net.edge.Edge, namer: Namer) -> str:
    """The street an edge runs along: the most frequent name at 20..80 % of its length."""
    line = LineString(edge.getShape())
    votes: dict[str, int] = {}
    for frac in (0.2, 0.35, 0.5, 0.65, 0.8):
        p = line.interpolate(frac, normalized=True)
        name = namer.road_name(*net.convertXY2LonLat(p.x, p.y))
        if name:
            votes[name] = votes.get(name, 0) + 1
    if not votes:
        return edge.getName() or edge.getID()
    return max(sorted(votes), key=lambda n: votes[n])


def build_layout(net: sumolib.net.Net, namer: Namer, city_id: str = "cologne") -> Layout:
    """Signals, phases and sensors of the net, named and numbered by the shared conventions."""
    signals = []
    for tls in sorted(net.getTrafficLights(), key=lambda t: t.getID()):
        x, y = _tls_position(net, tls)
        lon, lat = net.convertXY2LonLat(x, y)
        program_id, phases = _green_phases(tls)
        links = _links(tls)
        edges = sorted({e for e, _ in links.values()}, key=lambda e: e.getID())
        approaches = {e.getID(): _approach(net, e, tls.getID()) for e in edges}
        for edge in edges:
            approaches[edge.getID()].street = edge_street(net, edge, namer)
        name = namer.intersection_name(lon, lat)
        signal = Signal(
            tls_id=tls.getID(),
            program_id=program_id,
            lon=lon,
            lat=lat,
            x=x,
            y=y,
            phases=phases,
            name=name,
            approaches=sorted(approaches.values(), key=lambda a: a.bearing),
        )
        for phase in phases:
            _describe(phase, links, approaches)
        signals.append(signal)
    signals.sort(key=lambda s: (s.name, s.tls_id))
    _number_sensors(signals, city_id)
    return Layout(city_id=city_id, signals=signals)


def _describe(phase: GreenPhase, links: dict, approaches: dict[str, Approach]) -> None:
    """'<street> <axis> <what>' per street served, joined by ' + '; sets max green."""
    served: dict[str, tuple[set[str], set[float], set[str]]] = {}
    for idx, c in enumerate(phase.state):
        if c in "Gg" and idx in links:
            edge, move = links[idx]
            ap = approaches[edge.getID()]
            bounds, bearings, moves = served.setdefault(ap.street, (set(), set(), set()))
            bounds.add(ap.bound)
            bearings.add(round(ap.bearing, 1))
            moves.add(move)
    kinds = {street: served_kind(moves) for street, (_, _, moves) in served.items()}
    phase.served = served
    phase.description = " + ".join(
        f"{street} {axis_of(served[street][0], served[street][1])} {kinds[street]}"
        for street in sorted(served)
    )
    only = set(kinds.values())
    phase.max_green_s = (
        MAX_GREEN_S.get(only.pop(), MAX_GREEN_DEFAULT_S) if len(only) == 1 else MAX_GREEN_DEFAULT_S
    )


def _number_sensors(signals: list[Signal], city_id: str) -> None:
    seen: dict[str, int] = {}
    number = 0
    for signal in signals:
        streets = [n.strip() for n in signal.name.split(" / ")]
        for ap in signal.approaches:
            number += 1
            cross = next((n for n in streets if n != ap.street), streets[0])
            name = f"{ap.street} {ap.bound} at {cross}"
            seen[name] = seen.get(name, 0) + 1
            ap.name = name if seen[name] == 1 else f"{name} ({seen[name]})"
            ap.sensor_id = f"{city_id}-tr-{number:02d}"


class EdgeNamer:
    """Names from the SUMO net itself (edge 'name' attributes), for nets without street data."""

    def __init__(self, net: sumolib.net.Net):
        self.net = net

    def _nearest_edges(self, lon: float, lat: float, radius: float = 60.0) -> list[str]:
        x, y = self.net.convertLonLat2XY(lon, lat)
        hits = sorted(self.net.getNeighboringEdges(x, y, radius), key=lambda h: h[1])
        return [e.getName() or e.getID() for e, _ in hits]

    def intersection_name(self, lon: float, lat: float) -> str:
        names: list[str] = []
        for name in self._nearest_edges(lon, lat):
            if name not in names:
                names.append(name)
        return " / ".join(names[:2]) or f"{lon:.5f},{lat:.5f}"

    def road_name(self, lon: float, lat: float) -> str | None:
        return next(iter(self._nearest_edges(lon, lat, 15.0)), None)
