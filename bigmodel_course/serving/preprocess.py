"""Input checks and preprocessing shared by `LoadedModel.predict` and the service: texts, 8×8 arrays, PNG files.

Text is tokenised by `bigmodel_course.data.ClassificationDataset` and its collate, and digit images are
normalised by `bigmodel_course.data.vision.normalise_digits`, so serving prepares inputs exactly as
training did.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class InputError(ValueError):
    """Input a model cannot classify (empty text, wrong image size, not a PNG, …); the message names the problem."""


def check_texts(texts: Sequence[str], max_items: int | None = None, max_chars: int | None = None) -> list[str]:
    """Return `texts` as a list if it is a non-empty list of non-blank strings within the limits, else InputError."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise InputError("texts is empty; send at least one text")
    if max_items is not None and len(texts) > max_items:
        raise InputError(f"too many texts: {len(texts)}; at most {max_items} per request")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"texts[{i}] is empty")
        if max_chars is not None and len(text) > max_chars:
            raise InputError(f"texts[{i}] is too long: {len(text)} characters; at most {max_chars}")
    return list(texts)


def encode_texts(tokenizer, texts: Sequence[str], max_len: int) -> dict[str, Tensor]:
    """input_ids and attention_mask (right padding) made exactly as ClassificationDataset and its collate make them."""
    from ..data import ClassificationDataset

    texts = check_texts(texts)
    dataset = ClassificationDataset(texts, [0] * len(texts), tokenizer, max_len)
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _size(shape: Sequence[int]) -> str:
    """A shape written as 8×8."""
    return "×".join(str(int(n)) for n in shape)


def _number(x: float) -> str:
    """A float written exactly enough to see why it is out of range: 16.0000001, not 16."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _one_image(image, name: str, image_size: int) -> np.ndarray:
    """One image as a float64 (S, S) array of numbers (not strings or booleans), or InputError naming its size."""
    try:
        array = np.asarray(image.detach().cpu() if isinstance(image, Tensor) else image)
    except (ValueError, TypeError):
        raise InputError(f"{name} is not an {image_size}×{image_size} grid of numbers") from None
    if array.shape != (image_size, image_size):
        raise InputError(f"{name} has size {_size(array.shape) or 'scalar'}; expected {image_size}×{image_size}")
    if array.dtype.kind not in "iuf":
        raise InputError(f"{name} must hold numbers only, got {array.dtype.name} values")
    return array.astype(np.float64)


def check_images(images, image_size: int = 8, max_value: float = 16.0, max_items: int | None = None) -> np.ndarray:
    """Images (N, S, S) with values in [0, max_value] as a float32 array, or InputError naming the problem."""
    if isinstance(images, (Tensor, np.ndarray)):
        if images.ndim != 3:
            raise InputError(f"images must have shape (N, {image_size}, {image_size}), got {tuple(images.shape)}")
        images = list(images)
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise InputError(f"images must be a list of {image_size}×{image_size} arrays, got {type(images).__name__}")
    if len(images) == 0:
        raise InputError("images is empty; send at least one image")
    if max_items is not None and len(images) > max_items:
        raise InputError(f"too many images: {len(images)}; at most {max_items} per request")
    arrays = [_one_image(image, f"images[{i}]", image_size) for i, image in enumerate(images)]
    for i, array in enumerate(arrays):
        if not np.isfinite(array).all():
            raise InputError(f"images[{i}] contains NaN or infinite values")
        if array.min() < 0 or array.max() > max_value:
            raise InputError(f"images[{i}] has values from {_number(array.min())} to {_number(array.max())}; "
                             f"expected values in [0, {_number(max_value)}]")
    return np.stack(arrays).astype(np.float32)


def pixel_values(images, preprocessing: dict) -> Tensor:
    """Checked images (N, S, S) -> normalised float32 pixel_values (N, 1, S, S) with the card's mean and std."""
    from ..data.vision import normalise_digits

    size, top = int(preprocessing["image_size"]), float(preprocessing["max_value"])
    array = check_images(images, size, top)
    x = normalise_digits(torch.from_numpy(array), float(preprocessing["mean"]), float(preprocessing["std"]))
    return torch.as_tensor(x, dtype=torch.float32).reshape(len(array), 1, size, size)


def decode_png(data: bytes, image_size: int = 8, max_value: float = 16.0, name: str = "file") -> np.ndarray:
    """A PNG file -> (S, S) float32 array on the load_digits scale: grayscale p -> p / 255 * max_value."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray)) or not bytes(data[:8]) == PNG_SIGNATURE:
        raise InputError(f"{name} is not a PNG image")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if img.size != (image_size, image_size):  # checked on the header, before decoding any pixels
                raise InputError(f"{name} is {img.size[0]}×{img.size[1]} pixels; expected {image_size}×{image_size}")
            gray = np.asarray(img.convert("L"), dtype=np.float32)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise InputError(f"{name} is not a readable PNG image ({type(e).__name__})") from None
    return gray / 255.0 * np.float32(max_value)


def encode_png(image, max_value: float = 16.0) -> bytes:
    """An (S, S) array on the load_digits scale -> PNG bytes (grayscale, ink bright); the inverse of decode_png."""
    from PIL import Image

    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {array.shape}")
    if not math.isfinite(max_value) or max_value <= 0:
        raise ValueError(f"max_value must be a positive number, got {max_value}")
    pixels = np.clip(np.rint(array / max_value * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
