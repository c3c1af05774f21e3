"""`cityos bench whatif`: how long the what-if of a signal change takes, per twin network.

Per network, ``--rounds`` what-ifs of the same change (the first signal's first green phase,
10 s longer, within its bounds) over ``--minutes`` simulated minutes: the wall time of the two
side-by-side runs (child processes started, SUMO loaded, warm-up, window), of each run, and of the
whole call (JSON only). Printed as a table and written to reports/bench-whatif.json. Figures are
printed, never asserted: a benchmark on a shared 2-core machine is not a test.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cityos.settings import data_dir_from_env

console = Console(log_path=False)
DEFAULT_REPORT = Path("reports/bench-whatif.json")
DEFAULT_NETWORKS = ["cologne8", "ingolstadt21"]


def bench_network(network: str, data_dir: Path, minutes: float, rounds: int) -> dict[str, Any]:
    """``rounds`` what-ifs of one change on ``network``; wall times and the predicted effect."""

    from cityos.streaming.sources.twin import WARMUP_S
    from cityos.streaming.whatif import simulate_change, twin_layout

    layout, _ = twin_layout(network, data_dir)
    signal = layout.signals[0]
    phase = signal.phases[0]
    green = min(phase.green_s + 10.0, phase.max_green_s)
    calls, pairs, runs, last = [], [], [], None
    for n in range(rounds):
        t0 = time.monotonic()
        last = simulate_change(
            network, signal.tls_id, phase.index, green, minutes=minutes, data_dir=data_dir
        )
        calls.append(time.monotonic() - t0)
        pairs.append(last.wall_s)
        runs += [last.current.wall_s, last.changed.wall_s]
        console.log(f"bench whatif: {network} round {n + 1}/{rounds}: {last.wall_s:.1f} s")
    assert last is not None
    result = last.to_json()
    return {
        "network": network,
        "signals": len(layout.signals),
        "change": {
            "intersection_id": signal.tls_id,
            "phase_index": phase.index,
            "green_s": {"current": phase.green_s, "changed": green},
        },
        "simulated_minutes": minutes,
        "rounds": rounds,
        "whatif_s": _stats(pairs),
        "run_s": _stats(runs),
        "call_s": _stats(calls),
        # each run simulates the warm-up and the window
        "simulated_s_per_wall_s": round((WARMUP_S + minutes * 60) / statistics.median(runs), 1),
        "vehicles": result["vehicles"],
        "summary": result["summary"],
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def results_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"what-if benchmark {report['run']} ({report['machine']['cores']} cores)")
    for column in (
        "network",
        "signals",
        "simulated",
        "what-if (2 runs)",
        "one run",
        "sim s / wall s",
        "vehicles",
    ):
        table.add_column(column, justify="left" if column == "network" else "right")
    for r in report["results"]:
        table.add_row(
            r["network"],
            str(r["signals"]),
            f"{r['simulated_minutes']:g} min",
            f"{r['whatif_s']['median']:.1f} s (max {r['whatif_s']['max']:.1f})",
            f"{r['run_s']['median']:.1f} s",
            f"{r['simulated_s_per_wall_s']:,.0f}",
            f"{r['vehicles']['current']['inserted']:,}",
        )
    return table


def whatif_command(
    network: Annotated[
        list[str] | None,
        typer.Option(
            "--network", help="twin network (repeatable); default cologne8 and ingolstadt21"
        ),
    ] = None,
    minutes: Annotated[float, typer.Option(min=1, max=240, help="simulated minutes")] = 30.0,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="what-ifs per network")] = 3,
    report: Annotated[Path, typer.Option(help="JSON report path")] = DEFAULT_REPORT,
) -> None:
    """What-if simulation time (current vs changed plan, side by side) per twin network."""
    data_dir = data_dir_from_env()
    results = [
        bench_network(name, data_dir, minutes, rounds) for name in (network or DEFAULT_NETWORKS)
    ]
    out = {
        "run": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
        "results": results,
    }
    wide = console if console.is_terminal else Console(width=140)
    wide.print(results_table(out))
    for r in results:
        wide.print(f"{r['network']}: {r['summary']}")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"report written to {report}")


def register(bench_app: typer.Typer) -> None:
    """Add `whatif` to the `cityos bench` group (cityos.cli.bench.app)."""
    bench_app.command("whatif")(whatif_command)
