"""Pins of requirements.lock for the packages the Airflow base image does not already have.

Run by airflow.Dockerfile before it installs cityos:

    python lock_constraints.py requirements.lock > constraints.txt
    pip install "apache-airflow==$AIRFLOW_VERSION" -c constraints.txt -e /opt/cityos

The official image's packages stay as Airflow's own constraints installed them (its providers,
the FAB auth manager, the metadata DB driver were tested with those), while everything CityOS
adds on top (pyspark, torch, geopandas, SUMO, ...) gets exactly the version of the lock, the one
CityOS is tested with. Prints nothing new for a package that is installed under any version.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(lock_text: str) -> dict[str, str]:
    """`name==version` lines of a uv/pip-compile lock, by normalized name (comments skipped)."""
    pins = {}
    for raw in lock_text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        match = _PIN.match(line)
        if match:
            pins[normalize(match["name"])] = line
    return pins


def constraints(lock_text: str, installed: Iterable[str]) -> list[str]:
    """The lock's pins for the packages not in ``installed`` (distribution names)."""
    have = {normalize(name) for name in installed}
    return [line for name, line in sorted(lock_pins(lock_text).items()) if name not in have]


def installed_names() -> set[str]:
    return {dist.metadata["Name"] for dist in metadata.distributions() if dist.metadata["Name"]}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: lock_constraints.py REQUIREMENTS_LOCK > constraints.txt\n")
        return 2
    lines = constraints(Path(argv[0]).read_text(), installed_names())
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
