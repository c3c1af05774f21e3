"""The code passes its own linters, as `make lint` runs them: ruff's rules, ruff's format, mypy.

They ran only when someone typed `make lint`, and drifted (32 files unformatted, 20 mypy errors,
one of them a controller protocol without the method its caller used) until they were part of
`make test`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINTERS = {
    "ruff check": ["ruff", "check", "."],
    "ruff format": ["ruff", "format", "--check", "."],
    "mypy": ["mypy"],  # the files of pyproject.toml's [tool.mypy]
}


@pytest.mark.parametrize("command", LINTERS.values(), ids=LINTERS.keys())
def test_the_code_passes_its_linters(command: list[str]) -> None:
    result = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"
