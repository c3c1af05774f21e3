"""A single-node Kafka 4.1 broker in KRaft mode (broker and controller in one JVM) on 127.0.0.1.

Everything lives under one folder (``<state_dir>/kafka``): the generated ``server.properties``, the
cluster id (generated once, kept, so the formatted log dirs stay valid), the log dirs and the pid
file. The broker's own output goes to ``<state_dir>/logs/kafka.log``. The settings below are those
of a one-node development cluster: every internal topic has one replica, no topic appears by
accident, and a consumer group starts at once instead of waiting for more members.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from cityos.errors import StackError
from cityos.stack.jars import kafka_classpath
from cityos.stack.process import (
    PidFile,
    find_java,
    is_alive,
    port_open,
    spawn_detached,
    terminate,
    wait_until,
)
from cityos.topics import Topics

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
NODE_ID = 1

# One-node development cluster: replication 1 everywhere, few internal partitions (the defaults of
# 50 cost seconds of start-up on a 2-core machine), no automatic topics, no rebalance delay.
BROKER_PROPERTIES: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": str(NODE_ID),
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "8",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "auto.create.topics.enable": "false",
    "delete.topic.enable": "true",
    "log.retention.hours": "72",
    "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
    "num.network.threads": "2",
    "num.io.threads": "4",
}

LOG4J2_PROPERTIES = """\
# Written by cityos.stack.kafka: broker logs to stdout, which the stack sends to kafka.log.
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d{ISO8601}{UTC}Z] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""

JVM_OPTIONS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (as Uuid.randomUuid)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka rejects ids that look like command-line flags
            return text


@dataclass(frozen=True)
class KafkaBroker:
    """The embedded broker; every method is safe to call in any state."""

    home: Path
    log_path: Path
    port: int
    controller_port: int
    heap_mb: int = 512
    cache_dir: Path | None = None
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0
    pid_file: PidFile = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "pid_file", PidFile(self.home / "kafka.pid", str(self.config_path))
        )

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def pid(self) -> int | None:
        return self.pid_file.running_pid()

    def healthy(self) -> bool:
        """The port answers and the broker serves a metadata request."""
        if not port_open(HOST, self.port):
            return False
        try:
            with admin_client(self.bootstrap, timeout_ms=5000) as admin:
                admin.list_topics()
        except (KafkaError, OSError) as err:
            log.debug("broker %s not healthy yet: %s", self.bootstrap, err)
            return False
        return True

    def start(self) -> int:
        """Start the broker unless it runs already; returns its pid once it serves metadata."""
        running = self.pid()
        if running is not None:
            log.info("kafka already running (pid %d) on %s", running, self.bootstrap)
            return running
        for port in (self.port, self.controller_port):
            if port_open(HOST, port):
                raise StackError(
                    f"port {HOST}:{port} is taken by another process; choose another "
                    "(CITYOS_KAFKA_PORT / CITYOS_KAFKA_CONTROLLER_PORT)"
                )
        java = find_java()
        classpath = kafka_classpath(self.cache_dir)
        self._write_config()
        self._format_storage(java, classpath)
        argv = [
            str(java),
            f"-Xms{self.heap_mb}m",
            f"-Xmx{self.heap_mb}m",
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(self.config_path),
        ]
        pid = spawn_detached(argv, self.log_path)
        self.pid_file.write(pid)
        log.info("kafka starting (pid %d) on %s, log %s", pid, self.bootstrap, self.log_path)
        wait_until(
            self.healthy,
            timeout_s=self.start_timeout_s,
            what="kafka",
            log_path=self.log_path,
            alive=lambda: is_alive(pid),
        )
        log.info("kafka ready on %s", self.bootstrap)
        return pid

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            log.info("stopping kafka (pid %d)", pid)
            terminate(pid, self.stop_timeout_s, "kafka")
        self.pid_file.remove()

    def restart(self) -> int:
        """Stop and start again; the data in the log dirs survives."""
        self.stop()
        return self.start()

    def _write_config(self) -> None:
        properties = {
            **BROKER_PROPERTIES,
            "controller.quorum.voters": f"{NODE_ID}@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "log.dirs": str(self.data_dir),
        }
        self.home.mkdir(parents=True, exist_ok=True)
        lines = ["# Written by cityos.stack.kafka at every start; edits are overwritten."]
        lines += [f"{key}={value}" for key, value in properties.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        (self.home / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def _cluster_id(self) -> str:
        path = self.home / "cluster.id"
        if not path.exists():
            path.write_text(new_cluster_id() + "\n")
        return path.read_text().strip()

    def _format_storage(self, java: Path, classpath: str) -> None:
        """Format the log dirs once with the kept cluster id (as kafka-storage.sh format)."""
        if (self.data_dir / "meta.properties").exists():
            return
        argv = [
            str(java),
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self._cluster_id(),
            "--config",
            str(self.config_path),
            "--ignore-formatted",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"formatting kafka storage failed:\n{done.stdout}{done.stderr}")
        log.info("formatted kafka storage in %s", self.data_dir)


@contextlib.contextmanager
def admin_client(bootstrap: str, timeout_ms: int = 30000) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="cityos-stack",
        request_timeout_ms=timeout_ms,
    )
    try:
        yield admin
    finally:
        admin.close()


def ensure_topics(
    bootstrap: str, names: Iterable[str], partitions: int, retention_ms: int
) -> list[str]:
    """Create the topics that do not exist yet, with explicit partitions and retention.

    Existing topics are left as they are (a topic's partition count only grows, and a changed
    count would move keys between partitions). Returns the names created now.
    """
    if partitions < 1:
        raise StackError(f"a topic needs at least one partition, got {partitions}")
    wanted = list(dict.fromkeys(names))
    with admin_client(bootstrap) as admin:
        existing = set(admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        specs = {
            name: {
                "num_partitions": partitions,
                "replication_factor": 1,
                "configs": {"retention.ms": str(retention_ms), **Topics.configs(name)},
            }
            for name in missing
        }
        result = admin.create_topics(specs, raise_errors=False, wait_for_metadata=False)
        errors = [
            f"{t['name']}: {t.get('error_message') or t['error_code']}"
            for t in result["topics"]
            if t["error_code"] not in (0, 36)  # 36: TOPIC_ALREADY_EXISTS (a concurrent creator)
        ]
        if errors:
            raise StackError("creating topics failed: " + "; ".join(errors))
        admin.wait_for_topics(missing)
    log.info(
        "created topics %s (%d partitions, retention %d ms)", missing, partitions, retention_ms
    )
    return missing


def delete_topics(bootstrap: str, names: Iterable[str]) -> list[str]:
    """Delete the topics that exist; returns the names deleted."""
    with admin_client(bootstrap) as admin:
        existing = set(admin.list_topics())
        doomed = [name for name in dict.fromkeys(names) if name in existing]
        if doomed:
            admin.delete_topics(doomed)
    if doomed:
        log.info("deleted topics %s", doomed)
    return doomed
