"""Train (or find) the versioned NLQ model artefact.

The version is a digest of everything that determines the model: the generator, labels and model
code, the training settings and the place names drawn on. The artefact lives in
``<cache_dir>/models/nlq/<version>/`` (outside the clone, so clones on one machine share it);
``ensure_model`` trains it when it is missing, so ``make eval-nlq``, ``make test`` and the
service work from a fresh clone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from cityos.nlq import generate, labels, model
from cityos.nlq.generate import Names
from cityos.nlq.model import TrainConfig

log = logging.getLogger(__name__)

EXAMPLES_PER_INTENT = 400
HELD_OUT_SHARE = 0.15
DATA_SEED = 7


def model_version(names: Names, config: TrainConfig) -> str:
    digest = hashlib.sha256()
    for module in (generate, labels, model):
        digest.update(Path(module.__file__ or "").read_bytes())
    digest.update(json.dumps(asdict(config), sort_keys=True).encode())
    digest.update(json.dumps([EXAMPLES_PER_INTENT, HELD_OUT_SHARE, DATA_SEED]).encode())
    digest.update(json.dumps(asdict(names), sort_keys=True, ensure_ascii=False).encode())
    return "nlq-" + digest.hexdigest()[:12]


def models_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / "nlq"


def ensure_model(
    cache_dir: Path,
    data_dir: Path,
    *,
    config: TrainConfig | None = None,
    force: bool = False,
    progress: Callable[[str], None] = log.info,
) -> Path:
    """The artefact folder for the current code and names; trained first if missing."""
    config = config or TrainConfig()
    names = Names.from_files(data_dir)
    version = model_version(names, config)
    folder = models_dir(cache_dir) / version
    if (folder / "model.safetensors").exists() and not force:
        return folder
    progress(
        f"training NLQ model {version} (MiniLM encoder, {EXAMPLES_PER_INTENT} examples/intent)"
    )
    examples = generate.generate(names, EXAMPLES_PER_INTENT, DATA_SEED)
    train_set, held_out = generate.split(examples, HELD_OUT_SHARE, DATA_SEED)
    trained, metrics = model.train(
        train_set, held_out, labels.INTENTS, labels.TAGS, config, progress=progress
    )
    progress(
        f"held-out: intent accuracy {metrics['intent_accuracy']:.4f}, "
        f"slot F1 {metrics['slot_f1']:.4f} ({len(held_out)} examples)"
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=folder.parent))
    meta = {"version": version, "examples_per_intent": EXAMPLES_PER_INTENT, "data_seed": DATA_SEED}
    trained.save(staging, meta, metrics)
    (staging / "held_out.jsonl").write_text("\n".join(e.to_json() for e in held_out) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)  # appears whole or not at all
    return folder
