"""Checks of what the registry is given: names, versions, labels, metrics, preprocessing, extra files, the model."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .architectures import build_model

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # used with fullmatch: "$" would also match before a final "\n"
_VERSION = re.compile(r"v([1-9][0-9]{0,8})")
SHOWN_CHARS = 40


class RegistryError(ValueError):
    """A registry operation failed: bad name or version, unknown model, corrupt or tampered files."""


class ModelNotFoundError(RegistryError):
    """The model name, the version or a promoted version does not exist."""


class InvalidNameError(RegistryError):
    """A model name or version that is not well-formed (the service answers 422)."""


def is_name(text: str) -> bool:
    """True for a valid model name."""
    return isinstance(text, str) and _NAME.fullmatch(text) is not None


def is_version(text: str) -> bool:
    """True for 'v1', 'v2', …"""
    return isinstance(text, str) and _VERSION.fullmatch(text) is not None


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """repr() of a client-supplied value cut to `limit` characters, for messages and logs."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_name(name: str) -> str:
    """Return `name` if it is a valid model name (lower-case letters, digits, '-', '_'; ≤ 64), else InvalidNameError."""
    if not is_name(name):
        raise InvalidNameError(f"invalid model name {shown(name)}: use 1-64 lower-case letters, digits, '-' or '_', "
                               "starting with a letter or digit")
    return name


def check_version(version: str) -> str:
    """Return `version` if it looks like 'v1', 'v2', …, else InvalidNameError."""
    if not is_version(version):
        raise InvalidNameError(f"invalid version {shown(version)}: versions are 'v1', 'v2', …")
    return version


def version_number(version: str) -> int:
    """2 for 'v2'."""
    return int(check_version(version)[1:])


def check_labels(labels: Sequence[str]) -> list[str]:
    """Class names: a non-empty list of distinct non-empty strings."""
    if isinstance(labels, str) or not isinstance(labels, Sequence) or len(labels) == 0:
        raise RegistryError("labels must be a non-empty list of class names")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label:
            raise RegistryError(f"labels[{i}] must be a non-empty string, got {label!r}")
    if len(set(labels)) != len(labels):
        raise RegistryError(f"labels must be distinct, got {list(labels)}")
    return list(labels)


def check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics: a dict of names to finite numbers, returned as floats."""
    if not isinstance(metrics, Mapping):
        raise RegistryError(f"metrics must be a dict of floats, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RegistryError(f"metrics[{key!r}] must be a number, got {value!r}")
        if not math.isfinite(value):
            raise RegistryError(f"metrics[{key!r}] must be finite, got {value}")
        out[key] = float(value)
    return out


def _number(prep: dict, key: str, positive: bool = False) -> float:
    """A finite number from the preprocessing dict."""
    value = prep.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RegistryError(f"preprocessing[{key!r}] must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise RegistryError(f"preprocessing[{key!r}] must be positive, got {value}")
    return float(value)


def check_preprocessing(task: str, prep: Mapping, config: dict) -> dict:
    """Text: {"max_len": int ≤ the model's max_len}; image: {"image_size": 8, "max_value" > 0, "mean", "std" > 0}."""
    if not isinstance(prep, Mapping):
        raise RegistryError(f"preprocessing must be a dict, got {type(prep).__name__}")
    prep = dict(prep)
    if task == "text":
        max_len = prep.get("max_len")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 3:
            raise RegistryError(f"preprocessing['max_len'] must be an int >= 3, got {max_len!r}")
        if max_len > config.get("max_len", 512):
            raise RegistryError(f"preprocessing['max_len']={max_len} exceeds the model's "
                                f"max_len={config.get('max_len', 512)}")
        return prep
    if prep.get("image_size") != 8:
        raise RegistryError(f"preprocessing['image_size'] must be 8 (8×8 digits), got {prep.get('image_size')!r}")
    _number(prep, "max_value", positive=True)
    _number(prep, "mean")
    _number(prep, "std", positive=True)
    return prep


def check_files(files, reserved: Sequence[str] = ()) -> dict[str, Path]:
    """Extra files as {name in the version folder: source path}; a list of paths keeps their names."""
    if files is None:
        return {}
    if not isinstance(files, Mapping):
        if isinstance(files, (str, os.PathLike)) or not isinstance(files, Sequence):
            raise RegistryError("files must be a dict {name: path} or a list of paths")
        files = {Path(p).name: p for p in files}
    out = {}
    for name, source in files.items():
        if not isinstance(name, str) or not name or name.startswith(".") or Path(name).name != name:
            raise RegistryError(f"file name {name!r} must be a plain file name (no folders, not hidden)")
        if name in reserved:
            raise RegistryError(f"file name {name!r} is reserved by the registry")
        path = Path(source)
        if not path.is_file():
            raise RegistryError(f"file {name!r} not found: {path}")
        out[name] = path
    return out


def check_json(value, what: str) -> None:
    """Raise RegistryError unless `value` is JSON-serialisable (finite numbers only)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise RegistryError(f"{what} must be JSON-serialisable: {e}") from None


def _dummy_logits(model: nn.Module, task: str) -> torch.Tensor:
    """Logits of a 1-item dummy batch (a [CLS] [SEP] text or a blank 8×8 image)."""
    model.eval()
    with torch.no_grad():
        if task == "text":
            ids = torch.tensor([[2, 3]])
            return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        return model(pixel_values=torch.zeros(1, 1, 8, 8)).logits


def check_model(model: nn.Module, architecture: str, config: dict, task: str, n_labels: int) -> int:
    """Check that `model` is what `architecture` builds from `config` (same tensors, same shapes, n_labels classes);
    return its parameter count."""
    from ..utils import count_parameters

    if not isinstance(model, nn.Module):
        raise RegistryError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        reference = build_model(architecture, config)
    except ValueError as e:
        raise RegistryError(f"config cannot build architecture {architecture!r}: {e}") from None
    ours, theirs = model.state_dict(), reference.state_dict()
    missing, unexpected = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    if missing or unexpected:
        raise RegistryError(f"model does not match architecture {architecture!r} with this config: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, tensor in theirs.items():
        if tuple(ours[key].shape) != tuple(tensor.shape):
            raise RegistryError(f"model does not match architecture {architecture!r} with this config: "
                                f"{key} has shape {tuple(ours[key].shape)}, config gives {tuple(tensor.shape)}")
    classes = _dummy_logits(reference, task).shape[-1]
    if classes != n_labels:
        raise RegistryError(f"labels has {n_labels} names but the model predicts {classes} classes")
    return count_parameters(model)
