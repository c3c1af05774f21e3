"""The embedded stack: Kafka and PostgreSQL as native processes under one state directory.

``Stack.from_env().up()`` brings both up (idempotent) and writes ``<state_dir>/cityos.env``;
``kafka_classpath()`` / ``spark_jars()`` give the cached Maven jars; ``ensure_topics`` and
``delete_topics`` manage topics on any broker.
"""

from cityos.stack.jars import kafka_classpath, spark_jars
from cityos.stack.kafka import KafkaBroker, delete_topics, ensure_topics
from cityos.stack.postgres import PostgresServer
from cityos.stack.stack import ComponentStatus, Connections, Stack, StackConfig

__all__ = [
    "ComponentStatus",
    "Connections",
    "KafkaBroker",
    "PostgresServer",
    "Stack",
    "StackConfig",
    "delete_topics",
    "ensure_topics",
    "kafka_classpath",
    "spark_jars",
]
