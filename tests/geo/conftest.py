"""Fixtures for the geo unit tests: the real city files, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cityos.geo import CityGeo, city_spec_path, load_city
from cityos.settings import SHARED_DIR


@pytest.fixture(scope="session")
def data_dir() -> Path:
    folder = SHARED_DIR / "data"
    assert (folder / "cologne-districts").is_dir(), f"shared data missing at {folder}"
    return folder


@pytest.fixture(scope="session")
def cologne(data_dir: Path) -> CityGeo:
    return load_city(city_spec_path("cologne"), data_dir)


@pytest.fixture(scope="session")
def beijing(data_dir: Path) -> CityGeo:
    return load_city(city_spec_path("beijing"), data_dir)
