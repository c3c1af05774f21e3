"""What-if before approval: the current and the changed plan on the real cologne8 twin (SUMO)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from psycopg.types.json import Jsonb

from cityos.settings import SHARED_DIR, load_settings
from cityos.streaming.whatif import (
    WhatIfError,
    WhatIfRunner,
    _served,
    simulate_change,
    twin_layout,
)

DATA = SHARED_DIR / "data"
MINUTES = 10  # simulated; both runs side by side take a few seconds
LONGER = ("247379907", 0, 43.0)  # Friedrich-Karl-Str. east-west through: 33 s -> 43 s
CUT = ("26110729", 2, 5.0)  # Niehler Str. north-south through at Friedrich-Karl-Str.: 33 s -> 5 s


@pytest.fixture(scope="module")
def longer():
    tls_id, phase, green = LONGER
    return simulate_change("cologne8", tls_id, phase, green, minutes=MINUTES, data_dir=DATA)


@pytest.fixture(scope="module")
def cut():
    tls_id, phase, green = CUT
    return simulate_change("cologne8", tls_id, phase, green, minutes=MINUTES, data_dir=DATA)


def _area(result: dict, kind: str) -> dict:
    return next(a for a in result["areas"] if a["kind"] == kind)


@pytest.mark.integration
def test_both_runs_get_the_same_demand(longer):
    current, changed = longer.current, longer.changed
    assert current.vehicles_scheduled > 50
    assert current.demand_digest == changed.demand_digest
    assert current.vehicles_scheduled == changed.vehicles_scheduled
    assert current.vehicles_inserted > 0 and changed.vehicles_inserted > 0
    assert longer.to_json()["same_demand"] is True


@pytest.mark.integration
def test_the_changed_run_runs_the_changed_green(longer):
    result = longer.to_json()
    assert result["green_s"] == {"current": 33.0, "changed": 43.0}
    assert result["cycle_s"]["changed"] - result["cycle_s"]["current"] == pytest.approx(10.0)
    assert {p: g for p, g in longer.changed.greens.items() if p != 0} == {
        p: g for p, g in longer.current.greens.items() if p != 0
    }
    assert result["simulated_minutes"] == MINUTES


@pytest.mark.integration
def test_every_figure_is_finite_and_not_negative(longer):
    result = longer.to_json()
    json.dumps(result, allow_nan=False)  # storable as jsonb
    kinds = [a["kind"] for a in result["areas"]]
    assert kinds.count("approach") == 4 and kinds[-1] == "network"
    for area in result["areas"]:
        for plan in ("current", "changed"):
            m = area[plan]
            assert m["vehicles"] >= 0 and m["queue_max"] >= 0
            assert math.isfinite(m["queue_mean"]) and 0 <= m["queue_mean"] <= m["queue_max"]
            if m["vehicles"]:
                assert math.isfinite(m["delay_s"]) and m["delay_s"] >= 0
    network = _area(result, "network")["current"]
    assert network["vehicles"] > 50 and network["delay_s"] > 0 and network["queue_max"] > 0
    for plan in ("current", "changed"):
        assert result["vehicles"][plan]["completed"] > 0


@pytest.mark.integration
def test_cutting_a_through_phase_to_its_minimum_delays_its_approaches(cut):
    served = _area(cut.to_json(), "served")
    assert served["current"]["vehicles"] > 10
    assert served["changed"]["delay_s"] > served["current"]["delay_s"] + 10
    assert served["changed"]["queue_mean"] > served["current"]["queue_mean"]
    assert cut.to_json()["same_demand"] is True


def test_unknown_signal_phase_or_green_is_refused():
    with pytest.raises(WhatIfError, match="no phase 9"):
        simulate_change("cologne8", "247379907", 9, 30.0, data_dir=DATA)
    with pytest.raises(WhatIfError, match="no signal 'nowhere'"):
        simulate_change("cologne8", "nowhere", 0, 30.0, data_dir=DATA)
    with pytest.raises(WhatIfError, match="outside"):
        simulate_change("cologne8", "247379907", 1, 60.0, data_dir=DATA)  # a left-turn phase
    with pytest.raises(WhatIfError, match="minutes"):
        simulate_change("cologne8", "247379907", 0, 30.0, minutes=0, data_dir=DATA)
    with pytest.raises(WhatIfError, match="whole number"):
        simulate_change("cologne8", "247379907", "0", 30.0, data_dir=DATA)


def test_served_approaches_follow_the_phase():
    layout, _ = twin_layout("cologne8", DATA)
    signal = next(s for s in layout.signals if s.tls_id == CUT[0])
    bounds = {a.bound for a in signal.approaches if a.edge_id in _served(signal, CUT[1])}
    assert bounds == {"northbound", "southbound"}


@pytest.mark.integration
def test_runner_stores_the_what_if_in_the_action(database_url, pg_schema):
    from cityos.db import connect

    settings = load_settings(
        database_url=database_url,
        kafka_bootstrap="127.0.0.1:9",
        database_schema=pg_schema,
        twin_network="cologne8",
    )
    now = datetime.now(UTC)
    with connect(database_url, pg_schema) as conn:
        for action_id, phase in (("act_good", 0), ("act_bad", 9)):
            conn.execute(
                "INSERT INTO actions (action_id, kind, status, target, params, reason,"
                " proposed_by, proposed_at, expires_at) VALUES (%s, 'signal_timing', 'proposed',"
                " %s, %s, 'test', 'alice', %s, %s)",
                (
                    action_id,
                    Jsonb({"intersection_id": LONGER[0]}),
                    Jsonb({"phase_index": phase, "green_s": LONGER[2]}),
                    now,
                    now + timedelta(minutes=15),
                ),
            )
    runner = WhatIfRunner(lambda: connect(database_url, pg_schema), settings, minutes=3)
    try:
        good = runner.submit(
            "act_good", {"intersection_id": LONGER[0]}, {"phase_index": 0, "green_s": LONGER[2]}
        )
        bad = runner.submit(
            "act_bad", {"intersection_id": LONGER[0]}, {"phase_index": 9, "green_s": LONGER[2]}
        )
        assert good.result(timeout=300)["green_s"]["changed"] == LONGER[2]
        assert "no phase 9" in bad.result(timeout=300)["error"]
    finally:
        runner.close()
    with connect(database_url, pg_schema) as conn:
        stored = dict(conn.execute("SELECT action_id, what_if FROM actions").fetchall())
    assert stored["act_good"]["simulated_minutes"] == 3
    assert stored["act_good"]["same_demand"] is True
    assert "no phase 9" in stored["act_bad"]["error"]
