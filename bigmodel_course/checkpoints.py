"""Safetensors checkpoints with exact resume: atomic writes, verified reads, RNG states.

A checkpoint is a directory: ``model.safetensors`` (weights, shared tensors stored once),
``optimizer.safetensors`` (optimizer state tensors) and ``trainer_state.json`` (the caller's
JSON-friendly state, the rest of the optimizer state, and the size and SHA-256 of both tensor files).
It is published atomically with `files.atomic_directory` (temporary sibling folder, fsync, rename; the
old one waits as ``.<name>.previous``, which a load falls back to if a save was interrupted between the
two renames).  A load verifies everything before it changes anything.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

from .files import IntegrityError, atomic_directory, atomic_write_json, check_entry, file_entry, published

FORMAT_VERSION = 1
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "trainer_state.json"

T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the model being trained."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"checkpoint {self.path}: {problem}")


# ---------------------------------------------------------------- RNG states

def rng_state() -> dict:
    """Python, NumPy and torch RNG states as JSON-friendly lists."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _rng_setter(state: dict) -> Callable[[], None]:
    """Parse RNG states written by `rng_state`; the returned function installs them."""
    version, internal, gauss = state["python"]
    py_state = (version, tuple(internal), gauss)
    name, keys, pos, has_gauss, cached = state["numpy"]
    np_state = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    torch_state = torch.tensor(state["torch"], dtype=torch.uint8)
    cuda = state.get("cuda")
    cuda_states = [torch.tensor(s, dtype=torch.uint8) for s in cuda] if cuda else None

    def install() -> None:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)

    return install


# ---------------------------------------------------------------- files

def _split_optimizer_state(sd: dict) -> tuple[dict[str, Tensor], dict]:
    """Optimizer state_dict -> (tensors for safetensors, the JSON-friendly rest)."""
    tensors, state = {}, {}
    for idx, entry in sd["state"].items():
        state[str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
                state[str(idx)][key] = "__tensor__"
            else:
                state[str(idx)][key] = value
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def _join_optimizer_state(tensors: dict[str, Tensor], meta: dict) -> dict:
    """Inverse of `_split_optimizer_state`."""
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {
            k: tensors[f"state.{idx}.{k}"] if v == "__tensor__" else v for k, v in entry.items()
        }
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _write_checkpoint_files(folder: Path, model: nn.Module, opt_tensors: dict, state: dict) -> None:
    """Write the three checkpoint files into `folder` (state JSON last, with size and SHA-256 of the others)."""
    safetensors.torch.save_model(model, str(folder / MODEL_FILE), metadata={"format": "pt"})
    safetensors.torch.save_file(opt_tensors, str(folder / OPTIMIZER_FILE), metadata={"format": "pt"})
    state["files"] = {name: file_entry(folder / name) for name in (MODEL_FILE, OPTIMIZER_FILE)}
    atomic_write_json(folder / STATE_FILE, state, indent=None)


# ---------------------------------------------------------------- fit checks

def _check_model_tensors(model: nn.Module, tensors: dict[str, Tensor], path: Path) -> None:
    """Raise CheckpointError unless the saved weights have exactly this model's names and shapes."""
    expected = model.state_dict()
    problems = [f"unexpected tensor {k!r}" for k in tensors if k not in expected]
    problems += [
        f"{k!r} has shape {tuple(t.shape)}, the model expects {tuple(expected[k].shape)}"
        for k, t in tensors.items() if k in expected and t.shape != expected[k].shape
    ]
    stored = {(expected[k].data_ptr(), expected[k].shape) for k in tensors if k in expected}
    problems += [
        f"missing tensor {k!r}" for k, t in expected.items()
        if k not in tensors and (t.data_ptr(), t.shape) not in stored  # tied aliases are stored once
    ]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(path / MODEL_FILE, "weights do not fit this model: " + "; ".join(problems[:5]) + more)


def _check_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict, path: Path) -> None:
    """Raise CheckpointError unless the optimizer state fits this optimizer's parameters."""
    groups = optimizer.param_groups
    saved = sd["param_groups"]
    if [len(g["params"]) for g in saved] != [len(g["params"]) for g in groups]:
        raise CheckpointError(
            path / STATE_FILE,
            f"optimizer groups hold {[len(g['params']) for g in saved]} parameters, this model "
            f"{[len(g['params']) for g in groups]}",
        )
    params = {i: p for g_saved, g in zip(saved, groups) for i, p in zip(g_saved["params"], g["params"])}
    for idx, entry in sd["state"].items():
        if idx not in params:
            raise CheckpointError(path / OPTIMIZER_FILE, f"state for unknown parameter index {idx}")
        for key, value in entry.items():
            if isinstance(value, Tensor) and value.dim() and value.shape != params[idx].shape:
                raise CheckpointError(
                    path / OPTIMIZER_FILE,
                    f"state.{idx}.{key} has shape {tuple(value.shape)}, the parameter {tuple(params[idx].shape)}",
                )


