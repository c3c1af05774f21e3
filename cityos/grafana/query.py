"""The PostgreSQL query of a panel, as the foundation SDK's dataquery variant.

The SDK has builders for Prometheus, Loki, Tempo… but none for Grafana's core SQL data sources,
so this is the one small piece written by hand: a `Dataquery` with the fields the
grafana-postgresql-datasource plugin stores for a query in code mode (`editorMode: code`).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE_UID = "cityos-postgres"  # infra/grafana/provisioning/datasources/cityos-postgres.yaml
DATASOURCE = dashboard.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)

Format = Literal["time_series", "table"]


@dataclass
class SQLQuery(cogvariants.Dataquery):
    """One raw-SQL target of a panel (Grafana macros and $variables unexpanded)."""

    ref_id: str
    raw_sql: str
    format: Format = "table"

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID},
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql,
        }


class SQL(cogbuilder.Builder[SQLQuery]):
    """Builder of an `SQLQuery`, to hand to a panel builder's `with_target`."""

    def __init__(self, raw_sql: str, ref_id: str = "A") -> None:
        self._query = SQLQuery(ref_id=ref_id, raw_sql=textwrap.dedent(raw_sql).strip())

    def time_series(self) -> Self:
        """Grafana turns (time, metric, value) rows into one series per metric."""
        self._query.format = "time_series"
        return self

    def build(self) -> SQLQuery:
        return self._query
