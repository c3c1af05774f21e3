"""The whole embedded stack: PostgreSQL and Kafka under one state directory, up and down together.

``up`` is idempotent: what runs already is left alone, what is missing is started. It ends by
writing ``<state_dir>/cityos.env`` (mode 600: it holds the database password), which
``cityos.settings.load_settings`` reads, so every other command finds the stack without exports.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from cityos.errors import ConfigError
from cityos.settings import Settings
from cityos.stack.kafka import KafkaBroker, ensure_topics
from cityos.stack.postgres import PostgresServer
from cityos.topics import Topics

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class _StackSettings(Settings):
    """Settings as `cityos up` sees them: the connections are what it produces, so not required."""

    model_config = SettingsConfigDict(env_prefix="CITYOS_", extra="ignore", validate_default=False)
    kafka_bootstrap: str | None = None  # type: ignore[assignment]
    database_url: SecretStr | None = None  # type: ignore[assignment]


@dataclass(frozen=True)
class StackConfig:
    """The stack's own knobs: where it lives, its ports, how topics are made."""

    state_dir: Path
    cache_dir: Path
    kafka_port: int
    kafka_controller_port: int
    postgres_port: int
    kafka_partitions: int = 4
    kafka_retention_hours: int = 72
    topic_prefix: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> StackConfig:
        return cls(
            state_dir=settings.state_dir,
            cache_dir=settings.cache_dir,
            kafka_port=settings.kafka_port,
            kafka_controller_port=settings.kafka_controller_port,
            postgres_port=settings.postgres_port,
            kafka_partitions=settings.kafka_partitions,
            kafka_retention_hours=settings.kafka_retention_hours,
            topic_prefix=settings.topic_prefix,
        )

    @classmethod
    def from_env(cls, **overrides: object) -> StackConfig:
        """From CITYOS_* variables (and ``overrides``), without needing the connection settings."""
        try:
            settings = _StackSettings(**overrides)  # type: ignore[arg-type]
        except ValidationError as err:
            first = err.errors()[0]
            name = "CITYOS_" + str(first["loc"][0]).upper() if first["loc"] else "CITYOS_*"
            raise ConfigError(name, first["msg"]) from err
        return cls.from_settings(settings)

    @property
    def retention_ms(self) -> int:
        return self.kafka_retention_hours * 3600 * 1000


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    address: str
    log_path: Path


@dataclass(frozen=True)
class Connections:
    """What `up` hands to the rest of CityOS (the URL holds a password: do not log it)."""

    kafka_bootstrap: str
    database_url: str


class Stack:
    """PostgreSQL + Kafka of one state directory."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        logs = config.state_dir / "logs"
        self.postgres = PostgresServer(
            home=config.state_dir / "postgres",
            log_path=logs / "postgres.log",
            port=config.postgres_port,
        )
        self.kafka = KafkaBroker(
            home=config.state_dir / "kafka",
            log_path=logs / "kafka.log",
            port=config.kafka_port,
            controller_port=config.kafka_controller_port,
            cache_dir=config.cache_dir,
        )

    @classmethod
    def from_env(cls, **overrides: object) -> Stack:
        return cls(StackConfig.from_env(**overrides))

    @property
    def env_file(self) -> Path:
        return self.config.state_dir / "cityos.env"

    def connections(self) -> Connections:
        return Connections(kafka_bootstrap=self.kafka.bootstrap, database_url=self.postgres.url())

    def up(self, progress: Progress | None = None, *, create_topics: bool = True) -> Connections:
        """Start what is not running, create the topics, write cityos.env; safe to repeat."""
        say = progress or log.info
        with self._lock():
            say(f"PostgreSQL on {self.postgres.address}")
            self.postgres.start()
            say(f"Kafka on {self.kafka.bootstrap} (a JVM: takes a few seconds)")
            self.kafka.start()
            if create_topics:
                names = Topics(self.config.topic_prefix).all()
                say(f"topics: {', '.join(names)}")
                ensure_topics(
                    self.kafka.bootstrap,
                    names,
                    partitions=self.config.kafka_partitions,
                    retention_ms=self.config.retention_ms,
                )
            connections = self.connections()
            self._write_env(connections)
            say(f"connections written to {self.env_file}")
        return connections

    def down(self, progress: Progress | None = None) -> None:
        """Stop both services; their data and cityos.env stay for the next `up`."""
        say = progress or log.info
        with self._lock():
            say("stopping Kafka")
            self.kafka.stop()
            say("stopping PostgreSQL")
            self.postgres.stop()

    def status(self) -> list[ComponentStatus]:
        kafka_pid, pg_pid = self.kafka.pid(), self.postgres.pid()
        return [
            ComponentStatus(
                name="postgres",
                running=pg_pid is not None,
                healthy=pg_pid is not None and self.postgres.healthy(),
                pid=pg_pid,
                address=self.postgres.address,
                log_path=self.postgres.log_path,
            ),
            ComponentStatus(
                name="kafka",
                running=kafka_pid is not None,
                healthy=kafka_pid is not None and self.kafka.healthy(),
                pid=kafka_pid,
                address=self.kafka.bootstrap,
                log_path=self.kafka.log_path,
            ),
        ]

    def _write_env(self, connections: Connections) -> None:
        text = (
            f"# Written by `cityos up`: connections of the stack in {self.config.state_dir}.\n"
            f"CITYOS_KAFKA_BOOTSTRAP={connections.kafka_bootstrap}\n"
            f"CITYOS_DATABASE_URL={connections.database_url}\n"
        )
        tmp = self.env_file.with_suffix(".env.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        tmp.chmod(0o600)
        tmp.replace(self.env_file)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One `up`/`down` at a time per state dir (engineers and test sessions share one)."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.config.state_dir / ".stack.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
