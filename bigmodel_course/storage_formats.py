"""Storing weights and data: safetensors against pickle for weights, HDF5 (h5py) for a tokenised dataset read lazily.

Weights belong in safetensors: a flat header plus raw tensor bytes, nothing that runs when loaded, and
memory-mappable.  `torch.save` writes a pickle, and unpickling can call any Python function; `torch.load(...,
weights_only=True)` restricts it to tensors and plain containers and refuses anything else.  HDF5 is a format
for large arrays — a tokenised corpus, read in slices without loading the whole file.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_model
from torch import Tensor, nn
from torch.utils.data import Dataset

COMPRESSIONS = (None, "gzip", "lzf")


class NotAWeight:
    """A harmless non-tensor object; a pickle holding it is refused by torch.load(weights_only=True)."""

    def __init__(self, note: str = "not a tensor") -> None:
        self.note = note


def save_pickled(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's state_dict with torch.save (a pickle); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def save_safetensors(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's weights as safetensors (tied weights stored once); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return path


def _median_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare_weight_formats(model: nn.Module, folder: str | os.PathLike, rounds: int = 5) -> list[dict]:
    """Size and median load time of the model's weights as a pickle and as safetensors, loaded in turn.

    Rows: pickle via torch.load(weights_only=True), the same with mmap=True, safetensors via load_file.
    """
    if not isinstance(rounds, int) or rounds <= 0:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    folder = Path(folder)
    pkl = save_pickled(model, folder / "model.pt")
    st = save_safetensors(model, folder / "model.safetensors")
    loaders = {
        "pickle：torch.load(weights_only=True)": (pkl, lambda: torch.load(pkl, weights_only=True)),
        "pickle：torch.load(weights_only=True, mmap=True)":
            (pkl, lambda: torch.load(pkl, weights_only=True, mmap=True)),
        "safetensors：load_file": (st, lambda: load_file(str(st))),
    }
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):  # interleaved: machine noise hits every format alike
        for name, (_, fn) in loaders.items():
            times[name].append(_median_seconds(fn, 1))
    return [{"format": name, "bytes": path.stat().st_size, "load_ms": 1000 * statistics.median(times[name])}
            for name, (path, _) in loaders.items()]


def weights_only_refusal(path: str | os.PathLike) -> str:
    """Pickle a dict holding a NotAWeight to `path`; return the reason torch.load(weights_only=True) refuses it."""
    path = Path(path)
    torch.save({"weight": torch.zeros(2), "extra": NotAWeight()}, path)
    try:
        torch.load(path, weights_only=True)
    except Exception as err:  # UnpicklingError; its type is an implementation detail
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        return f"{type(err).__name__}: {reason}"
    raise RuntimeError("torch.load(weights_only=True) accepted a non-tensor object")


# ---------------------------------------------------------------- HDF5

def write_token_blocks(path: str | os.PathLike, blocks: Tensor | np.ndarray, chunk_rows: int = 64,
                       compression: str | None = None, dataset: str = "input_ids") -> Path:
    """Write a (n, block) integer array of token ids to an HDF5 file, chunked by rows, optionally compressed."""
    import h5py

    array = blocks.numpy() if isinstance(blocks, Tensor) else np.asarray(blocks)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"blocks must be a non-empty (n, block) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"blocks must hold integer token ids, got {array.dtype}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")
    if not isinstance(chunk_rows, int) or chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    dtype = np.uint16 if array.min() >= 0 and array.max() < 2**16 else np.int32  # ids of a small vocabulary: 2 bytes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=array.astype(dtype), chunks=(min(chunk_rows, array.shape[0]), array.shape[1]),
                         compression=compression)
    return path


def read_token_blocks(path: str | os.PathLike, dataset: str = "input_ids") -> Tensor:
    """Read the whole (n, block) token array of an HDF5 file into memory as int64."""
    import h5py

    with h5py.File(path, "r") as f:
        if dataset not in f:
            raise ValueError(f"{path} has no dataset {dataset!r}; it has {sorted(f)}")
        return torch.from_numpy(f[dataset][...].astype(np.int64))


class H5BlockDataset(Dataset):
    """Causal-LM blocks read lazily from an HDF5 file: each item reads one row; the file opens on first use.

    Opening on first use (not in __init__) gives every DataLoader worker process its own file handle.
    """

    def __init__(self, path: str | os.PathLike, dataset: str = "input_ids") -> None:
        import h5py

        self.path, self.dataset = Path(path), dataset
        with h5py.File(self.path, "r") as f:
            if dataset not in f or f[dataset].ndim != 2:
                raise ValueError(f"{self.path} has no 2-D dataset {dataset!r}")
            self.shape = tuple(f[dataset].shape)
        self._file = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} blocks")
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        block = torch.from_numpy(self._file[self.dataset][i % len(self)].astype(np.int64))
        return {"input_ids": block, "labels": block.clone()}

    def close(self) -> None:
        """Close the file handle (reopened on the next access)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict:  # an open h5py handle cannot be pickled to worker processes
        return {**self.__dict__, "_file": None}
