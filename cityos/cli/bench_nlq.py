"""`cityos bench nlq`: the NL-query figures, a table on screen and reports/bench-nlq.json.

* understanding latency: ``NLQPipeline.understand`` (model, interpretation, plan, Spark SQL; no
  execution) on every development question, ``--rounds`` times after a warm-up round, torch on
  one thread (the issue's "one core");
* end-to-end ``POST /api/v1/ask`` over HTTP against the service (`cityos nlq serve` in a child
  process, Spark execution over the fixture database), every development question of kind
  answer, ``--ask-rounds`` times after a warm-up round;
* accuracy by kind and tag, from the evaluation report of `cityos nlq eval`;
* the model artefact: size on disk and load time.

Figures are printed, never asserted: a benchmark on a shared 2-core machine is not a test.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cityos.cli.bench import publish
from cityos.cli.nlq_eval import (
    DEFAULT_DATABASE,
    DEV_QUESTIONS,
    EvalError,
    Progress,
    ensure_model,
    fixture_database,
    running_service,
    service_token,
    stack_settings,
)
from cityos.nlq.errors import NLQError
from cityos.settings import Settings, load_settings

console = Console(log_path=False)
DEFAULT_REPORT = Path("reports/bench-nlq.json")
DEFAULT_EVAL_REPORT = Path("reports/nlq-dev.json")
TARGETS = {"understand_p95_ms": 50.0, "ask_p95_ms": 1500.0, "accuracy": 0.95}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100), as the evaluation kit computes it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def latency(samples_ms: list[float]) -> dict[str, float | int]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 50), 2),
        "p95_ms": round(percentile(samples_ms, 95), 2),
        "mean_ms": round(statistics.fmean(samples_ms), 2) if samples_ms else math.nan,
        "max_ms": round(max(samples_ms), 2) if samples_ms else math.nan,
    }


def load_questions(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def as_of(question: dict[str, Any]) -> datetime:
    raw = question.get("as_of")
    return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else datetime.now(UTC)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class _NotExecuting:
    """The executor of a pipeline that only understands (``understand`` never executes)."""

    def run(self, sql: str, max_rows: int, timeout_s: float) -> Any:
        raise NLQError("this pipeline only understands questions; it does not execute SQL")


# --------------------------------------------------------------------------------------------
# the phases
# --------------------------------------------------------------------------------------------
def bench_understand(
    settings: Settings,
    model_dir: Path | None,
    questions: list[dict[str, Any]],
    rounds: int,
    say: Progress,
) -> dict[str, Any]:
    """Parse + plan + compile per question on one torch thread; model size and load time."""
    loading = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
        torch.set_num_interop_threads(1)
    model: dict[str, Any] = {}
    if model_dir is not None:  # first: the load a starting service pays, imports included
        from cityos.nlq.model import JointModel

        JointModel.load(model_dir)
        model.update(
            version=model_dir.name,
            path=str(model_dir),
            size_mb=round(folder_bytes(model_dir) / 1e6, 1),
            weights_mb=round((model_dir / "model.safetensors").stat().st_size / 1e6, 1),
            load_s=round(time.perf_counter() - loading, 2),
        )
    from cityos.nlq.pipeline import NLQPipeline

    started = time.perf_counter()
    pipeline = NLQPipeline.from_settings(settings, executor=_NotExecuting())
    pipeline_load_s = time.perf_counter() - started
    model["pipeline_load_s"] = round(pipeline_load_s, 2)  # model again (cached files) + gazetteer
    say(f"pipeline loaded in {pipeline_load_s:.1f} s; warm-up round")

    def once(question: dict[str, Any]) -> tuple[float, str | None]:
        t0 = time.perf_counter()
        try:
            pipeline.understand(question["question"], as_of(question))
            problem = None
        except NLQError as err:  # timed all the same: a refusal costs what it costs
            problem = f"{type(err).__name__}: {err}"
        return (time.perf_counter() - t0) * 1000, problem

    for question in questions:
        once(question)
    samples: list[float] = []
    per_question: dict[str, list[float]] = {q["id"]: [] for q in questions}
    problems: dict[str, str] = {}
    for round_no in range(rounds):
        for question in questions:
            ms, problem = once(question)
            samples.append(ms)
            per_question[question["id"]].append(ms)
            if problem:
                problems[question["id"]] = problem
        if (round_no + 1) % 5 == 0 or round_no + 1 == rounds:
            say(
                f"understand: round {round_no + 1}/{rounds}, "
                f"p95 so far {percentile(samples, 95):.1f} ms"
            )
    slowest = sorted(per_question, key=lambda k: -statistics.median(per_question[k]))[:3]
    return {
        "latency": latency(samples),
        "questions": len(questions),
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "slowest": {k: round(statistics.median(per_question[k]), 2) for k in slowest},
        "errors": problems,
        "model": model,
    }


def bench_ask(
    api: str, token: str, questions: list[dict[str, Any]], rounds: int, say: Progress
) -> dict[str, Any]:
    """POST /api/v1/ask for each question, ``rounds`` times after an unmeasured round."""
    import httpx

    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    samples: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api, headers=headers, timeout=120.0) as client:

        def once(question: dict[str, Any]) -> tuple[float, int, str]:
            body = {"question": question["question"]}
            if question.get("as_of"):
                body["as_of"] = question["as_of"]
            t0 = time.perf_counter()
            response = client.post("/api/v1/ask", json=body)
            ms = (time.perf_counter() - t0) * 1000
            kind = response.json().get("kind", "?") if response.status_code == 200 else "-"
            return ms, response.status_code, kind

        for question in questions:
            once(question)
        say("ask: warm-up round done")
        for round_no in range(rounds):
            for question in questions:
                ms, code, kind = once(question)
                samples.append(ms)
                statuses[str(code)] += 1
                kinds[kind] += 1
            say(f"ask: round {round_no + 1}/{rounds}, p95 so far {percentile(samples, 95):.0f} ms")
    return {
        "latency": latency(samples),
        "questions": len(questions),
        "rounds": rounds,
        "http_status": dict(statuses),
        "reply_kinds": dict(kinds),
    }


def accuracy_from(eval_report: Path) -> dict[str, Any] | None:
    """Accuracy overall, by kind and by tag, from evaluate.py's report (None when absent)."""
    if not eval_report.is_file():
        return None
    summary = json.loads(eval_report.read_text(encoding="utf-8")).get("summary", {})

    def share(groups: dict[str, dict[str, int]]) -> dict[str, dict[str, float | int | None]]:
        return {
            name: {**g, "accuracy": round(g["passed"] / g["total"], 4) if g["total"] else None}
            for name, g in sorted(groups.items())
        }

    modified = datetime.fromtimestamp(eval_report.stat().st_mtime, UTC)
    return {
        "report": str(eval_report),
        "written_at": modified.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "accuracy": summary.get("accuracy"),
        "passed": summary.get("passed"),
        "failed": summary.get("failed"),
        "by_kind": share(summary.get("by_kind", {})),
        "by_tag": share(summary.get("by_tag", {})),
    }


