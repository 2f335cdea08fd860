"""Train once, publish atomically, reload: the cache behind every model the chapters share.

A cached model is a folder (``model.safetensors``, ``meta.json`` and, as the model needs them,
``config.json``, ``tokenizer.json``, ``history.json`` or more) published with `files.atomic_directory` and
sealed by a ``manifest.json`` of every file's size and SHA-256. A folder without a manifest was never
completely written and counts as missing; a file that changed afterwards is a clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from safetensors.torch import load_model, save_model
from torch import nn

from .files import MANIFEST_FILE, IntegrityError, atomic_directory, published, verify_manifest, write_manifest

T = TypeVar("T")
MODEL_FILE, META_FILE, CONFIG_FILE, TOKENIZER_FILE, HISTORY_FILE = (
    "model.safetensors", "meta.json", "config.json", "tokenizer.json", "history.json")


@contextmanager
def publish(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder to fill; on success its manifest is written and it replaces `target` atomically."""
    with atomic_directory(target) as tmp:
        yield tmp
        write_manifest(tmp)


def write_model_files(folder: Path, model: nn.Module, meta: dict, *, config: dict | None = None, tokenizer=None,
                      history: list[dict] | None = None) -> None:
    """Write the weights, meta.json and, when given, config.json, tokenizer.json and history.json into `folder`."""
    save_model(model, str(folder / MODEL_FILE))
    _write_json(folder / META_FILE, meta)
    if config is not None:
        _write_json(folder / CONFIG_FILE, config)
    if tokenizer is not None:
        tokenizer.save(folder / TOKENIZER_FILE)
    if history is not None:
        _write_json(folder / HISTORY_FILE, history)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def is_cached(path: str | os.PathLike) -> bool:
    """True when a complete (manifest-sealed) model folder is published at `path`."""
    return (published(path) / MANIFEST_FILE).is_file()


def load_or_train(path: str | os.PathLike, train: Callable[[], object], read: Callable[[Path], T], *, what: str,
                  train_if_missing: bool = True, missing_hint: str = "",
                  stale: Callable[[Path], bool] | None = None) -> T:
    """`read(folder)` of the model cached at `path` after verifying its manifest; `train()` (which publishes
    it there) first when it is missing or `stale(folder)` says it no longer fits. `what` names the model in
    messages ("pre-trained gpt").

    A damaged folder raises ValueError naming `what`, the problem and the remedy (delete it to retrain)."""
    folder = published(path)
    if not is_cached(folder) or (stale is not None and stale(folder)):
        if not train_if_missing:
            raise FileNotFoundError(f"no {what} at {Path(path)}{missing_hint}")
        train()
        folder = published(path)
    try:
        verify_manifest(folder)
        return read(folder)
    except (IntegrityError, OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise ValueError(f"the {what} at {folder} is unreadable ({err}); delete it to retrain") from err


def read_meta(folder: Path) -> dict:
    """The meta.json of a cached model."""
    return json.loads((folder / META_FILE).read_text(encoding="utf-8"))


def read_json(folder: Path, name: str):
    """Any JSON file of a cached model (config.json, history.json, …)."""
    return json.loads((folder / name).read_text(encoding="utf-8"))


def read_weights(model: nn.Module, folder: Path) -> nn.Module:
    """Load the folder's weights into `model` (strict) and return it in eval mode."""
    load_model(model, str(folder / MODEL_FILE))
    return model.eval()
