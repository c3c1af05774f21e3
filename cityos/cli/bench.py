"""`cityos bench streaming`: the streaming benchmark, a rich table on screen and a JSON report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(log_path=False)
app = typer.Typer(no_args_is_help=True)
DEFAULT_REPORT = Path("reports/bench-streaming.json")


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def results_table(report: dict[str, Any]) -> Table:
    """One row per figure: what was measured, the rate, and the target where one applies."""
    r, t = report["results"], report["targets"]
    machine = report["machine"]
    table = Table(
        title=f"streaming benchmark {report['run']} ({machine['cores']} cores, "
        f"load {machine['load_avg_1m']:.1f} at the end)"
    )
    for column in ("figure", "count", "seconds", "rate", "MB/s", "target"):
        table.add_column(column, justify="left" if column in ("figure", "target") else "right")
    for p in r.get("producer", []):
        table.add_row(
            f"producer {p['client']} (acks=all, idempotent)",
            _fmt(p["events"]),
            _fmt(p["seconds"], 2),
            _fmt(p["events_per_s"]) + " ev/s",
            _fmt(p["mb_per_s"], 1),
            "",
        )
    e2e = r.get("end_to_end")
    if e2e:
        for c in e2e["raw"]:
            table.add_row(
                f"raw consume, {c['reader']}",
                _fmt(c["events"]),
                _fmt(c["seconds"], 2),
                _fmt(c["events_per_s"]) + " ev/s",
                _fmt(c["mb_per_s"], 1),
                "",
            )
        pl = e2e["pipeline"]
        ok = "met" if pl["events_per_s"] >= t["e2e_events_per_s"] else "NOT met"
        table.add_row(
            f"pipeline availableNow ({pl['batches']} batches)",
            _fmt(pl["events"]),
            _fmt(pl["seconds"], 2),
            _fmt(pl["events_per_s"]) + " ev/s",
            "",
            f">= {t['e2e_events_per_s']:,} ev/s: {ok}",
        )
        if pl.get("steady_events"):
            ok = "met" if pl["steady_events_per_s"] >= t["e2e_events_per_s"] else "NOT met"
            table.add_row(
                "pipeline, steady state (batches after the first)",
                _fmt(pl["steady_events"]),
                _fmt(pl["steady_seconds"], 2),
                _fmt(pl["steady_events_per_s"]) + " ev/s",
                "",
                f">= {t['e2e_events_per_s']:,} ev/s: {ok}",
            )
        ratio = e2e["pipeline_vs_spark_raw"]
        ok = "met" if ratio >= t["pipeline_vs_raw"] else "NOT met"
        table.add_row(
            "pipeline / Spark raw consume",
            "",
            "",
            _fmt(ratio, 2),
            "",
            f">= {t['pipeline_vs_raw']}: {ok}",
        )
    steps = r.get("steps")
    if steps:
        for i, step in enumerate(steps["steps"]):
            table.add_row(
                f"one batch as a Spark job, {'' if i == 0 else '+ '}{step['step']}"
                f" (median of {steps['reps']})",
                _fmt(steps["events"]),
                _fmt(step["median_s"], 2),
                _fmt(step["events_per_s"]) + " ev/s",
                "",
                f"{step['vs_read']:.2f} of read",
            )
    lat = r.get("latency")
    if lat and lat.get("n"):
        ok = "met" if lat["p95_s"] <= t["latency_p95_s"] else "NOT met"
        table.add_row(
            f"latency at {_fmt(lat['achieved_rate'])} ev/s "
            f"(asked {_fmt(lat['target_rate'])}), trigger {lat['trigger_seconds']} s",
            _fmt(lat["n"]),
            _fmt(lat["seconds"], 1),
            f"p50 {lat['p50_s']:.2f} s / p95 {lat['p95_s']:.2f} s",
            "",
            f"p95 <= {t['latency_p95_s']} s: {ok}",
        )
        warm = lat.get("after_warmup", {})
        if warm.get("n"):
            ok = "met" if warm["p95_s"] <= t["latency_p95_s"] else "NOT met"
            table.add_row(
                f"  same, events after the first {warm['warmup_s']:g} s",
                _fmt(warm["n"]),
                "",
                f"p50 {warm['p50_s']:.2f} s / p95 {warm['p95_s']:.2f} s",
                "",
                f"p95 <= {t['latency_p95_s']} s: {ok}",
            )
    for s in r.get("sink", []):
        table.add_row(
            f"PostgreSQL merge_batch, {s['method']}",
            _fmt(s["rows"]),
            _fmt(s["seconds"], 2),
            _fmt(s["rows_per_s"]) + " rows/s",
            "",
            "",
        )
    return table


@app.command("streaming")
def streaming(
    report: Annotated[Path, typer.Option(help="JSON report path")] = DEFAULT_REPORT,
    quick: Annotated[bool, typer.Option("--quick", help="tiny sizes, about a minute")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="keep the run's topics and schema")] = False,
) -> None:
    """Producer, raw consume, end-to-end, latency and PostgreSQL sink figures, side by side."""
    from cityos.streaming.bench import Params, run_benchmark

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)
    params = Params.quick() if quick else Params()
    result = run_benchmark(params, keep=keep, on_phase=lambda step: console.log(f"bench: {step}"))
    publish(console, results_table(result), result, report)


def publish(console: Console, table: Any, result: dict[str, Any], report: Path) -> None:
    """Print a benchmark's table, write its JSON report; exit 1 when a phase failed."""
    wide = console if console.is_terminal else Console(width=140)  # a log file: no wrapping
    wide.print(table)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=2, default=str) + "\n")
    console.print(f"report written to {report}")
    for phase, error in result["errors"].items():
        console.print(f"[red]phase {phase} failed: {error}[/red]")
    if result["errors"]:
        raise typer.Exit(1)


def register(parent: typer.Typer) -> None:
    parent.add_typer(
        app, name="bench", help="Benchmarks (streaming, NL query, control, what-if, alerts, NAB)."
    )
