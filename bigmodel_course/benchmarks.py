"""Benchmarks run by `bigmodel-course bench`: each prints ratios against a reference measured in the same run."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .attention import MultiHeadAttention
from .timing import RatioSpread, percentiles, ratio_spread, timed


@dataclass
class BenchResult:
    """Median time of one contender and its ratio to the reference."""

    name: str
    median_ms: float
    ratio: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], None]], device: torch.device, rounds: int, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so machine noise hits all alike."""
    samples = time_interleaved_samples(fns, device, rounds, warmup)
    return {name: statistics.median(ts) for name, ts in samples.items()}


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
    """Training-step time (forward, loss, backward, AdamW): our GPT vs transformers' GPT2LMHeadModel, same weights."""
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


@dataclass
class CompressionRow:
    """One compressed variant of the sentiment classifier: weights file size, CPU latency, test accuracy."""

    name: str
    size_mb: float
    ms_batch1: float
    ms_batch32: float
    accuracy: float
    # interquartile range of the per-round speedup over the first (reference) model: (q25, q75), batch 1 and 32
    speedup1_iqr: tuple[float, float] | None = None
    speedup32_iqr: tuple[float, float] | None = None


def latency_batches(tokenizer, texts: list[str], max_len: int, batch_size: int = 32, seed: int = 0) -> dict[str, dict]:
    """Timing inputs: the text of median length alone ("batch1"), and `batch_size` texts drawn with `seed`, padded
    per batch ("batch{batch_size}"); with batch_size 1 there is only the median text."""
    from .data import ClassificationDataset

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(texts) < batch_size:
        raise ValueError(f"need at least {batch_size} texts for the batch, got {len(texts)}")
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    median = [texts[order[len(order) // 2]]]
    drawn = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:batch_size].tolist()
    out = {}
    wanted = [("batch1", median)] + ([(f"batch{batch_size}", [texts[i] for i in drawn])] if batch_size > 1 else [])
    for name, chosen in wanted:
        ds = ClassificationDataset(chosen, [0] * len(chosen), tokenizer, max_len)
        batch = ds.collate([ds[i] for i in range(len(ds))])
        batch.pop("labels")
        out[name] = batch
    return out


def bench_compression(profile: str | None = None, rounds: int = 30, progress: bool = False,
                      sparsity: float | None = None, ffn_keep: float = 0.5) -> list[CompressionRow]:
    """The fine-tuned sentiment classifier (teacher) and its compressed variants, measured in one run on the CPU:
    size of the saved safetensors file, median latency at batch 1 and 32 (interleaved), the interquartile range of
    the per-round speedup over the teacher, fixed-test-split accuracy.

    sparsity None (default): the magnitude-pruned variant zeroes as many parameters as the FFN-neuron pruning
    removes, so the two kinds of pruning are compared at an equal share of the model's parameters.
    """
    import tempfile
    from pathlib import Path

    from .compression import (
        DISTILL_SPECS,
        classifier_accuracy,
        file_size_mb,
        load_student,
        magnitude_amount_for_share,
        magnitude_prune,
        prune_ffn_neurons,
        pruned_share,
        quantize_int8,
        save_weights,
    )
    from .data import review_splits
    from .finetuning import load_sentiment_classifier
    from .utils import get_profile

    profile = get_profile(profile).name
    teacher = load_sentiment_classifier("gpt", profile, progress=progress)
    model, tokenizer, max_len = teacher.model.cpu().eval(), teacher.tokenizer, teacher.model.cfg.max_len
    students = {kind: load_student(kind, teacher, profile, progress=progress).model
                for kind in ("distilled", "control")}
    ffn_pruned = prune_ffn_neurons(model, ffn_keep)
    ffn_share = pruned_share(model, ffn_pruned)
    amount = magnitude_amount_for_share(model, ffn_share) if sparsity is None else sparsity
    magnitude = magnitude_prune(model, amount)
    variants = {
        "teacher fp32": model,
        f"magnitude pruned {pruned_share(model, magnitude):.1%} params": magnitude,
        f"FFN neurons pruned {1 - ffn_keep:.0%} ({ffn_share:.1%} params)": ffn_pruned,
        "int8 Linear only": quantize_int8(model, embeddings=False),
        "int8 Linear + embeddings": quantize_int8(model),
        "distilled student": students["distilled"],
        "student w/o distillation": students["control"],
    }
    splits = review_splits(seed=0)
    n_test = DISTILL_SPECS[profile].n_test
    test_texts, test_labels = splits.test_texts[:n_test], splits.test_labels[:n_test]
    inputs = latency_batches(tokenizer, test_texts, max_len)
    samples = {}
    # one interleaved loop per batch size: a 1-review call timed right after a 32-review call runs with cold caches,
    # and mixing the sizes made the single-review speed-ups depend on which model came after a big call
    for b, x in inputs.items():
        fns = {(name, b): (lambda m=m, x=x: m(**x)) for name, m in variants.items()}
        with torch.no_grad():
            samples.update(time_interleaved_samples(fns, torch.device("cpu"), rounds))
    medians = {key: statistics.median(ts) for key, ts in samples.items()}
    ref = next(iter(variants))

    def speedup_iqr(name: str, batch: str) -> tuple[float, float]:
        """Quartiles of the teacher's time over this model's time, round by round (both timed in the same round)."""
        spread = ratio_spread(samples[(ref, batch)], samples[(name, batch)])
        return (spread.q1, spread.q3)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, m) in enumerate(variants.items()):
            size = file_size_mb(save_weights(m, Path(tmp) / f"{i}.safetensors"))
            acc = classifier_accuracy(m, tokenizer, test_texts, test_labels, max_len)
            rows.append(CompressionRow(name, size, 1e3 * medians[(name, "batch1")], 1e3 * medians[(name, "batch32")],
                                       acc, speedup_iqr(name, "batch1"), speedup_iqr(name, "batch32")))
    return rows


def format_compression(rows: list[CompressionRow]) -> str:
    """A plain-text table of compression rows with ratios against the first row (the float model)."""
    ref = rows[0]
    lines = [f"{'model':<40}{'MB':>7}{'smaller':>9}{'ms b1':>9}{'faster':>8}{'ms b32':>9}{'faster':>8}"
             f"{'accuracy':>10}{'Δ points':>10}"]
    for r in rows:
        lines.append(f"{r.name:<40}{r.size_mb:>7.2f}{ref.size_mb / r.size_mb:>8.2f}x{r.ms_batch1:>9.2f}"
                     f"{ref.ms_batch1 / r.ms_batch1:>7.2f}x{r.ms_batch32:>9.2f}{ref.ms_batch32 / r.ms_batch32:>7.2f}x"
                     f"{r.accuracy:>10.2%}{100 * (r.accuracy - ref.accuracy):>+10.2f}")
    return "\n".join(lines)


@dataclass
class GenerateBench:
    """Greedy decoding time with and without the KV cache, and the model it was measured on."""

    results: list[BenchResult]
    prompt_len: int
    new_tokens: int
    n_params: int
    cache_mb: float
    speedup: RatioSpread | None = None  # round-by-round uncached / cached time


def bench_generate(
    n_layers: int = 4, width: int = 128, heads: int = 4, vocab: int = 4736, prompt_len: int = 16,
    new_tokens: int = 256, rounds: int = 5, device: torch.device | None = None,
) -> GenerateBench:
    """Greedy generation of `new_tokens` after a random prompt, uncached vs KV-cached, randomly initialised GPT."""
    from .generation import cache_nbytes, generate
    from .transformer import GPT, GPTConfig

    if prompt_len < 1 or new_tokens < 1:
        raise ValueError(f"prompt_len and new_tokens must be >= 1, got {prompt_len} and {new_tokens}")
    device = device or torch.device("cpu")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=vocab, max_len=prompt_len + new_tokens, d_model=width, n_heads=heads,
                    n_layers=n_layers, dropout=0.0, attn_dropout=0.0)
    model = GPT(cfg).to(device).eval()
    prompt = torch.randint(1, vocab, (1, prompt_len), device=device)
    outputs = {}

    def run(use_cache: bool) -> Callable[[], None]:
        def step() -> None:
            outputs[use_cache] = generate(model, prompt, max_new_tokens=new_tokens, use_cache=use_cache)
        return step

    samples = time_interleaved_samples({"without KV cache": run(False), "with KV cache": run(True)}, device, rounds,
                                       warmup=1)
    medians = {name: statistics.median(ts) for name, ts in samples.items()}
    if not torch.equal(outputs[True], outputs[False]):
        raise RuntimeError("cached and uncached greedy outputs differ")
    cache = model.new_cache()
    with torch.no_grad():
        model(outputs[True][:, :-1], kv_cache=cache)
    ref = medians["without KV cache"]
    results = [BenchResult(name, 1e3 * t, t / ref) for name, t in medians.items()]
    n_params = sum(p.numel() for p in model.parameters())
    return GenerateBench(results, prompt_len, new_tokens, n_params, cache_nbytes(cache) / 2**20,
                         ratio_spread(samples["without KV cache"], samples["with KV cache"]))


