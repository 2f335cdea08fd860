"""Text generation with a decoder-only model: greedy, temperature, top-k, top-p, repetition penalty, KV cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class GenerationConfig:
    """How to pick each next token."""

    max_new_tokens: int = 50
    do_sample: bool = False  # False: greedy (argmax); True: sample from the filtered distribution
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the sequence (CTRL, Keskar et al. 2019)
    stop_ids: Sequence[int] = field(default_factory=tuple)
    use_cache: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use do_sample=False for greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def apply_repetition_penalty(logits: Tensor, previous: Tensor, penalty: float) -> Tensor:
    """Divide positive (multiply negative) logits of tokens already in `previous` (B, T) by `penalty`."""
    if penalty == 1.0:
        return logits
    seen = torch.gather(logits, 1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, previous, seen)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability reaches top_p."""
    if top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
        # drop a token when the tokens ranked above it already reach top_p, i.e. when it and every token ranked
        # below it hold at most 1 - top_p; summing from the smallest keeps tiny tail masses exact in float32
        tail = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = tail <= 1.0 - top_p
        drop_sorted[..., -1] = False  # the top token always stays
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: Tensor, config: GenerationConfig, generator: torch.Generator | None = None) -> Tensor:
    """Pick one token id per row of `logits` (B, vocab) as the config says."""
    if not config.do_sample:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / config.temperature, config.top_k, config.top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def iter_tokens(model: nn.Module, input_ids: Tensor, config: GenerationConfig | None = None,
                **overrides) -> Iterator[Tensor]:
    """Continue each prompt row of `input_ids` (B, T, no padding), yielding the (B,) next token ids one step at a
    time (for streaming); stops after max_new_tokens or when every row produced a stop token, and rows already
    stopped yield the model's pad id. Each step runs under `torch.inference_mode`; the model is put back in its
    training mode when the iteration ends (or is abandoned)."""
    config = config or GenerationConfig()
    if overrides:
        config = GenerationConfig(**{**config.__dict__, **overrides})
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}")
    max_len = model.cfg.max_len
    total = input_ids.shape[1] + config.max_new_tokens
    if config.use_cache and total > max_len:
        raise ValueError(
            f"prompt of {input_ids.shape[1]} + {config.max_new_tokens} new tokens exceeds the context "
            f"max_len={max_len}; shorten them or pass use_cache=False to slide the context window"
        )
    return _token_steps(model, input_ids, config)


def _token_steps(model: nn.Module, input_ids: Tensor, config: GenerationConfig) -> Iterator[Tensor]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    stop = torch.tensor(list(config.stop_ids), dtype=torch.long, device=device)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    cache = model.new_cache() if config.use_cache else None
    step_input = ids
    try:
        for _ in range(config.max_new_tokens):
            with torch.inference_mode():
                if cache is None:
                    step_input = ids[:, -model.cfg.max_len:]
                logits = model(step_input, kv_cache=cache).logits[:, -1, :].float()
                logits = apply_repetition_penalty(logits, ids, config.repetition_penalty)
                token = next_token(logits, config, generator)
                token = torch.where(finished, torch.full_like(token, model.cfg.pad_token_id), token)
                ids = torch.cat([ids, token.unsqueeze(1)], dim=1)
                finished |= torch.isin(token, stop)
                step_input = token.unsqueeze(1)
            yield token.clone()  # outside inference mode: an ordinary tensor
            if finished.all():
                break
    finally:
        model.train(was_training)


def generate(model: nn.Module, input_ids: Tensor, config: GenerationConfig | None = None, **overrides) -> Tensor:
    """Continue each prompt row of `input_ids` (B, T, no padding); returns (B, T + new) token ids.

    Rows that produced a stop token are padded with the model's pad id afterwards. Without the KV
    cache, prompts longer than the context keep only their last `max_len` tokens as context.
    Decoding runs under `torch.inference_mode` (less per-operation bookkeeping than `no_grad`); the
    returned ids are an ordinary tensor.
    """
    steps = list(iter_tokens(model, input_ids, config, **overrides))
    if not steps:
        return input_ids.clone()
    return torch.cat([input_ids.to(steps[0].device), torch.stack(steps, dim=1)], dim=1)


# --- measuring generated text ---------------------------------------------------------------------


def _ngrams(tokens: Sequence, n: int) -> list[tuple]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[Sequence], n: int) -> float:
    """Distinct-n over a set of samples: unique n-grams / all n-grams (0.0 when there are none)."""
    grams = [g for s in samples for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(tokens: Sequence, n: int) -> float:
    """Share of a sample's n-grams that already occurred earlier in the same sample (0.0 when it has none)."""
    grams = _ngrams(tokens, n)
    seen: set[tuple] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams) if grams else 0.0


@torch.no_grad()
def continuation_logprobs(model: nn.Module, ids: Tensor, prompt_len: int, pad_id: int | None = None) -> Tensor:
    """Mean log-probability per token of each row's continuation (positions >= prompt_len, no pads) under `model`."""
    if ids.dim() != 2 or not 0 < prompt_len < ids.shape[1]:
        raise ValueError(f"need (batch, length) ids with 0 < prompt_len < length, got {tuple(ids.shape)}, {prompt_len}")
    if ids.shape[1] > model.cfg.max_len:
        raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds the context max_len={model.cfg.max_len}")
    pad = model.cfg.pad_token_id if pad_id is None else pad_id
    was_training = model.training
    model.eval()
    try:
        logits = model(ids).logits[:, :-1].float()
    finally:
        model.train(was_training)
    targets = ids[:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    keep = targets != pad
    keep[:, : prompt_len - 1] = False
    return (logp * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


def kv_cache_bytes(n_layers: int, batch: int, length: int, d_model: int, bytes_per_value: int = 4, *,
                   n_heads: int | None = None, n_kv_heads: int | None = None) -> int:
    """Memory of a KV cache: keys and values (2) per layer, batch, position and key/value width.

    The width is d_model for multi-head attention; with grouped-query attention (`n_kv_heads` of `n_heads`
    heads keep keys and values) it is d_model · n_kv_heads / n_heads.
    """
    width = d_model
    if n_kv_heads is not None:
        if n_heads is None or n_heads % n_kv_heads or d_model % n_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} needs n_heads (given: {n_heads}) that it divides and that "
                             f"divides d_model={d_model}")
        width = d_model // n_heads * n_kv_heads
    return 2 * n_layers * batch * length * width * bytes_per_value


def cache_nbytes(cache: Sequence) -> int:
    """Bytes actually held by the key and value tensors of a model's KV cache (list of `KVCache`)."""
    return sum(t.numel() * t.element_size() for layer in cache for t in (layer.k, layer.v) if t is not None)
