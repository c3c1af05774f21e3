"""`cityos stream ...`: sources into Kafka (twin, replay, load); the Spark jobs sit beside them."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import typer

from cityos.errors import ConfigError
from cityos.settings import Settings, get_settings
from cityos.topics import Topics

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)


@contextlib.contextmanager
def _stop_on_sigint() -> Iterator[threading.Event]:
    """A stop flag set by Ctrl-C, so a source finishes its period, flushes and closes."""
    stop = threading.Event()

    def handler(_signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("stopping (Ctrl-C again to abort)")
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _parse_time(value: str | None, setting: str) -> datetime | None:
    from cityos.events import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as err:
        raise ConfigError(setting, f"expected an ISO-8601 time with offset, got {value!r}") from err


@contextlib.contextmanager
def _producer(settings: Settings, client: str | None = None) -> Iterator[Any]:
    from cityos.streaming.producer import make_producer

    producer = make_producer(settings.kafka_bootstrap, client or settings.producer_client)
    try:
        yield producer
    finally:
        producer.flush()
        producer.close()
        typer.echo(f"delivered {producer.stats.sent}, failed {producer.stats.failed}")


def _connect(settings: Settings) -> Any:
    from cityos.db import connect, migrate

    url = settings.database_url.get_secret_value()
    migrate(url)
    return connect(url, autocommit=True)


@app.command("twin")
def twin_command(
    network: str = typer.Option(None, help="RESCO scenario name or folder [CITYOS_TWIN_NETWORK]"),
    duration: float = typer.Option(None, help="simulated seconds to run (default: until Ctrl-C)"),
    speedup: float = typer.Option(
        None, help="simulated s per wall s; 'inf' = as fast as possible [CITYOS_TWIN_SPEEDUP]"
    ),
    start: str = typer.Option(None, help="wall time of simulated t=0, ISO UTC [CITYOS_TWIN_START]"),
    demand_scale: float = typer.Option(1.0, min=0.0, help="multiple of the scenario's demand"),
    register: bool = typer.Option(True, help="upsert city, intersections, phases, sensors"),
    control: bool = typer.Option(
        True, help="apply approved signal changes from the control topic between simulation steps"
    ),
) -> None:
    """Run the SUMO traffic twin and publish detector, air-quality and noise events."""
    from cityos import metrics
    from cityos.streaming.control import ControlLoop, SumoController
    from cityos.streaming.sources import twin
    from cityos.streaming.sources.registry import register_twin

    settings = get_settings()
    metrics.serve_metrics(settings.metrics_port, settings.metrics_host)  # producer, actuator
    speed = speedup if speedup is not None else settings.twin_speedup
    prepared = twin.prepare(network or settings.twin_network, settings.data_dir)
    if register:
        if prepared.city is None:
            raise ConfigError("--register", f"no geo spec for city {prepared.layout.city_id!r}")
        with _connect(settings) as conn:
            register_twin(conn, prepared.city, prepared.layout, prepared.stations)
    t0 = _parse_time(start or settings.twin_start, "CITYOS_TWIN_START") or twin.default_start(
        speed, duration
    )
    with (
        _stop_on_sigint() as stop,
        _producer(settings) as producer,
        twin.Twin(
            prepared.scenario,
            prepared.layout,
            prepared.stations,
            demand_scale=demand_scale,
            work_dir=settings.state_dir / "twin",
        ) as sim,
        contextlib.ExitStack() as closing,
    ):
        loop = None
        if control:
            loop = ControlLoop.from_settings(SumoController(sim), settings)
            closing.callback(loop.close)
            for plan in loop.restore():  # applied changes outlive a restart of the twin
                typer.echo(
                    f"restored {plan.intersection_id} phase {plan.phase_index}: "
                    f"{plan.green_after_s:g} s"
                )
        stats = twin.run(
            sim,
            producer,
            Topics(settings.topic_prefix),
            start=t0,
            speedup=speed,
            duration_s=duration,
            stop=stop,
            control=loop.poll if loop else None,
        )
    if loop is not None:
        c = loop.stats
        typer.echo(
            f"control: {c.applied} applied, {c.rolled_back} rolled back, {c.failed} "
            f"refused, {c.skipped} skipped"
        )
    typer.echo(
        f"simulated {stats.simulated_s:.0f} s: {stats.traffic_events} traffic and "
        f"{stats.environment_events} environment events"
    )


@app.command("replay")
def replay_command(
    dataset: str = typer.Argument(..., help="beijing | metr-la"),
    since: str = typer.Option(None, "--from", help="first data time, ISO-8601 with offset"),
    until: str = typer.Option(None, "--to", help="end of the range (exclusive)"),
    speed: float = typer.Option(3600.0, help="data seconds per wall second; 'inf' = no pacing"),
    rebase: bool = typer.Option(True, help="shift times to the present (off: exact replay)"),
    register: bool = typer.Option(True, help="upsert the city and the dataset's sensors"),
) -> None:
    """Replay a real dataset into Kafka."""
    from cityos.streaming.sources import replay
    from cityos.streaming.sources.registry import open_city, write_city, write_sensors

    settings = get_settings()
    if dataset not in replay.DATASETS:
        raise ConfigError("DATASET", f"{dataset!r} is not one of {', '.join(replay.DATASETS)}")
    source = replay.DATASETS[dataset]
    if register:
        city = open_city(source.city_id, settings.data_dir)
        with _connect(settings) as conn:
            write_city(conn, city)
            write_sensors(conn, city, source.sensors(settings.data_dir))
    records, missing = source.records(
        settings.data_dir, _parse_time(since, "--from"), _parse_time(until, "--to")
    )
    typer.echo(f"{dataset}: {len(records)} records ({missing} missing readings skipped)")
    with _stop_on_sigint() as stop, _producer(settings) as producer:
        stats = replay.publish(
            records,
            producer,
            Topics(settings.topic_prefix),
            speed=speed if speed > 0 else math.inf,
            rebase=rebase,
            missing=missing,
            stop=stop,
        )
    typer.echo(
        f"sent {stats.sent} of {stats.records} records, event times {stats.first} .. {stats.last}"
    )


@app.command("load")
def load_command(
    rate: float = typer.Option(1000.0, min=1.0, help="target events per second"),
    duration: float = typer.Option(30.0, min=0.1, help="wall seconds"),
    client: str = typer.Option(
        "confluent", help="confluent | kafka-python (confluent: 10x the rate, measured)"
    ),
    malformed_share: float = typer.Option(0.0, min=0.0, max=1.0, help="share of bad events"),
    synthetic: int = typer.Option(0, min=0, help="use N made-up sensor ids instead of the DB's"),
    city: str = typer.Option(None, help="only the registered sensors of this city"),
    seed: int = typer.Option(7),
) -> None:
    """Generate events at a target rate (benchmarks, dead-letter tests)."""
    from cityos.streaming.sources import loadgen

    settings = get_settings()
    if synthetic:
        targets = loadgen.synthetic_targets(synthetic)
    else:
        with _connect(settings) as conn:
            targets = loadgen.registered_targets(conn, city)
        if not targets:
            raise ConfigError(
                "--synthetic", "no registered sensors; register a source or pass --synthetic N"
            )
    generator = loadgen.LoadGenerator(targets, malformed_share=malformed_share, seed=seed)
    with _stop_on_sigint() as stop, _producer(settings, client) as producer:
        stats = generator.run(
            producer, Topics(settings.topic_prefix), rate=rate, duration_s=duration, stop=stop
        )
    typer.echo(
        f"{client}: {stats.sent} events "
        f"({stats.malformed} malformed) in "
        f"{stats.duration_s:.1f} s = {stats.achieved_rate:.0f}/s "
        f"(target {rate:g}/s); delivered {stats.delivered}, failed {stats.failed}"
    )
