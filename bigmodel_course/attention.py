"""Scaled dot-product attention (formula and fused paths), masks, multi-head attention, KV cache.

Mask convention everywhere in this package: a boolean mask is True where attention is
*allowed* (the convention of `torch.nn.functional.scaled_dot_product_attention` and of
Hugging Face `attention_mask`, where 1 marks a real token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """Boolean (q_len, k_len) mask letting query i see keys up to its own position.

    Queries are the *last* `q_len` positions of the `k_len` keys, as in incremental decoding
    with a KV cache (offset = k_len - q_len).
    """
    if q_len > k_len:
        raise ValueError(f"causal mask needs q_len <= k_len, got q_len={q_len}, k_len={k_len}")
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device).unsqueeze(1) + offset
    k_pos = torch.arange(k_len, device=device).unsqueeze(0)
    return k_pos <= q_pos


def build_attention_mask(
    q: Tensor,
    k: Tensor,
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor | None:
    """Combine an (L, S)-broadcastable mask, a (B, S) key padding mask and causality into one bool mask.

    Query rows that would see no key at all are opened to every key, so the result never makes
    softmax produce NaN (those rows belong to padding and are ignored downstream).
    """
    L, S = q.shape[-2], k.shape[-2]
    mask: Tensor | None = None
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise ValueError(f"attn_mask must be a bool tensor (True = attend), got {attn_mask.dtype}")
        if attn_mask.dim() < 2 or tuple(attn_mask.shape[-2:]) != (L, S) or attn_mask.dim() > q.dim():
            raise ValueError(
                f"attn_mask has shape {tuple(attn_mask.shape)}; expected (..., {L}, {S}) "
                f"for {L} queries and {S} keys with at most {q.dim()} dims"
            )
        mask = attn_mask
    if key_padding_mask is not None:
        B = q.shape[0]
        if key_padding_mask.dim() != 2 or tuple(key_padding_mask.shape) != (B, S):
            raise ValueError(
                f"padding mask has shape {tuple(key_padding_mask.shape)}; expected (batch={B}, keys={S})"
            )
        kpm = key_padding_mask.to(torch.bool).view(B, *([1] * (q.dim() - 2)), S)
        mask = kpm if mask is None else mask & kpm
    if is_causal:
        cm = causal_mask(L, S, device=q.device)
        mask = cm if mask is None else mask & cm
    if mask is None:
        return None
    return mask | ~mask.any(dim=-1, keepdim=True)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(
            f"q, k, v must have the same number of dims (>= 2), got {q.dim()}, {k.dim()}, {v.dim()}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"query width {q.shape[-1]} differs from key width {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{k.shape[-2]} keys but {v.shape[-2]} values")


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V, written out step by step.

    Shapes: q (..., L, d_k), k (..., S, d_k), v (..., S, d_v) -> (..., L, d_v).
    Returns (output, weights) when `return_weights` is True.
    """
    _check_qkv(q, k, v)
    mask = build_attention_mask(q, k, attn_mask, key_padding_mask, is_causal)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., L, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v
    return (out, weights) if return_weights else out


def fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Same result as `scaled_dot_product_attention`, computed by PyTorch's fused kernel."""
    _check_qkv(q, k, v)
    plain_causal = is_causal and attn_mask is None and key_padding_mask is None
    if plain_causal and q.shape[-2] == k.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    if plain_causal and q.shape[-2] == 1:  # one new query after the cached keys sees all of them: no mask to build
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    mask = build_attention_mask(q, k, attn_mask, key_padding_mask, is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Share each of the (B, n_kv_heads, S, d) key/value heads among `n_rep` consecutive query heads.

    Query head h reads key/value head h // n_rep: the layout of grouped-query attention (and of
    `transformers`' Llama). Returns (B, n_kv_heads * n_rep, S, d); a view-like expand, no copy when n_rep is 1.
    """
    if n_rep == 1:
        return x
    B, H_kv, S, d = x.shape
    return x[:, :, None].expand(B, H_kv, n_rep, S, d).reshape(B, H_kv * n_rep, S, d)


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer.

    The cache protocol attention relies on: `offset` (the position of the next token: an int, or a (B,) tensor
    when each sequence of the batch has cached a different number of tokens), `update(k, v)` and
    `key_mask(q_len)` (which cached keys each query may see, beyond causality; None here, every row being full).
    """

    k: Tensor | None = None
    v: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    @property
    def offset(self) -> int:
        """Position of the next token: the number of tokens cached."""
        return len(self)

    def key_mask(self, q_len: int) -> Tensor | None:
        """No extra mask: every sequence of the batch has the same cached length."""
        return None

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys/values (B, H, T, d) and return everything cached so far."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=-2)
            self.v = torch.cat([self.v, v], dim=-2)
        return self.k, self.v


class MultiHeadAttention(nn.Module):
    """Multi-head attention: Concat(head_1, ..., head_h) W^O with head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    Self-attention when `key` is None, cross-attention otherwise. The Q, K and V projections are
    stored as one matrix, like `torch.nn.MultiheadAttention.in_proj_weight`: (3·d_model, d_model) for
    ordinary multi-head attention. With `n_kv_heads` < `n_heads` (grouped-query attention; 1 is multi-query
    attention) only `n_kv_heads` key and value heads are projected and cached, each shared by
    n_heads / n_kv_heads query heads, and the matrix is (d_model + 2·n_kv_heads·head_dim, d_model).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        fused: bool = True,
        rotary: nn.Module | None = None,
        n_kv_heads: int | None = None,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model <= 0 or n_heads <= 0 or n_kv_heads <= 0:
            raise ValueError(f"d_model, n_heads and n_kv_heads must be positive, got {d_model}, {n_heads}, "
                             f"{n_kv_heads}")
        if d_model % n_heads != 0:
            raise ValueError(
                f"n_heads={n_heads} does not divide d_model={d_model} (remainder {d_model % n_heads})"
            )
        if n_heads % n_kv_heads != 0:
            raise ValueError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}: every key/value head "
                             f"must serve the same number of query heads")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.n_kv_heads, self.kv_dim = n_kv_heads, n_kv_heads * (d_model // n_heads)
        self.dropout = dropout
        self.fused = fused
        self.rotary = rotary
        self.in_proj = nn.Linear(d_model, d_model + 2 * self.kv_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _split(self, x: Tensor, heads: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, heads, self.head_dim).transpose(1, 2)

    def _project(self, query: Tensor, key: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if key is None:
            return self.in_proj(query).split([self.d_model, self.kv_dim, self.kv_dim], dim=-1)
        w, b = self.in_proj.weight, self.in_proj.bias
        bq, bkv = (None, None) if b is None else (b[: self.d_model], b[self.d_model :])
        q = F.linear(query, w[: self.d_model], bq)
        k, v = F.linear(key, w[self.d_model :], bkv).chunk(2, dim=-1)
        return q, k, v

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        *,
        padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        kv_cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from `query` (B, L, d) to `key` (B, S, d; defaults to `query`).

        padding_mask: key padding mask (B, S_total), True/1 = real token, False/0 = padding, like Hugging
            Face's attention_mask (S_total includes cached keys). torch.nn.MultiheadAttention's
            key_padding_mask is the opposite (True = ignore): pass ~mask there.
        attn_mask: bool mask over (query, key) positions, True = may attend (torch SDPA's convention): shape
            (L, S_total) or (..., L, S_total) broadcastable to (B, H, L, S_total); float (additive) masks are
            rejected. Both masks and `is_causal` combine by logical and.
        is_causal: also hide later keys from each query (queries are the last L of the S_total positions).
        kv_cache: keys/values of earlier steps; updated in place with this step's.
        Returns (output (B, L, d), weights (B, H, L, S_total) or None).
        """
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(f"query must be (batch, length, {self.d_model}), got {tuple(query.shape)}")
        if key is not None and (key.dim() != 3 or key.shape[-1] != self.d_model or key.shape[0] != query.shape[0]):
            raise ValueError(
                f"key must be (batch={query.shape[0]}, length, {self.d_model}), got {tuple(key.shape)}"
            )
        q, k, v = self._project(query, key)
        q, k, v = self._split(q, self.n_heads), self._split(k, self.n_kv_heads), self._split(v, self.n_kv_heads)
        if self.rotary is not None:
            past = 0 if kv_cache is None else kv_cache.offset
            q, k = self.rotary(q, offset=past), self.rotary(k, offset=past)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # the cache holds n_kv_heads heads: GQA's memory saving
            cache_mask = kv_cache.key_mask(q.shape[-2])
            if cache_mask is not None:
                attn_mask = cache_mask if attn_mask is None else attn_mask & cache_mask
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        p = self.dropout if self.training else 0.0
        weights = None
        if return_weights or not self.fused:
            out = scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, key_padding_mask=padding_mask, is_causal=is_causal,
                dropout_p=p, return_weights=return_weights,
            )
            if return_weights:
                out, weights = out
        else:
            out = fused_attention(
                q, k, v, attn_mask=attn_mask, key_padding_mask=padding_mask, is_causal=is_causal, dropout_p=p
            )
        B, _, L, _ = out.shape
        out = out.transpose(1, 2).reshape(B, L, self.d_model)
        return self.out_proj(out), weights
