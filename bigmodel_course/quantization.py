"""Weight-only quantization of Linear and Embedding weights: group-wise symmetric int8 and int4 (packed two per byte).

Each row of a weight matrix is cut into groups of `group_size` consecutive input columns; a group stores one
scale s = max|w| / q_max and the integers q = round(w / s) clipped to [-q_max, q_max] (q_max = 127 for 8 bits, 7
for 4 bits). Weights are dequantized on the fly, w ≈ q · s, just before each matrix product: activations stay in
floating point, which is what GPTQ, AWQ and llama.cpp's k-quants store too (they differ in how they choose q and s,
not in the layout). Smaller groups follow the weights' local range more closely and cost more scales.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BITS = (4, 8)


def qmax(bits: int) -> int:
    """Largest integer magnitude of a symmetric `bits`-bit code: 7 for int4, 127 for int8."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    return 2 ** (bits - 1) - 1


def pack_int4(q: Tensor) -> Tensor:
    """Pack int values in [-8, 7] (last dim even) two per uint8: element 2i in the low nibble, 2i+1 in the high."""
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last dimension, got {q.shape[-1]}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """Inverse of `pack_int4`: int8 values in [-8, 7], last dimension doubled."""
    low = (packed & 0xF).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    both = torch.stack([low, high], dim=-1).flatten(-2)
    return torch.where(both > 7, both - 16, both)


