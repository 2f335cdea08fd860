"""Benchmarks run by `bigmodel-course bench`: each prints ratios against a reference measured in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .attention import MultiHeadAttention


@dataclass
class BenchResult:
    """Median time of one contender and its ratio to the reference."""

    name: str
    median_ms: float
    ratio: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], None]], device: torch.device, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_attention(
    batch: int = 8, length: int = 256, width: int = 256, heads: int = 8,
    rounds: int = 20, device: torch.device | None = None, causal: bool = False,
) -> list[BenchResult]:
    """Forward+backward time of the formula path, our fused MultiHeadAttention and torch.nn.MultiheadAttention."""
    device = device or torch.device("cpu")
    torch.manual_seed(0)
    formula = MultiHeadAttention(width, heads, fused=False).to(device)
    fused = MultiHeadAttention(width, heads, fused=True).to(device)
    fused.load_state_dict(formula.state_dict())
    reference = nn.MultiheadAttention(width, heads, batch_first=True).to(device)
    x = torch.randn(batch, length, width, device=device, requires_grad=True)
    causal_bool = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)

    def ours(module: MultiHeadAttention) -> Callable[[], None]:
        def step() -> None:
            out, _ = module(x, is_causal=causal)
            out.sum().backward()
        return step

    def torch_mha() -> None:
        mask = causal_bool if causal else None
        out, _ = reference(x, x, x, need_weights=False, attn_mask=mask, is_causal=causal)
        out.sum().backward()

    medians = time_interleaved(
        {"torch.nn.MultiheadAttention": torch_mha, "fused MultiHeadAttention": ours(fused),
         "formula path": ours(formula)},
        device, rounds,
    )
    ref = medians["torch.nn.MultiheadAttention"]
    return [BenchResult(name, 1e3 * t, t / ref) for name, t in medians.items()]


def bench_gpt(
    n_layers: int = 4, width: int = 128, heads: int = 4, context: int = 128, vocab: int = 5000,
    batch: int = 16, rounds: int = 20, device: torch.device | None = None,
) -> list[BenchResult]:
    """Training-step time (forward, loss, backward, AdamW) of our GPT and `transformers` GPT2LMHeadModel, same weights."""
    from .interop import gpt_to_hf
    from .transformer import GPT, GPTConfig

    device = device or torch.device("cpu")
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=vocab, max_len=context, d_model=width, n_heads=heads, n_layers=n_layers))
    theirs = gpt_to_hf(ours)
    ids = torch.randint(0, vocab, (batch, context), device=device)

    def step_fn(model: nn.Module, hf: bool) -> Callable[[], None]:
        model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            out = model(input_ids=ids, labels=ids) if hf else model(ids, labels=ids)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    medians = time_interleaved(
        {"transformers GPT2LMHeadModel": step_fn(theirs, True), "bigmodel_course GPT": step_fn(ours, False)},
        device, rounds,
    )
    ref = medians["transformers GPT2LMHeadModel"]
    return [BenchResult(name, 1e3 * t, t / ref) for name, t in medians.items()]


def format_results(results: list[BenchResult], title: str) -> str:
    """A plain-text table of benchmark results."""
    lines = [title, f"{'contender':<30}{'median ms':>12}{'ratio':>10}"]
    lines += [f"{r.name:<30}{r.median_ms:>12.2f}{r.ratio:>9.2f}x" for r in results]
    return "\n".join(lines)
