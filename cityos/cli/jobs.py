"""`cityos stream run`: the Spark job from the source topics to the lake and serving tables."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the job's commands to the `cityos stream` group (or any Typer app)."""

    @app.command("supervise")
    def supervise() -> None:
        """Run the streaming job supervised: restarted from its checkpoints, alerted on."""
        from cityos.settings import get_settings
        from cityos.streaming.supervisor import main

        main(get_settings())

    @app.command("run")
    def run(
        available_now: bool = typer.Option(
            False, "--available-now", help="process what the topics hold now, then exit"
        ),
        method: str = typer.Option("copy", help="PostgreSQL sink: copy | executemany"),
    ) -> None:
        """Run the streaming job (both topics) until Ctrl-C, or once with --available-now."""
        from cityos.settings import get_settings
        from cityos.streaming.jobs.aggregate import main, run_pipeline

        if method not in ("copy", "executemany"):
            raise typer.BadParameter("expected copy or executemany", param_hint="--method")
        settings = get_settings()
        if available_now:
            jobs = run_pipeline(settings, until="available", method=method)  # type: ignore[arg-type]
            for job in jobs:
                typer.echo(
                    f"{job.name}: {job.merged_batches} batches, {job.merged_rows} valid,"
                    f" {job.merged_dead} dead"
                )
        else:
            main(settings)
