"""`cityos nlq train`: generate the training data and fine-tune the intent + slot model."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cityos.settings import cache_dir_from_env, data_dir_from_env


def register(nlq_app: typer.Typer) -> None:
    nlq_app.command("train")(train)


def train(
    force: Annotated[bool, typer.Option(help="train again even if this version exists")] = False,
) -> None:
    """Train the NLQ model (or find it: the version is a digest of code, settings and names)."""
    from cityos.nlq.train import ensure_model

    # no stack needed: only where the cache and the city files are
    folder = ensure_model(
        cache_dir_from_env(),
        data_dir_from_env(),
        force=force,
        progress=lambda m: typer.echo(m, err=True),
    )
    metrics = json.loads((folder / "metrics.json").read_text())
    size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    typer.echo(f"model      {folder}")
    typer.echo(f"size       {size_mb:.1f} MB")
    typer.echo(
        f"held-out   intent accuracy {metrics['intent_accuracy']:.4f}, "
        f"slot F1 {metrics['slot_f1']:.4f} "
        f"(precision {metrics['slot_precision']:.4f}, recall {metrics['slot_recall']:.4f}; "
        f"{metrics['held_out_examples']} examples)"
    )