# ---------------------------------------------------------------- save and load

def write_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                     state: dict) -> Path:
    """Write model, optimizer and the JSON-friendly `state` to directory `path` atomically; returns the path.

    The state JSON gets this module's `format_version`, which `read_checkpoint` requires."""
    opt_tensors, opt_meta = _split_optimizer_state(optimizer.state_dict())
    state = dict(state, format_version=FORMAT_VERSION, optimizer=opt_meta)
    with atomic_directory(path) as tmp:
        _write_checkpoint_files(tmp, model, opt_tensors, state)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device | str, read_state: Callable[[dict], T]) -> T:
    """Verify checkpoint `path`, then load model, optimizer and RNG states; returns `read_state(state JSON)`.

    `read_state` picks the caller's own entries out of the state JSON before anything changes;
    a KeyError, TypeError or ValueError it raises becomes a CheckpointError.
    """
    path = published(path)  # the previous folder if a save was interrupted between its two renames
    state, opt_tensors, model_tensors = read_checkpoint(path)
    _check_model_tensors(model, model_tensors, path)
    try:
        opt_sd = _join_optimizer_state(opt_tensors, state["optimizer"])
        _check_optimizer_state(optimizer, opt_sd, path)
        extra = read_state(state)
        set_rng = _rng_setter(state["rng"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path / STATE_FILE, f"malformed trainer state ({type(e).__name__}: {e})") from None
    # everything checked: now change the model, the optimizer and the RNGs
    safetensors.torch.load_model(model, str(path / MODEL_FILE), strict=True, device=str(device))
    optimizer.load_state_dict(opt_sd)
    set_rng()
    return extra


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, Tensor], dict[str, Tensor]]:
    """Read and verify a checkpoint directory; returns (state JSON, optimizer tensors, model tensors)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(path, "no checkpoint here (directory missing)")
    missing = [n for n in (STATE_FILE, MODEL_FILE, OPTIMIZER_FILE) if not (path / n).is_file()]
    if missing:
        raise CheckpointError(path, f"incomplete, missing {', '.join(missing)}")
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path / STATE_FILE, f"not valid JSON ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict):
        raise CheckpointError(path / STATE_FILE, "not a trainer state (no 'files' entry)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path / STATE_FILE, f"format_version {state.get('format_version')!r}, "
                                                 f"expected {FORMAT_VERSION}")
    tensors = {}
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        file, expected = path / name, state["files"].get(name)
        if not isinstance(expected, dict):
            raise CheckpointError(path / STATE_FILE, f"no size and checksum recorded for {name}")
        try:
            check_entry(file, expected)
        except IntegrityError as e:
            raise CheckpointError(file, str(e).removeprefix(f"{file} ")) from None
        try:
            tensors[name] = safetensors.torch.load_file(str(file))
        except Exception as e:  # safetensors raises its own error type for a bad header
            raise CheckpointError(file, f"not a readable safetensors file ({e})") from None
    return state, tensors[OPTIMIZER_FILE], tensors[MODEL_FILE]
