"""Fine-tuning the course's chat model at a longer context than it was pre-trained with: the learned positions
are grown by copying (`extend_context`), then supervised fine-tuning on conversations that need the room
(`fine_tune_long`), published to and read back from the model cache (`publish_run`, `load_tuned`). The agent
model and the RAG reader are both made this way."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

from .alignment import sft_loader
from .chat import render
from .model_cache import load_or_train, publish, read_json, read_meta, write_model_files
from .post_training import chat_model
from .pretrained import read_model_folder
from .tokenization import CharTokenizer
from .training import Trainer, TrainConfig
from .transformer import GPT, GPTConfig
from .utils import get_profile, seed_everything


def extend_context(model: GPT, max_len: int) -> GPT:
    """A copy of a GPT with learned positions whose context is `max_len`: the new positions start as copies of the
    learned ones, repeated (Beltagy et al. 2020 grow Longformer's positions the same way), then fine-tuning
    adapts them."""
    old = model.cfg.max_len
    if model.cfg.position != "learned":
        raise ValueError(f"extend_context needs learned positions, got {model.cfg.position!r}")
    if max_len < old:
        raise ValueError(f"max_len {max_len} is shorter than the model's context {old}")
    grown = GPT(replace(model.cfg, max_len=max_len))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = "transformer.embeddings.position.embedding.weight"
    state[key] = state[key].repeat((max_len + old - 1) // old, 1)[:max_len]
    grown.load_state_dict(state)
    return grown.train(model.training)


@dataclass(frozen=True)
class LongSFTSpec:
    """Fine-tuning at a longer context: the context `max_len`, the optimizer's steps, batch size, peak learning rate
    and warm-up."""

    max_len: int
    max_steps: int
    batch_size: int
    lr: float
    warmup_steps: int


@dataclass
class LongSFTRun:
    """What `fine_tune_long` returns: the trained model, its tokenizer, the loss history and run facts."""

    model: GPT
    tokenizer: CharTokenizer
    history: list[dict]
    facts: dict


def fine_tune_long(conversations: Sequence[Sequence[dict]], spec: LongSFTSpec, profile: str | None = None,
                   progress: bool = True) -> LongSFTRun:
    """SFT of the profile's chat model (dropout off), its context extended to `spec.max_len`, on `conversations`
    (assistant turns only in the loss); conversations longer than the context are left out and counted."""
    seed_everything(0)
    base, tokenizer = chat_model(get_profile(profile).name, progress, dropout=0.0)
    model = extend_context(base, spec.max_len)
    rendered = [r for r in (render(c, tokenizer) for c in conversations) if len(r.input_ids) <= spec.max_len]
    loader = sft_loader(rendered, tokenizer.pad_id, spec.batch_size, seed=0)
    config = TrainConfig(lr=spec.lr, max_steps=spec.max_steps, warmup_steps=spec.warmup_steps, log_every=10,
                         seed=0, progress=progress)
    trainer = Trainer(model, config, loader)
    start = time.perf_counter()
    trainer.train()
    facts = {"conversations": len(rendered), "too_long": len(conversations) - len(rendered),
             "train_seconds": round(time.perf_counter() - start, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return LongSFTRun(model.cpu().eval(), tokenizer, trainer.history, facts)


def publish_run(run: LongSFTRun, meta: dict, target: Path) -> Path:
    """Write a fine-tuned model, its tokenizer, history and `meta` (with the run facts) to the cache at `target`."""
    with publish(target) as tmp:
        write_model_files(tmp, run.model, {**meta, **run.facts}, config=run.model.cfg.to_dict(),
                          tokenizer=run.tokenizer, history=run.history)
    return target


@dataclass
class TunedModel:
    """A fine-tuned chat model read from the cache: model, chat tokenizer, training history and run facts."""

    model: GPT
    tokenizer: CharTokenizer
    history: list[dict]
    meta: dict


T = TypeVar("T", bound=TunedModel)


def load_tuned(target: Path, train: Callable[[], object], spec, what: str, kind: type[T]) -> T:
    """The model cached at `target` as a `kind`, trained first by `train()` when it is missing or its recorded
    spec differs from `spec` (a dataclass)."""
    recorded = json.loads(json.dumps(asdict(spec)))

    def read(folder: Path) -> T:
        model, tokenizer, meta = read_model_folder(folder, GPTConfig, GPT)
        return kind(model, tokenizer, read_json(folder, "history.json"), meta)

    return load_or_train(target, train, read, what=what, stale=lambda folder: read_meta(folder).get("spec") != recorded)