def format_generate(bench: GenerateBench) -> str:
    """A plain-text table of the generation benchmark with the KV cache's speed-up."""
    plain, cached = bench.results
    lines = [f"{'decoding':<20}{'median ms':>12}{'ms/token':>10}{'speed-up':>10}"]
    for r in bench.results:
        lines.append(f"{r.name:<20}{r.median_ms:>12.1f}{r.median_ms / bench.new_tokens:>10.2f}"
                     f"{plain.median_ms / r.median_ms:>9.2f}x")
    spread = (f", round-by-round IQR {bench.speedup.q1:.2f}-{bench.speedup.q3:.2f}x"
              if bench.speedup is not None else "")
    lines.append(f"KV cache speed-up for {bench.new_tokens} new tokens: {plain.median_ms / cached.median_ms:.2f}x"
                 f"{spread} (cache holds {bench.cache_mb:.2f} MiB at the end)")
    return "\n".join(lines)


def time_interleaved_samples(fns: dict[str, Callable[[], None]], device: torch.device, rounds: int,
                             warmup: int = 3) -> dict[str, list[float]]:
    """Every call's seconds for each function, timed round-robin after `warmup` calls each (for percentiles)."""
    if not isinstance(rounds, int) or rounds <= 0:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, sync=lambda: _sync(device))[1])
    return times


@dataclass
class LatencyStats:
    """Latency percentiles of one call (a batch of frames) and the frames per second it sustains."""

    name: str
    batch: int
    p50_ms: float
    p99_ms: float
    fps: float  # frames per second at the median latency: batch / p50


def latency_stats(name: str, seconds: list[float], batch: int = 1) -> LatencyStats:
    """p50 and p99 (numpy.percentile, linear interpolation) of per-call seconds, and frames per second."""
    if not seconds:
        raise ValueError("no timings")
    if not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    p50, p99 = percentiles(seconds, (50, 99))
    return LatencyStats(name, batch, 1e3 * p50, 1e3 * p99, batch / p50)
