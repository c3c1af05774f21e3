"""The one SparkSession builder of CityOS: local by default, small, quiet, UTC.

The Kafka source/sink and the PostgreSQL JDBC driver come from the jar cache
(``cityos.stack.jars.spark_jars``), never from ``spark.jars.packages``: the machine resolving them
is the stack's business, and a job start must not reach Maven Central.
"""

from __future__ import annotations

import logging
import sys
from importlib import resources

from pyspark.sql import SparkSession

from cityos.settings import Settings

log = logging.getLogger(__name__)

# HotSpot leaves methods over 8,000 bytes of bytecode to the interpreter; the whole-stage code
# Spark generates for validating a micro-batch (one expression per rule and field) is such a
# method. Compiling it anyway: parse + validate + aggregate of 500k events 12.0 -> 7.7-8.3 s
# (min of 3-5 runs; streaming/README.md, "Where a micro-batch spends its time").
JIT_OPTIONS = "-XX:-DontCompileHugeMethods"
# every JVM of a session; spark_session adds the driver's log settings
JAVA_OPTIONS = f"-Duser.timezone=UTC {JIT_OPTIONS}"

# Settings every CityOS session gets; why each matters is said next to it.
BASE_CONF = {
    "spark.sql.session.timeZone": "UTC",  # windows and lake dates in UTC, whatever the host says
    "spark.driver.extraJavaOptions": JAVA_OPTIONS,
    "spark.executor.extraJavaOptions": JAVA_OPTIONS,
    "spark.driver.memory": "1g",  # one local JVM on a shared 2-core machine
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.streaming.noDataMicroBatches.enabled": "false",  # no empty batches to merge
    "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
    "spark.sql.parquet.compression.codec": "zstd",
    "spark.python.worker.reuse": "true",
    # SPARK-55271: the V2 Kafka micro-batch stream of spark-sql-kafka 4.1.1 throws a
    # NullPointerException while reporting progress of a batch replayed after a restart, so a job
    # killed mid-batch could never recover; the V1 Kafka source reads the same offsets without it
    "spark.sql.streaming.disabledV2MicroBatchReaders": (
        "org.apache.spark.sql.kafka010.KafkaSourceProvider"
    ),
}


def spark_session(settings: Settings, app_name: str) -> SparkSession:
    """The process's SparkSession (created once; later calls return the running one)."""
    from cityos.stack.jars import spark_jars

    jars = ",".join(str(p) for p in spark_jars(settings.cache_dir))
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName(app_name)
        .config("spark.jars", jars)
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.local.dir", str(settings.state_dir / "spark-tmp"))
        # Python workers (if a plan needs any) run this interpreter, which sees the venv
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
    )
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log4j = resources.files("cityos") / "data" / "log4j2-spark.properties"
    java_options = f"{JAVA_OPTIONS} -Dlog4j2.configurationFile={log4j} -Dcityos.log.dir={logs}"
    for key, value in {**BASE_CONF, "spark.driver.extraJavaOptions": java_options}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("spark %s on %s (%s)", spark.version, settings.spark_master, app_name)
    return spark
