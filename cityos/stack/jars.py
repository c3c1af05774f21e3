"""The Java jars CityOS runs with, resolved from Maven Central into a cache outside the clone.

``infra/bin/ensure-jars`` does the resolving (Maven, one pom per jar set in ``infra/jars/``); this
module finds the cached set, runs the script when it is missing, and hands out paths. The cache key
is the pom's sha256, computed the same way as the script does, so a warm cache costs no subprocess.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

from cityos.errors import StackError
from cityos.settings import REPO_ROOT, cache_dir_from_env

log = logging.getLogger(__name__)

POM_DIR = REPO_ROOT / "infra" / "jars"
ENSURE_JARS = REPO_ROOT / "infra" / "bin" / "ensure-jars"


def jar_set_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Where jar set ``name`` lives (or will live) in the cache: ``jars/<name>-<sha of pom>``."""
    pom = POM_DIR / f"{name}.pom"
    if not pom.is_file():
        raise StackError(f"no jar set {name!r}: expected {pom}")
    key = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    return (cache_dir or cache_dir_from_env()) / "jars" / f"{name}-{key}"


def ensure_jar_set(name: str, cache_dir: Path | None = None) -> Path:
    """The directory of jar set ``name``, resolved by ensure-jars on first use."""
    cache = cache_dir or cache_dir_from_env()
    folder = jar_set_dir(name, cache)
    if (folder / ".complete").exists():
        return folder
    log.info("resolving jar set %r from Maven Central (first run only)", name)
    env = {**os.environ, "CITYOS_CACHE_DIR": str(cache)}
    done = subprocess.run(
        ["bash", str(ENSURE_JARS), name], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise StackError(f"infra/bin/ensure-jars {name} failed:\n{done.stderr.strip()[-4000:]}")
    printed = Path(done.stdout.strip().splitlines()[-1])
    if printed != folder:
        raise StackError(f"ensure-jars put jar set {name!r} in {printed}, expected {folder}")
    return folder


def _jars(name: str, cache_dir: Path | None) -> list[Path]:
    return sorted(ensure_jar_set(name, cache_dir).glob("*.jar"))


def kafka_classpath(cache_dir: Path | None = None) -> str:
    """Classpath of the broker (kafka.Kafka) and its storage tool."""
    return os.pathsep.join(str(jar) for jar in _jars("kafka", cache_dir))


def spark_jars(cache_dir: Path | None = None) -> list[Path]:
    """Jars to add to pyspark (spark.jars): the Kafka source/sink and the PostgreSQL driver."""
    return _jars("spark", cache_dir)
