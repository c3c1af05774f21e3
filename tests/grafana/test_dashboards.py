"""The dashboard files: generated, up to date, and valid under Grafana 12's dashboard schema.

infra/grafana/schema/dashboard.schema.json is Grafana 12.2's own dashboard type (the
@grafana/schema npm package, 12.2.0, the version the compose stack runs) as JSON Schema; its
SOURCE.md says how it was made. It is strict (additionalProperties: false throughout).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cityos.grafana.dashboards import DASHBOARDS, build, render
from cityos.grafana.query import DATASOURCE_TYPE, DATASOURCE_UID

INFRA = Path(__file__).resolve().parents[2] / "infra" / "grafana"
SCHEMA = json.loads((INFRA / "schema" / "dashboard.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)


def _errors(dashboard: dict[str, Any]) -> list[str]:
    """Every violation, with those inside anyOf branches (Panel | RowPanel) spelled out."""
    found: list[str] = []

    def walk(errors: Any) -> None:
        for e in errors:
            found.append(f"{list(e.absolute_path)}: {e.message[:200]}")
            walk(e.context or [])

    walk(VALIDATOR.iter_errors(dashboard))
    return found


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_file_is_generated_and_up_to_date(name: str) -> None:
    path = INFRA / "dashboards" / f"{name}.json"
    assert path.read_text(encoding="utf-8") == render(name), "run `cityos grafana build`"


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_valid_under_grafana_dashboard_schema(name: str) -> None:
    assert _errors(build(name)) == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.__setitem__("style", "dark"), "style"),  # gone since Grafana 11
        (lambda d: d["panels"][0]["gridPos"].__setitem__("w", "wide"), "gridPos"),
        (lambda d: d["panels"][0].__setitem__("options", None), "options"),
        (lambda d: d["templating"]["list"][0].__setitem__("auto_min", "10s"), "auto_min"),
    ],
)
def test_the_schema_rejects_what_grafana_would(change: Any, where: str) -> None:
    dashboard = copy.deepcopy(build("traffic"))
    change(dashboard)
    assert any(where in e for e in _errors(dashboard)), _errors(dashboard)


def _options_schema(panel_type: str) -> dict[str, Any] | None:
    """The plugin's Options schema, without its top-level `required` (Grafana fills defaults)."""
    path = INFRA / "schema" / "panels" / f"{panel_type.replace('-', '')}.options.schema.json"
    if not path.exists():
        return None
    schema = json.loads(path.read_text(encoding="utf-8"))
    schema["definitions"][schema["$ref"].rsplit("/", 1)[-1]].pop("required", None)
    return schema


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_panel_options_valid_under_their_plugin_schema(name: str) -> None:
    checked = 0
    for panel in build(name)["panels"]:
        schema = _options_schema(panel["type"])
        if schema is None:
            assert panel["type"] == "geomap"  # see infra/grafana/schema/SOURCE.md
            continue
        errors = [
            e.message for e in jsonschema.Draft7Validator(schema).iter_errors(panel["options"])
        ]
        assert errors == [], panel["title"]
        checked += 1
    assert checked


def test_panel_options_schema_rejects_unknown_and_wrong_values() -> None:
    panel = copy.deepcopy(build("traffic")["panels"][0])
    panel["options"]["legend"]["placement"] = "middle"
    panel["options"]["legendd"] = {}
    schema = _options_schema("timeseries")
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(panel["options"])]
    assert len(errors) == 2, errors


def _datasource_uid() -> str:
    path = INFRA / "provisioning" / "datasources" / "cityos-postgres.yaml"
    (source,) = yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    return source["uid"]


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_panels_query_the_provisioned_datasource(name: str) -> None:
    assert _datasource_uid() == DATASOURCE_UID
    dashboard = build(name)
    for panel in dashboard["panels"]:
        if panel["type"] == "text":
            continue
        assert panel["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID
            assert target["format"] in ("time_series", "table")


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_layout_and_variables(name: str) -> None:
    dashboard = build(name)
    panels = dashboard["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:  # no two panels share a grid cell
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    defined = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    for panel in panels:
        for target in panel.get("targets", []):
            used = set(re.findall(r"\$([a-z]\w*)", target["rawSql"]))
            assert used <= defined, (panel["title"], used - defined)
