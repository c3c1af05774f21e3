"""The dashboard test database: the evaluation fixture plus the pipeline tables seeded from it.

grafana_database_url  URL of database ``cityos_grafana_test`` in the test stack's
                      PostgreSQL: every migration, shared/nlq/fixture.py's real data, and
                      the internal tables filled by tests/grafana/seed.py. A database of
                      its own (not the NL-query tests'), as seeding writes alerts.
"""

from __future__ import annotations

import pytest

GRAFANA_TEST_DATABASE = "cityos_grafana_test"


@pytest.fixture(scope="session")
def grafana_database_url(database_url: str) -> str:
    from cityos.cli.nlq_eval import fixture_database
    from tests.grafana.seed import seed

    url = fixture_database(database_url, GRAFANA_TEST_DATABASE)
    seed(url)
    return url