@dataclass
class QuantizedWeight:
    """A (rows, cols) weight as group-wise codes and scales."""

    codes: Tensor  # int8 (rows, cols) for 8 bits; uint8 (rows, cols/2) packed for 4 bits
    scales: Tensor  # (rows, cols / group_size), float16
    bits: int
    group_size: int
    shape: tuple[int, int]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The approximate weight q · s."""
        q = unpack_int4(self.codes) if self.bits == 4 else self.codes
        rows, cols = self.shape
        groups = q.view(rows, cols // self.group_size, self.group_size).to(dtype)
        return (groups * self.scales.to(dtype).unsqueeze(-1)).view(rows, cols)

    def nbytes(self) -> int:
        """Bytes of codes and scales."""
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()


def quantize_weight(w: Tensor, bits: int = 4, group_size: int = 64) -> QuantizedWeight:
    """Group-wise symmetric quantization of a 2-D weight along its second (input) dimension."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    rows, cols = w.shape
    if group_size < 2 or cols % group_size:
        raise ValueError(f"group_size={group_size} must be at least 2 and divide the {cols} input columns")
    top = qmax(bits)
    groups = w.detach().float().reshape(rows, cols // group_size, group_size)
    scales = (groups.abs().amax(dim=-1) / top).clamp(min=1e-8).to(torch.float16)
    q = torch.round(groups / scales.float().unsqueeze(-1)).clamp(-top, top).to(torch.int8).reshape(rows, cols)
    codes = pack_int4(q) if bits == 4 else q
    return QuantizedWeight(codes, scales, bits, group_size, (rows, cols))


class WeightOnlyLinear(nn.Module):
    """A Linear layer whose weight is stored quantized and dequantized for every forward pass."""

    def __init__(self, qweight: QuantizedWeight, bias: Tensor | None) -> None:
        super().__init__()
        self.bits, self.group_size, self.shape = qweight.bits, qweight.group_size, qweight.shape
        self.register_buffer("codes", qweight.codes)
        self.register_buffer("scales", qweight.scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def qweight(self) -> QuantizedWeight:
        """The stored weight."""
        return QuantizedWeight(self.codes, self.scales, self.bits, self.group_size, self.shape)

    def forward(self, x: Tensor) -> Tensor:
        """x @ dequantize(W)ᵀ + b."""
        return F.linear(x, self.qweight.dequantize(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in={self.shape[1]}, out={self.shape[0]}, bits={self.bits}, group_size={self.group_size}"


class WeightOnlyEmbedding(nn.Module):
    """An embedding table stored quantized (rows = tokens, groups along the width); looks up dequantized rows."""

    def __init__(self, qweight: QuantizedWeight) -> None:
        super().__init__()
        self.bits, self.group_size, self.shape = qweight.bits, qweight.group_size, qweight.shape
        self.register_buffer("codes", qweight.codes)
        self.register_buffer("scales", qweight.scales)

    @property
    def weight(self) -> Tensor:
        """The dequantized table (a tied LM head multiplies by it)."""
        return QuantizedWeight(self.codes, self.scales, self.bits, self.group_size, self.shape).dequantize()

    def forward(self, ids: Tensor) -> Tensor:
        """Dequantize only the rows looked up."""
        rows = QuantizedWeight(self.codes[ids.flatten()], self.scales[ids.flatten()], self.bits, self.group_size,
                               (ids.numel(), self.shape[1]))
        return rows.dequantize().view(*ids.shape, self.shape[1])


class _TiedHead(nn.Module):
    """An LM head tied to a quantized embedding table: logits = h · Eᵀ with E dequantized."""

    def __init__(self, embedding: WeightOnlyEmbedding) -> None:
        super().__init__()
        self.embedding = [embedding]  # a plain list: not a submodule, so its buffers are stored once

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(h, self.embedding[0].weight.to(h.dtype))


def quantize_model(model: nn.Module, bits: int = 4, group_size: int = 64, embeddings: bool = True) -> nn.Module:
    """A copy of `model` with every nn.Linear (and, with `embeddings`, every nn.Embedding whose width the group size
    divides) stored weight-only quantized; a LM head tied to the token embeddings stays tied to the table, quantized
    or not."""
    qmax(bits)
    model = copy.deepcopy(model).eval()
    tied = {}  # id(embedding weight) -> WeightOnlyEmbedding
    float_tables = set()  # ids of embedding weights left in floating point
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if embeddings and isinstance(child, nn.Embedding) and child.embedding_dim % group_size == 0:
                q = WeightOnlyEmbedding(quantize_weight(child.weight, bits, group_size))
                tied[id(child.weight)] = q
                setattr(parent, name, q)
            elif isinstance(child, nn.Embedding):
                float_tables.add(id(child.weight))
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                if id(child.weight) in tied and child.bias is None:
                    setattr(parent, name, _TiedHead(tied[id(child.weight)]))
                elif id(child.weight) in float_tables:
                    continue  # a head tied to a table kept in floating point stays tied to it
                elif child.in_features % group_size == 0:
                    setattr(parent, name, WeightOnlyLinear(quantize_weight(child.weight, bits, group_size),
                                                           child.bias))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of `model`, counting shared tensors once."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def quantization_error(w: Tensor, bits: int = 4, group_size: int = 64) -> float:
    """Relative error ‖W − Ŵ‖ / ‖W‖ (Frobenius) of group-wise quantizing a 2-D weight."""
    w = w.detach().float()
    approx = quantize_weight(w, bits, group_size).dequantize()
    return float((w - approx).norm() / w.norm().clamp(min=1e-12))


def group_quantized_bytes(n_params: int, bits: int, group_size: int, scale_bytes: int = 2) -> int:
    """Bytes of `n_params` weights stored as `bits`-bit codes plus one `scale_bytes` scale per group."""
    if isinstance(n_params, bool) or not isinstance(n_params, int) or n_params <= 0:
        raise ValueError(f"n_params must be a positive int, got {n_params!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int of at least 2, got {group_size!r}")
    qmax(bits)
    return -(-n_params * bits // 8) + -(-n_params // group_size) * scale_bytes


# --- activations: why weight-only is the easy half -------------------------------------------------------------

def fake_quantize_int8(x: Tensor, dim: int | None = None) -> Tensor:
    """Symmetric int8 quantize-dequantize of `x`: one scale for the whole tensor (`dim=None`), or one per slice
    along `dim` (e.g. `dim=-1` of a weight: one scale per output row)."""
    x = x.float()
    top = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = (top / 127).clamp(min=1e-12)
    return torch.round(x / scale).clamp(-127, 127) * scale


def linear_input_absmax(model: nn.Module, run) -> dict[str, Tensor]:
    """Largest |input| per input channel of every nn.Linear of `model` while `run()` executes (a hook per layer)."""
    stats: dict[str, Tensor] = {}
    handles = []

    def hook(name):
        def record(module, inputs, output):
            m = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0)
            stats[name] = m if name not in stats else torch.maximum(stats[name], m)
        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    if not stats:
        raise ValueError("run() did not call any nn.Linear of the model")
    return stats


def smoothquant_scales(act_absmax: Tensor, weight: Tensor, alpha: float = 0.5) -> Tensor:
    """SmoothQuant's per-input-channel factors s_j = max|X_j|^α / max|W_j|^(1−α) (Xiao et al., 2023).

    X·Wᵀ = (X / s)·(W · s)ᵀ exactly; dividing the activations by s flattens their outlier channels and moves that
    range into the weights, which quantize per output row and tolerate it better.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if weight.dim() != 2 or act_absmax.shape != (weight.shape[1],):
        raise ValueError(f"act_absmax of shape {tuple(act_absmax.shape)} does not match the weight's "
                         f"{weight.shape[-1]} input columns")
    w_absmax = weight.detach().float().abs().amax(dim=0)
    return (act_absmax.float().clamp(min=1e-5) ** alpha / w_absmax.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


def linear_inputs(model: nn.Module, name: str, run) -> Tensor:
    """The inputs the nn.Linear called `name` receives while `run()` executes, as a (tokens, in_features) matrix."""
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Linear):
        raise ValueError(f"{name!r} is not an nn.Linear of the model")
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().float()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"run() did not call {name!r}")
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in seen])


def w8a8_errors(x: Tensor, weight: Tensor, alpha: float = 0.5) -> dict[str, float]:
    """Relative error ‖Y − Ŷ‖ / ‖Y‖ of Y = X·Wᵀ when int8 is applied to the weight only (one scale per output row),
    to the weight and to the activations (one scale per tensor), and to both after SmoothQuant's rescaling."""
    x, w = x.float(), weight.detach().float()
    y = x @ w.T

    def rel(approx: Tensor) -> float:
        return float((y - approx).norm() / y.norm().clamp(min=1e-12))

    w8 = fake_quantize_int8(w, dim=-1)
    s = smoothquant_scales(x.abs().amax(dim=0), w, alpha)
    return {"weight-only int8": rel(x @ w8.T),
            "int8 weights + int8 activations": rel(fake_quantize_int8(x) @ w8.T),
            "same, after SmoothQuant": rel(fake_quantize_int8(x / s) @ fake_quantize_int8(w * s, dim=-1).T)}
