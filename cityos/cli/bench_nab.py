"""`cityos bench nab`: CityOS's detector on NAB realTraffic next to every published detector.

The detector runs as a stream over the seven realTraffic files (each point once, in order, torch
on one thread), one threshold per profile is swept over the files together, and the normalised
scores (0 = null detector, 100 = perfect) are printed beside the published detectors' scores on
the same files, with the scoring throughput. The JSON report goes to reports/bench-nab.json.

Figures are printed, never asserted: a benchmark on a shared 2-core machine is not a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cityos.cli.bench import publish
from cityos.settings import data_dir_from_env

console = Console(log_path=False)
DEFAULT_REPORT = Path("reports/bench-nab.json")
PROFILE_COLUMNS = (
    ("standard", "standard"),
    ("reward_low_FP_rate", "low FP"),
    ("reward_low_FN_rate", "low FN"),
)


def results_table(report: dict[str, Any]) -> Table:
    """One row per detector, best first by the standard profile; CityOS's row in bold."""
    from cityos.anomaly.nab_bench import OURS

    r, machine = report["results"], report["machine"]
    tp = r["throughput"]
    table = Table(
        title=f"NAB realTraffic ({len(report['config']['files'])} files, "
        f"{report['config']['windows']} windows) {report['run']}: normalised score, "
        f"null 0 / perfect 100",
        caption=f"scoring throughput {tp['points_per_s']:,.0f} points/s on one core "
        f"({tp['points']:,} points in {tp['seconds']:.2f} s; {machine['cores']} cores, load "
        f"{machine['load_avg_1m']:.1f}). Published thresholds were swept over all 58 NAB files, "
        f"CityOS's over these 7; the dim rows sweep a published detector's own per-row scores "
        f"over these 7 too.",
    )
    table.add_column("detector")
    for _, label in PROFILE_COLUMNS:
        table.add_column(label, justify="right")
    rows = {name: {p: v["normalised"] for p, v in d.items()} for name, d in r["published"].items()}
    rows[OURS] = {p: v["normalised"] for p, v in r[OURS].items()}
    for name, scores in sorted(rows.items(), key=lambda kv: -kv[1]["standard"]):
        cells = [f"{scores[p]:.1f}" for p, _ in PROFILE_COLUMNS]
        if name == OURS:
            table.add_row(f"[bold]{name} (this run)[/bold]", *(f"[bold]{c}[/bold]" for c in cells))
        else:
            table.add_row(name, *cells)
    for name, scores in r.get("published_reswept", {}).items():
        cells = [f"{scores[p]['normalised']:.1f}" for p, _ in PROFILE_COLUMNS]
        table.add_row(f"[dim]{name}, threshold swept on these 7[/dim]", *cells)
    table.add_row(
        "CityOS rank / threshold",
        *(f"#{r['rank'][p]}  @{r[OURS][p]['threshold']:.4f}" for p, _ in PROFILE_COLUMNS),
    )
    return table


def nab_command(
    data: Annotated[
        Path | None, typer.Option(help="the NAB extract (default: <data dir>/nab)")
    ] = None,
    report: Annotated[Path, typer.Option(help="where the JSON report goes")] = DEFAULT_REPORT,
) -> None:
    """Score CityOS's detector on NAB realTraffic beside every published detector."""
    from cityos.anomaly.nab import Corpus
    from cityos.anomaly.nab_bench import run_benchmark

    root = data or data_dir_from_env() / "nab"
    corpus = Corpus.real_traffic(root)
    total = sum(len(corpus.data(name)) for name in corpus.files)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("detector, streaming", total=total)

        def advance(name: str, points: int) -> None:
            progress.update(task, advance=points, description=f"detector: {name}")

        result = run_benchmark(root, on_point=advance)
        progress.update(task, completed=total)
    publish(console, results_table(result), result, report)


def register(bench_app: typer.Typer) -> None:
    """Add `nab` to the `cityos bench` group (cityos.cli.bench.app)."""
    bench_app.command("nab")(nab_command)
