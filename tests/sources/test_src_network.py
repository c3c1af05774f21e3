"""The twin's signals, phases and sensors on the real cologne8 network, against the fixture."""

from __future__ import annotations

import importlib.util

import pytest

from cityos.settings import SHARED_DIR
from cityos.streaming.sources import twin
from cityos.streaming.sources.environment import RADIUS_M
from cityos.streaming.sources.network import (
    LOOP_SETBACK_M,
    EdgeNamer,
    build_layout,
    find_scenario,
    read_net,
)

DATA = SHARED_DIR / "data"


@pytest.fixture(scope="module")
def prepared():
    return twin.prepare("cologne8", DATA)


@pytest.fixture(scope="module")
def fixture_signals():
    """The evaluation team's reference (shared/nlq/fixture.py build_signals), zones left out."""
    spec = importlib.util.spec_from_file_location("nlq_fixture", SHARED_DIR / "nlq" / "fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_signals([])


def test_scenario_reads_the_sumocfg():
    scenario = find_scenario("cologne8", DATA)
    assert (scenario.begin, scenario.end) == (25200.0, 28800.0)
    assert scenario.net.name == "cologne8.net.xml" and scenario.routes.exists()


def test_eight_intersections_and_27_approach_sensors(prepared):
    layout = prepared.layout
    assert len(layout.signals) == 8
    assert [a.sensor_id for a in layout.approaches] == [f"cologne-tr-{i:02d}" for i in range(1, 28)]
    assert len(prepared.stations) == 8


def test_intersections_and_sensors_match_the_fixture(prepared, fixture_signals):
    intersections, _phases, sensors, _loops = fixture_signals
    mine = {s.tls_id: (s.name, round(s.lat, 7), round(s.lon, 7)) for s in prepared.layout.signals}
    assert mine == {
        i["intersection_id"]: (i["name"], i["latitude"], i["longitude"]) for i in intersections
    }
    assert [
        (a.sensor_id, a.name, a.tls_id, a.street, round(a.lat, 7), round(a.lon, 7))
        for a in prepared.layout.approaches
    ] == [
        (
            s["sensor_id"],
            s["name"],
            s["intersection_id"],
            s["road_name"],
            s["latitude"],
            s["longitude"],
        )
        for s in sensors
    ]


def test_phases_match_the_fixture(prepared, fixture_signals):
    _intersections, phases, _sensors, _loops = fixture_signals
    mine = sorted(
        (s.tls_id, p.index, p.description, p.green_s, p.intergreen_s, p.min_green_s, p.max_green_s)
        for s in prepared.layout.signals
        for p in s.phases
    )
    assert mine == sorted(
        (
            p["intersection_id"],
            p["phase_index"],
            p["description"],
            p["green_s"],
            p["intergreen_s"],
            p["min_green_s"],
            p["max_green_s"],
        )
        for p in phases
    )
    assert {p.max_green_s for s in prepared.layout.signals for p in s.phases} == {20.0, 90.0}


def test_loops_sit_40_m_before_the_stop_line_or_mid_lane(prepared):
    net = read_net(prepared.scenario)
    for ap in prepared.layout.approaches:
        for lane_id, pos in ap.lanes:
            length = net.getLane(lane_id).getLength()
            assert pos == pytest.approx(max(length - LOOP_SETBACK_M, length / 2))


def test_stations_see_the_edges_around_their_junction(prepared):
    for station in prepared.stations:
        assert station.sensor_id.startswith("cologne-aq-")
        assert station.edges and all(d <= RADIUS_M for _, d in station.edges)


def test_a_network_without_street_data_is_named_from_its_edges():
    scenario = find_scenario("ingolstadt7", DATA)
    net = read_net(scenario)
    layout = build_layout(net, EdgeNamer(net), "ingolstadt")
    assert len(layout.signals) == 7
    assert all(a.sensor_id.startswith("ingolstadt-tr-") and a.name for a in layout.approaches)


def test_unknown_network_names_the_setting():
    from cityos.errors import ConfigError

    with pytest.raises(ConfigError, match="CITYOS_TWIN_NETWORK"):
        find_scenario("atlantis3", DATA)
