"""Handwritten digits (sklearn's 8×8 load_digits): stratified splits, normalisation, augmentation, a torch Dataset."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def _finite(value, name: str) -> float:
    """value as a finite float, else ValueError naming it."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def normalise_digits(x, mean: float, std: float) -> Tensor:
    """Map pixel values x (array-like, any shape) to float32 (x - mean) / std; used by training and serving."""
    mean, std = _finite(mean, "mean"), _finite(std, "std")
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float32))
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"pixel values must be real numbers, got {t.dtype}")
    t = t.to(torch.float32)
    if t.numel() == 0:
        raise ValueError("pixel values are empty")
    if not torch.isfinite(t).all():
        raise ValueError("pixel values contain NaN or infinity")
    return (t - mean) / std
