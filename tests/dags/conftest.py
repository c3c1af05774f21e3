"""An Airflow of the test session's own: a temp AIRFLOW_HOME with a SQLite metadata DB.

``airflow db migrate`` runs once per session (about 8 s). Airflow reads its configuration when
it is first imported, so the variables are set before any test imports it; a session that had
imported Airflow already (with another home) is refused rather than silently sharing a DB.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cityos.airflow import AirflowHome, patch_airflow


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHome]:
    home = AirflowHome(tmp_path_factory.mktemp("airflow"))
    if "airflow.settings" in sys.modules:
        from airflow.configuration import AIRFLOW_HOME

        if Path(AIRFLOW_HOME) != home.home:
            pytest.fail(
                f"Airflow was imported before the test home was set (AIRFLOW_HOME="
                f"{AIRFLOW_HOME}); run the DAG tests in their own pytest session"
            )
    with pytest.MonkeyPatch.context() as patch:
        for name, value in home.variables().items():
            patch.setenv(name, value)
        home.migrate()
        patch_airflow()  # tasks run in this process under dag.test(); see cityos/airflow.py
        yield home


@pytest.fixture(scope="session")
def dagbag(airflow_home: AirflowHome):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(airflow_home.dags_folder), include_examples=False)
