"""Position encodings: sinusoidal (Vaswani et al. 2017), learned, and rotary (RoPE, Su et al. 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _check_length(length: int, offset: int | Tensor, max_len: int) -> None:
    last = int(offset.max()) if isinstance(offset, Tensor) and offset.numel() else offset
    if isinstance(last, Tensor):  # an empty batch of offsets
        return
    if last + length > max_len:
        raise ValueError(
            f"sequence of {length} tokens at offset {last} needs {last + length} positions, "
            f"but the position table holds max_len={max_len}"
        )


def positions(length: int, offset: int | Tensor, device: torch.device | None = None) -> Tensor:
    """Position ids offset .. offset+length-1: shape (length,) for an int offset, (B, length) for a (B,) tensor of
    per-sequence offsets (a batch whose sequences have cached different numbers of tokens)."""
    steps = torch.arange(length, device=device)
    if isinstance(offset, Tensor):
        if offset.dim() != 1:
            raise ValueError(f"per-sequence offsets must be a (batch,) tensor, got shape {tuple(offset.shape)}")
        return offset.to(device).unsqueeze(1) + steps
    return steps + offset


def sinusoidal_table(max_len: int, d_model: int, base: float = 10000.0) -> Tensor:
    """PE[pos, 2i] = sin(pos / base^(2i/d)), PE[pos, 2i+1] = cos(pos / base^(2i/d)); shape (max_len, d_model)."""
    if d_model % 2 != 0:
        raise ValueError(f"sinusoidal encoding needs an even d_model, got {d_model}")
    pos = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    inv_freq = torch.exp(-math.log(base) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal position vectors, looked up by position (no parameters)."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, length: int, offset: int | Tensor = 0) -> Tensor:
        """Position vectors for positions offset .. offset+length-1: (length, d_model), or (B, length, d_model)
        for per-sequence offsets (B,)."""
        _check_length(length, offset, self.max_len)
        if isinstance(offset, Tensor):
            return self.table[positions(length, offset, self.table.device)]
        return self.table[offset : offset + length]


class LearnedPositionalEmbedding(nn.Module):
    """A trainable vector per position (BERT, GPT-2)."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, length: int, offset: int | Tensor = 0) -> Tensor:
        """Position vectors for positions offset .. offset+length-1: (length, d_model), or (B, length, d_model)
        for per-sequence offsets (B,)."""
        _check_length(length, offset, self.max_len)
        return self.embedding(positions(length, offset, self.embedding.weight.device))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: rotates each (x_2i, x_2i+1) pair of q and k by angle pos·θ_i.

    Applied inside attention to queries and keys of shape (B, H, T, head_dim), so that
    q_m · k_n depends on positions only through m - n.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        self.max_len = max_len
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """Rotate x (..., T, head_dim) as if its tokens sat at positions offset .. offset+T-1; with per-sequence
        offsets (B,), x is (B, H, T, head_dim) and row b starts at offset[b]."""
        T = x.shape[-2]
        _check_length(T, offset, self.max_len)
        if isinstance(offset, Tensor):
            pos = positions(T, offset, self.cos.device)  # (B, T)
            cos, sin = self.cos[pos].unsqueeze(1).to(x.dtype), self.sin[pos].unsqueeze(1).to(x.dtype)
        else:
            cos = self.cos[offset : offset + T].to(x.dtype)
            sin = self.sin[offset : offset + T].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return out.flatten(-2)
