"""Seeding, device choice, run profiles and the cache directory."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PROFILES = ("ci", "full")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) for reproducible runs."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """Return the best available device (cuda, then mps, then cpu), or `prefer` if given."""
    choice = prefer or os.environ.get("BIGMODEL_DEVICE")
    if choice:
        if choice not in ("cpu", "cuda", "mps") and not choice.startswith("cuda:"):
            raise ValueError(f"unknown device {choice!r}; expected 'cpu', 'cuda', 'cuda:N' or 'mps'")
        if choice.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} requested but CUDA is not available")
        if choice == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available")
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class RunProfile:
    """Sizes that differ between a quick CI run and the book's full run."""

    name: str

    @property
    def is_ci(self) -> bool:
        """True for the fast profile used by tests."""
        return self.name == "ci"

    def pick(self, ci, full):
        """Return `ci` in the ci profile and `full` otherwise."""
        return ci if self.is_ci else full


def get_profile(name: str | None = None) -> RunProfile:
    """Resolve the run profile from `name` or the BIGMODEL_PROFILE variable (default 'full')."""
    name = name or os.environ.get("BIGMODEL_PROFILE", "full")
    if name not in PROFILES:
        raise ValueError(f"unknown run profile {name!r}; expected one of {PROFILES}")
    return RunProfile(name)


def cache_dir(*parts: str) -> Path:
    """Return (and create) the course cache directory, `BIGMODEL_CACHE` or ~/.cache/bigmodel_course."""
    root = Path(os.environ.get("BIGMODEL_CACHE", Path.home() / ".cache" / "bigmodel_course"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of a module; `Module.parameters()` already yields tied weights once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
