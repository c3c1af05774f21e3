"""Fixtures of the operations tests: settings on a test's own schema and state folder, scrapes
parsed from the Prometheus text format, real air-quality events (PRSA Beijing, Guanyuan)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cityos import events
from cityos.settings import Settings
from tests.jobs.conftest import prsa_december, prsa_event, spark  # noqa: F401 - spark: a fixture

STATION = "Guanyuan"
SENSOR = "beijing-aq-guanyuan"


@pytest.fixture
def ops_settings(settings: Settings, pg_schema: str, tmp_path: Path) -> Settings:
    """The test stack, this test's topics and schema, and a state folder of its own (so its
    checkpoints, lake and Airflow home are only what the test made)."""
    return settings.model_copy(
        update={
            "database_schema": pg_schema,
            "state_dir": tmp_path,
            "lake_dir": tmp_path / "lake",
            "model_dir": tmp_path / "models",
        }
    )


def air_events(count: int, first: int = 0) -> list[events.Event]:
    """``count`` real hourly readings of the Guanyuan station (December 2016), from ``first``."""
    rows = prsa_december(STATION).iloc[first : first + count]
    return [prsa_event(SENSOR, r) for _, r in rows.iterrows()]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a scrape (text format), or None when it is absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@pytest.fixture
def produce(kafka_bootstrap: str) -> Iterator:
    """``produce(topic, events)``: sends with the project's producer, flushed; returns its stats."""
    from cityos.streaming.producer import make_producer

    producer = make_producer(kafka_bootstrap, "kafka-python")

    def send(topic: str, batch: list[events.Event]):
        for event in batch:
            producer.send(topic, event)
        producer.flush(30)
        return producer.stats

    yield send
    producer.close()