def run_benchmark(
    *,
    database: str,
    rounds: int,
    ask_rounds: int,
    eval_report: Path,
    ask: bool,
    say: Progress,
) -> dict[str, Any]:
    questions = load_questions(DEV_QUESTIONS)
    answers = [q for q in questions if q["kind"] == "answer"]
    result: dict[str, Any] = {
        "run": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": {"cores": os.cpu_count()},
        "targets": TARGETS,
        "errors": {},
    }
    base = stack_settings(say)
    url = fixture_database(base.database_url.get_secret_value(), database, progress=say)
    model_dir = base.nlq_model_dir or ensure_model(base, say)
    settings = load_settings(database_url=url, database_schema="public")
    try:
        result["understand"] = bench_understand(settings, model_dir, questions, rounds, say)
    except (NLQError, OSError) as err:
        result["errors"]["understand"] = str(err)
    if ask:
        log_path = base.state_dir / "logs" / f"nlq-bench-service-{database}.log"
        try:
            with (
                running_service(url, log_path, say) as api,
                service_token(url, "viewer", "nlq-bench") as token,
            ):
                result["ask"] = bench_ask(api, token, answers, ask_rounds, say)
        except EvalError as err:
            result["errors"]["ask"] = str(err)
    result["accuracy"] = accuracy_from(eval_report)
    result["machine"]["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return result


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
def _met(value: float | None, target: float, higher_is_better: bool = False) -> str:
    if value is None or math.isnan(value):
        return ""
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "NOT met"


def results_table(report: dict[str, Any]) -> Table:
    t = report["targets"]
    machine = report["machine"]
    table = Table(
        title=f"NL-query benchmark {report['run']} ({machine['cores']} cores, "
        f"load {machine.get('load_avg_1m', 0):.1f} at the end)"
    )
    for column in ("figure", "n", "p50", "p95", "target"):
        table.add_column(column, justify="left" if column in ("figure", "target") else "right")
    und = report.get("understand")
    if und:
        lat = und["latency"]
        table.add_row(
            f"understand (parse + plan + compile), {und['torch_threads']} torch thread",
            f"{lat['n']:,}",
            f"{lat['p50_ms']:.1f} ms",
            f"{lat['p95_ms']:.1f} ms",
            f"p95 <= {t['understand_p95_ms']:g} ms: {_met(lat['p95_ms'], t['understand_p95_ms'])}",
        )
        model = und["model"]
        if "size_mb" in model:
            table.add_row(
                f"model {model['version']}: {model['size_mb']:.1f} MB on disk "
                f"({model['weights_mb']:.1f} MB weights); load, then whole pipeline",
                "",
                f"{model['load_s']:.1f} s",
                f"{model['pipeline_load_s']:.1f} s",
                "",
            )
    ask = report.get("ask")
    if ask:
        lat = ask["latency"]
        table.add_row(
            "POST /api/v1/ask end to end (Spark over JDBC)",
            f"{lat['n']:,}",
            f"{lat['p50_ms']:.0f} ms",
            f"{lat['p95_ms']:.0f} ms",
            f"p95 <= {t['ask_p95_ms']:g} ms: {_met(lat['p95_ms'], t['ask_p95_ms'])}",
        )
    acc = report.get("accuracy")
    if acc and acc.get("accuracy") is not None:
        table.add_row(
            f"accuracy, development set ({acc['report']}, {acc['written_at']})",
            f"{acc['passed'] + acc['failed']}",
            f"{100 * acc['accuracy']:.1f}%",
            "",
            f">= {100 * t['accuracy']:g}%: {_met(acc['accuracy'], t['accuracy'], True)}",
        )
        for group in ("by_kind", "by_tag"):
            for name, g in acc[group].items():
                table.add_row(
                    f"  {group[3:]} {name}", f"{g['total']}", f"{100 * g['accuracy']:.0f}%", "", ""
                )
    return table


def nlq_command(
    report: Annotated[Path, typer.Option(help="JSON report path")] = DEFAULT_REPORT,
    rounds: Annotated[int, typer.Option(min=1, help="understand rounds over the questions")] = 20,
    ask_rounds: Annotated[int, typer.Option(min=1, help="/ask rounds over the questions")] = 3,
    database: Annotated[
        str, typer.Option(help="fixture database on the stack's server")
    ] = DEFAULT_DATABASE,
    eval_report: Annotated[
        Path, typer.Option(help="evaluate.py report to read accuracy from")
    ] = DEFAULT_EVAL_REPORT,
    ask: Annotated[bool, typer.Option(help="also time /ask against a started service")] = True,
) -> None:
    """Understanding latency on one core, /ask latency end to end, accuracy by tag, model size."""
    try:
        result = run_benchmark(
            database=database,
            rounds=rounds,
            ask_rounds=ask_rounds,
            eval_report=eval_report,
            ask=ask,
            say=lambda step: console.log(f"bench: {step}"),
        )
    except EvalError as err:  # no stack, no fixture: nothing to measure
        console.print(f"[red]cityos bench nlq: {err}[/red]")
        raise typer.Exit(2) from err
    if result["accuracy"] is None:
        console.print(f"no evaluation report at {eval_report}: run `make eval-nlq` for accuracy")
    publish(console, results_table(result), result, report)


def register(bench_app: typer.Typer) -> None:
    """Add `nlq` to the `cityos bench` group (cityos.cli.bench.app)."""
    bench_app.command("nlq")(nlq_command)
