"""ONNX export of a text classifier (dynamic batch and sequence axes) and an onnxruntime session wrapper.

    path = export_text_classifier(model, "model.onnx")       # TorchScript-based torch.onnx exporter
    session = OnnxTextClassifier(path)
    logits = session.logits(input_ids, attention_mask)       # numpy (N, classes), same as model(...).logits

The exporter is the TorchScript-based one (`torch.onnx.export(..., dynamo=False)`): the dynamo exporter
stops at the model's input check `int(ids.min())` (a data-dependent Python value it cannot trace), while
the tracing exporter runs that check once on the example and records the tensor graph. The recorded
graph is checked against the eager model on several batch sizes and lengths (`max_abs_difference`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

INPUT_NAMES, OUTPUT_NAME = ("input_ids", "attention_mask"), "logits"
OPSET = 17


class LogitsOnly(nn.Module):
    """Wrap a classifier whose forward returns an output object so that it returns the logits tensor only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _max_len(model: nn.Module) -> int:
    """The model's context length (cfg.max_len), or ValueError if it has none."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not isinstance(getattr(cfg, "max_len", None), int):
        raise ValueError(f"{type(model).__name__} has no cfg.max_len; export needs a bigmodel_course text classifier")
    return cfg.max_len


def example_inputs(model: nn.Module, batch: int = 2, length: int = 8) -> tuple[Tensor, Tensor]:
    """Valid (input_ids, attention_mask) for tracing: token ids 1..vocab-1, the second row right-padded."""
    cfg = model.cfg
    length = min(length, _max_len(model))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, cfg.vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1 and length > 2:
        mask[1, length // 2:] = 0
        ids[1, length // 2:] = getattr(cfg, "pad_token_id", 0)
    return ids, mask


def export_text_classifier(model: nn.Module, path: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write `model` (a text classifier: input_ids, attention_mask -> .logits) as ONNX with dynamic batch and
    sequence axes; returns the path. The model is exported in eval mode on the CPU and left unchanged."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _max_len(model)
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"the file name should end in .onnx, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    device, training = next(model.parameters()).device, model.training
    wrapper = LogitsOnly(model).cpu().eval()
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            OUTPUT_NAME: {0: "batch"}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about the shape checks, which hold for every input
            torch.onnx.export(wrapper, example_inputs(model), str(path), dynamo=False, input_names=list(INPUT_NAMES),
                              output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=opset)
    finally:
        model.to(device).train(training)
    return path


@dataclass
class OnnxTextClassifier:
    """An onnxruntime session over an exported text classifier; `threads` intra-op threads (None: ORT's choice)."""

    path: Path
    threads: int | None = None

    def __post_init__(self) -> None:
        import onnxruntime as ort

        self.path = Path(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.path}")
        options = ort.SessionOptions()
        if self.threads is not None:
            if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads <= 0:
                raise ValueError(f"threads must be a positive int or None, got {self.threads!r}")
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise ValueError(f"{self.path} is not a loadable ONNX model: {e}") from None
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES:
            raise ValueError(f"{self.path} takes inputs {names}, expected {INPUT_NAMES}")

    def logits(self, input_ids: Tensor | np.ndarray, attention_mask: Tensor | np.ndarray) -> np.ndarray:
        """Class logits (N, classes) as float32 numpy for int64 (N, T) input_ids and attention_mask."""
        ids, mask = _as_int64(input_ids, "input_ids"), _as_int64(attention_mask, "attention_mask")
        if ids.shape != mask.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}; expected {ids.shape} like input_ids")
        return self.session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})[0]


def _as_int64(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    """A (batch, length) integer array as contiguous int64 numpy, or ValueError naming the input."""
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have shape (batch, length) with both > 0, got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64)


def max_abs_difference(model: nn.Module, session: OnnxTextClassifier,
                       shapes: tuple[tuple[int, int], ...] = ((1, 5), (3, 17), (8, 64))) -> float:
    """Largest |eager logits - ONNX logits| over random right-padded batches of the given (batch, length) shapes."""
    generator = torch.Generator().manual_seed(1)
    cfg, worst = model.cfg, 0.0
    model.eval()
    for batch, length in shapes:
        length = min(length, cfg.max_len)
        ids = torch.randint(1, cfg.vocab_size, (batch, length), generator=generator)
        lengths = torch.randint(1, length + 1, (batch,), generator=generator)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        ids = ids * mask
        with torch.no_grad():
            eager = model(input_ids=ids, attention_mask=mask).logits.float().numpy()
        worst = max(worst, float(np.abs(eager - session.logits(ids, mask)).max()))
    return worst


def compare_speed(model: nn.Module, session: OnnxTextClassifier, batch_sizes: tuple[int, ...] = (1, 32),
                  length: int = 64, rounds: int = 30) -> list[dict]:
    """Median ms per forward pass of eager PyTorch and onnxruntime, timed interleaved in the same run, per batch
    size (inputs: random token ids, no padding); rows {"batch", "eager_ms", "onnx_ms", "speedup"}."""
    from .benchmarks import time_interleaved

    if rounds <= 0 or any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in batch_sizes):
        raise ValueError(f"rounds and batch sizes must be positive ints, got {rounds!r}, {batch_sizes!r}")
    cfg = model.cfg
    length = min(length, cfg.max_len)
    model.eval()
    rows = []
    for batch in batch_sizes:
        ids = torch.randint(1, cfg.vocab_size, (batch, length), generator=torch.Generator().manual_seed(batch))
        mask = torch.ones_like(ids)
        ids_np, mask_np = ids.numpy(), mask.numpy()

        def eager() -> None:
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)

        def onnx() -> None:
            session.logits(ids_np, mask_np)

        times = time_interleaved({"eager": eager, "onnx": onnx}, torch.device("cpu"), rounds)
        rows.append({"batch": batch, "eager_ms": times["eager"] * 1000, "onnx_ms": times["onnx"] * 1000,
                     "speedup": times["eager"] / times["onnx"]})
    return rows
