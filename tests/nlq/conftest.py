"""Session fixtures for the NL-query integration tests: the evaluation fixture and a warm Spark.

    nlq_database_url  str, URL of database ``cityos_nlq_test`` in the test stack's PostgreSQL:
                      every migration (so the service's own tables exist) and the evaluation
                      kit's fixture (shared/nlq/fixture.py), loaded once: a later session skips
                      the ~30 s load when the stored sha256 of fixture.py still matches.
                      Shared by every session: treat the serving tables as read-only (a test that
                      writes them must restore them, or use a database of its own).
    nlq_settings      cityos.settings.Settings pointing at that database, small local Spark
    spark_executor    cityos.nlq.execute.SparkExecutor over it, warmed

Spark: ``spark_session`` returns the process's running session when there is one (the jobs'
tests start one), and the executor works in a ``newSession()`` of it, so both share the one
SparkContext pyspark allows per process without seeing each other's views or SQL settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from cityos.settings import Settings, load_settings
from tests.conftest import TEST_PORTS, TEST_STATE_DIR

if TYPE_CHECKING:
    from cityos.nlq.execute import SparkExecutor
    from cityos.stack import Stack

NLQ_TEST_DATABASE = "cityos_nlq_test"


@pytest.fixture(scope="session")
def nlq_database_url(database_url: str) -> str:
    from cityos.cli.nlq_eval import fixture_database

    return fixture_database(database_url, NLQ_TEST_DATABASE)


@pytest.fixture(scope="session")
def nlq_settings(stack: Stack, nlq_database_url: str) -> Settings:
    return load_settings(
        state_dir=TEST_STATE_DIR,
        kafka_bootstrap=stack.kafka.bootstrap,
        database_url=nlq_database_url,
        database_schema="public",
        spark_master="local[2]",
        spark_shuffle_partitions=2,
        nlq_whatif_minutes=10,  # what-if of proposals: short windows keep the tests quick
        **TEST_PORTS,
    )


@pytest.fixture(scope="session")
def spark_executor(nlq_settings: Settings) -> Iterator[SparkExecutor]:
    from cityos.nlq.execute import SparkExecutor

    executor = SparkExecutor(nlq_settings)
    executor.warm(rounds=1)  # tests need it working, not at full speed
    yield executor
    executor.close()  # the SparkContext stays for the rest of the run; pyspark stops it at exit
