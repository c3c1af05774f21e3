"""The `cityos` command: one entry point, one sub-command group per part."""

from __future__ import annotations

import logging

import typer

from cityos.cli import (
    actions,
    airflow,
    alerts,
    anomaly,
    bench,
    bench_alerts,
    bench_control,
    bench_nab,
    bench_nlq,
    bench_whatif,
    db,
    demo,
    doctor,
    geo,
    grafana,
    jobs,
    nlq,
    nlq_eval,
    nlq_train,
    stack,
    streaming,
)
from cityos.errors import CityOSError

app = typer.Typer(
    name="cityos",
    help="CityOS: a city's live traffic and environment data, from sensors to answers.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
stack.register(app)
demo.register(app)
jobs.register(streaming.app)
bench.register(app)
bench_nlq.register(bench.app)
bench_control.register(bench.app)
bench_alerts.register(bench.app)
bench_nab.register(bench.app)
bench_whatif.register(bench.app)
actions.register(app)  # cityos actions list|show|rollback
alerts.register(app)  # cityos alerts notify|deliveries
anomaly.register(app)  # cityos anomaly retrain|models|promote
grafana.register(app)  # cityos grafana build|push
doctor.register(app)  # cityos doctor
app.add_typer(
    airflow.app, name="airflow", help="Airflow with the CityOS DAGs: standalone, test, migrate."
)
nlq.register(app)  # cityos token …, cityos nlq …, cityos ask
nlq_train.register(nlq.nlq_app)
nlq_eval.register(nlq.nlq_app)
app.add_typer(geo.app, name="geo", help="Zones, sensors and intersections of a city.")
app.add_typer(db.app, name="db", help="Database migrations.")
app.add_typer(streaming.app, name="stream", help="Sources into Kafka and the Spark jobs.")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # client libraries narrate every connection (and a busy event loop)
        for chatty in ("kafka", "py4j"):
            logging.getLogger(chatty).setLevel(logging.ERROR)


def main() -> None:
    try:
        app()
    except CityOSError as err:
        typer.secho(f"cityos: {err}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from err
