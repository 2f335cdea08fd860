"""Handwritten digits (sklearn's 8×8 load_digits): stratified splits, normalisation, augmentation, a torch Dataset."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

DIGITS_IMAGE_SIZE = 8
DIGITS_MAX_VALUE = 16.0  # load_digits pixels are integers 0..16 (ink = high)


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


@dataclass(frozen=True)
class DigitSplits:
    """Train/validation/test images (N, 8, 8) float32 in [0, 16], labels, indices into load_digits, train statistics."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    idx_train: np.ndarray
    idx_val: np.ndarray
    idx_test: np.ndarray
    mean: float  # pixel mean of the training part only
    std: float  # pixel standard deviation of the training part only

    @property
    def counts(self) -> dict[str, int]:
        """Number of images per split."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def preprocessing(self) -> dict:
        """The serving registry's image preprocessing record for these statistics."""
        return {"image_size": DIGITS_IMAGE_SIZE, "max_value": DIGITS_MAX_VALUE, "mean": self.mean, "std": self.std}


def digits_splits(test_size: float = 0.2, val_size: float = 0.15, seed: int = 0) -> DigitSplits:
    """load_digits split as train_test_split(test_size, stratify=y, random_state=seed), then a stratified
    validation part (val_size of the training part) for model selection; statistics from the training part."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    for name, value in (("test_size", test_size), ("val_size", val_size)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    digits = load_digits()
    images = digits.images.astype(np.float32)
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    # the same call as the RBF-SVM baseline: train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    idx_rest, idx_test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    idx_train, idx_val = train_test_split(idx_rest, test_size=val_size, stratify=y[idx_rest], random_state=seed)
    train = images[idx_train]
    return DigitSplits(
        x_train=train, y_train=y[idx_train], x_val=images[idx_val], y_val=y[idx_val],
        x_test=images[idx_test], y_test=y[idx_test], idx_train=idx_train, idx_val=idx_val, idx_test=idx_test,
        mean=float(train.mean(dtype=np.float64)), std=float(train.std(dtype=np.float64)),
    )


def digits_augmentation(degrees: float = 10.0, translate: float = 0.125, scale: tuple[float, float] = (0.9, 1.1)):
    """A torchvision.transforms.v2 pipeline for (1, 8, 8) raw-scale digits: small random rotation, shift, zoom.

    No flips: a mirrored 2, 3, 5 or 7 is no longer that digit. Empty pixels are filled with 0 (background),
    so apply it before normalisation."""
    from torchvision.transforms import InterpolationMode, v2

    if not 0.0 <= degrees < 180.0:
        raise ValueError(f"degrees must be in [0, 180), got {degrees}")
    if not 0.0 <= translate < 1.0:
        raise ValueError(f"translate must be a fraction in [0, 1), got {translate}")
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    return v2.RandomAffine(degrees=degrees, translate=(translate, translate), scale=tuple(scale),
                           interpolation=InterpolationMode.BILINEAR, fill=0.0)


class DigitsDataset(Dataset):
    """Raw 0..16 digit images and labels; items are {"pixel_values": (1, 8, 8) normalised float, "labels": int64},
    with an optional augmentation applied to the raw image before normalisation."""

    def __init__(self, images, labels, mean: float, std: float, transform=None) -> None:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        y = torch.as_tensor(np.asarray(labels)).long()
        if x.dim() != 3 or tuple(x.shape[1:]) != (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE):
            raise ValueError(f"images must be (N, 8, 8), got {tuple(x.shape)}")
        if y.dim() != 1 or len(y) != len(x):
            raise ValueError(f"labels must be ({len(x)},), got {tuple(y.shape)}")
        if len(x) == 0:
            raise ValueError("images is empty")
        if not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > DIGITS_MAX_VALUE:
            raise ValueError(f"pixel values must lie in [0, {DIGITS_MAX_VALUE}]")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable, got {type(transform).__name__}")
        normalise_digits(x[:1], mean, std)  # validates mean and std
        self.images, self.labels, self.mean, self.std, self.transform = (
            x[:, None], y, float(mean), float(std), transform)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return {"pixel_values": normalise_digits(x, self.mean, self.std), "labels": self.labels[i]}
