"""Retraining on real Beijing windows: register, compare on a held-out day, promote if better."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from cityos.anomaly.registry import production, versions
from cityos.anomaly.retrain import retrain
from cityos.db import connect
from cityos.settings import load_settings
from tests.anomaly.test_score import beijing, days, merge_day  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

UTC = "UTC"


@pytest.fixture
def warehouse(database_url: str, beijing: str, kafka_bootstrap: str, tmp_path: Path):  # noqa: F811
    """Three weeks of two stations' hourly windows, and settings pointing at them."""
    with connect(database_url, beijing, autocommit=True) as conn:
        for day in days("2013-11-10", 21):
            merge_day(conn, day)
    return load_settings(
        database_url=database_url,
        database_schema=beijing,
        kafka_bootstrap=kafka_bootstrap,
        state_dir=tmp_path,
    )


def test_retrain_registers_promotes_and_is_idempotent(warehouse) -> None:
    day = pd.Timestamp("2013-11-24", tz=UTC).to_pydatetime()
    lookback = timedelta(days=7)
    first = retrain(warehouse, day - timedelta(days=1), day, lookback=lookback)
    assert first["promoted"] and first["reason"] == "no model in production"
    assert first["series"] == 10 and first["sensors"] == 2  # 2 stations x 5 metrics
    assert first["candidate"]["mase"] > 0 and first["candidate"]["points"] > 0
    folder = warehouse.model_dir / "anomaly" / first["version"]
    assert (folder / "model.json").exists() and (folder / "states.parquet").exists()

    again = retrain(warehouse, day - timedelta(days=1), day, lookback=lookback)  # a rerun
    assert again["version"] == first["version"] and again["promoted"]
    with connect(warehouse.database_url.get_secret_value(), warehouse.database_schema) as conn:
        assert [v.version for v in versions(conn, "anomaly")] == [first["version"]]

    # the next day: the candidate is measured against production on the held-out day
    nxt = retrain(warehouse, day, day + timedelta(days=1), lookback=lookback)
    assert nxt["production_version"] == first["version"]
    mine, theirs = nxt["candidate"]["mase"], nxt["production"]["mase"]
    assert nxt["production"]["points"] == nxt["candidate"]["points"]
    assert nxt["promoted"] == (mine < theirs)
    with connect(warehouse.database_url.get_secret_value(), warehouse.database_schema) as conn:
        live = production(conn, "anomaly")
        statuses = {v.version: v.status for v in versions(conn, "anomaly")}
    assert live is not None
    assert live.version == (nxt["version"] if nxt["promoted"] else first["version"])
    assert statuses[nxt["version"]] == ("production" if nxt["promoted"] else "rejected")
    assert sorted(statuses.values()).count("production") == 1


def test_an_interval_without_room_for_a_holdout_is_refused(warehouse) -> None:
    day = pd.Timestamp("2013-11-24", tz=UTC).to_pydatetime()
    with pytest.raises(ValueError, match="not longer than the held-out"):
        retrain(
            warehouse,
            day - timedelta(hours=1),
            day,
            lookback=timedelta(hours=12),
            holdout=timedelta(days=1),
        )
