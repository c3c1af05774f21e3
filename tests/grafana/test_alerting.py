"""The provisioned Grafana alert rules: well-formed, on the CityOS data source, and their SQL
runs on the dashboard test database returning the one number the threshold needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cityos.grafana.dashboards import FOLDER_TITLE
from cityos.grafana.query import DATASOURCE_UID

RULES = Path(__file__).resolve().parents[2] / "infra/grafana/provisioning/alerting"


def _rules() -> list[dict[str, Any]]:
    found = []
    for path in sorted(RULES.glob("*.yaml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert document["apiVersion"] == 1
        for group in document["groups"]:
            assert group["folder"] == FOLDER_TITLE and group["interval"]
            found.extend(group["rules"])
    return found


def test_rules_are_well_formed() -> None:
    rules = _rules()
    assert {r["uid"] for r in rules} == {"cityos-pipeline-stalled", "cityos-alert-outbox-stuck"}
    for rule in rules:
        refs = {q["refId"]: q for q in rule["data"]}
        assert rule["condition"] in refs
        for query in rule["data"]:
            assert query["model"]["refId"] == query["refId"]
            if query["datasourceUid"] == "__expr__":
                assert query["model"]["expression"] in refs  # an expression reads a query
            else:
                assert query["datasourceUid"] == DATASOURCE_UID
        assert rule["labels"]["team"] == "cityos"
        assert rule["noDataState"] in ("OK", "NoData", "Alerting")
        assert rule["execErrState"] in ("OK", "Error", "Alerting")


@pytest.mark.integration
@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["uid"])
def test_rule_query_returns_one_number(grafana_database_url: str, rule: dict[str, Any]) -> None:
    from cityos.db import connect

    with connect(grafana_database_url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = on")
        for query in rule["data"]:
            if query["datasourceUid"] != DATASOURCE_UID:
                continue
            rows = conn.execute(query["model"]["rawSql"]).fetchall()
            assert len(rows) == 1 and len(rows[0]) == 1
            assert isinstance(rows[0][0], float) and rows[0][0] >= 0
