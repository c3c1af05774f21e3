"""Shared fixtures: a real test stack (Kafka + PostgreSQL) and per-test topics and schemas.

Nothing starts at import or for unit tests: the session fixture ``stack`` brings up the test stack
(state dir ``<repo>/.state/test``, ports 29092/29093/25432, apart from the dev stack) the first time
an integration test asks for it, reusing one that already runs. Several pytest sessions may share
it (engineers in one tree): each holds a lease, and the last one out stops the stack unless
CITYOS_KEEP_STACK=1.

Fixtures for integration tests (names are stable; other parts build on them):
    kafka_bootstrap  str, host:port of the test broker
    database_url     str, postgresql:// URL of the test database
    topics           cityos.topics.Topics with a unique prefix; all its topics exist for the test
    pg_schema        name of a fresh schema with every migration applied; dropped afterwards
    settings         cityos.settings.Settings for the test stack and the test's topic prefix
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cityos.settings import REPO_ROOT, Settings, load_settings
from cityos.topics import Topics

if TYPE_CHECKING:
    from cityos.stack import Stack

TEST_STATE_DIR = REPO_ROOT / ".state" / "test"
TEST_PORTS = {"kafka_port": 29092, "kafka_controller_port": 29093, "postgres_port": 25432}


def _keep_stack() -> bool:
    return os.environ.get("CITYOS_KEEP_STACK", "") not in ("", "0", "false", "no")


@contextlib.contextmanager
def _leases() -> Iterator[Path]:
    """The lease folder, locked: who else (which live pytest) uses the test stack now."""
    folder = TEST_STATE_DIR / "leases"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _other_live_leases(folder: Path) -> list[int]:
    from cityos.stack.process import is_alive

    others = []
    for lease in folder.glob("[0-9]*"):
        pid = int(lease.name)
        if pid != os.getpid() and is_alive(pid):
            others.append(pid)
        elif pid != os.getpid():
            lease.unlink(missing_ok=True)  # a session that died without cleaning up
    return others


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The test stack, up for this session (shared with concurrent sessions through leases)."""
    from cityos.stack import Stack

    test_stack = Stack.from_env(state_dir=TEST_STATE_DIR, topic_prefix="", **TEST_PORTS)
    with _leases() as folder:
        lease = folder / str(os.getpid())
        lease.touch()
        try:
            test_stack.up(create_topics=False)
        except BaseException:
            lease.unlink(missing_ok=True)
            raise
    try:
        yield test_stack
    finally:
        with _leases() as folder:
            lease.unlink(missing_ok=True)
            if not _other_live_leases(folder) and not _keep_stack():
                test_stack.down()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Stack) -> str:
    return stack.kafka.bootstrap


@pytest.fixture(scope="session")
def database_url(stack: Stack) -> str:
    return stack.postgres.url()


@pytest.fixture
def topics(stack: Stack, kafka_bootstrap: str) -> Iterator[Topics]:
    """All CityOS topics under a prefix of this test's own (``t<uuid8>.``), deleted afterwards."""
    from cityos.stack import delete_topics, ensure_topics

    test_topics = Topics(prefix=f"t{uuid.uuid4().hex[:8]}.")
    names = test_topics.all()
    ensure_topics(
        kafka_bootstrap,
        names,
        partitions=stack.config.kafka_partitions,
        retention_ms=stack.config.retention_ms,
    )
    yield test_topics
    delete_topics(kafka_bootstrap, names)


@pytest.fixture
def pg_schema(database_url: str) -> Iterator[str]:
    """A schema of this test's own with all migrations applied; dropped with its tables after."""
    from psycopg import sql

    from cityos.db import connect, migrate

    schema = f"t_{uuid.uuid4().hex[:8]}"
    migrate(database_url, schema)
    yield schema
    with connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def settings(stack: Stack, kafka_bootstrap: str, database_url: str, topics: Topics) -> Settings:
    """Settings pointing at the test stack, with this test's topic prefix."""
    return load_settings(
        state_dir=TEST_STATE_DIR,
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        topic_prefix=topics.prefix,
        kafka_partitions=stack.config.kafka_partitions,
        kafka_retention_hours=stack.config.kafka_retention_hours,
        **TEST_PORTS,
    )
