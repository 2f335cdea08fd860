"""Benchmark of the generation engine: one request at a time vs static batching vs continuous batching.

Closed loop, as a load generator measures a server: `concurrency` clients each send a request, wait for its
last token and send the next, until the workload is done. Every policy serves the same requests (mixed prompt
and reply lengths, greedy decoding without stop tokens, so each reply has exactly its `max_tokens`) in the same
process, one after the other, so the ratios compare like with like on a noisy machine.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from .engine import Engine, SamplingParams

POLICIES = {"one at a time": dict(policy="continuous", batch=1), "static batching": dict(policy="static"),
            "continuous batching": dict(policy="continuous")}


@dataclass(frozen=True)
class LLMServeRow:
    """One policy at one concurrency."""

    policy: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time."""
        return self.tokens / self.seconds


def workload(n: int, seed: int = 0, prompt: tuple[int, int] = (8, 48), reply: tuple[int, int] = (8, 64),
             vocab: int = 4736) -> list[tuple[list[int], int]]:
    """`n` (prompt ids, max_tokens) pairs with lengths drawn uniformly from the given ranges."""
    rng = random.Random(seed)
    return [([rng.randrange(1, vocab) for _ in range(rng.randint(*prompt))], rng.randint(*reply)) for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation."""
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q / 100))


def closed_loop(engine: Engine, requests: list[tuple[list[int], int]], concurrency: int) -> tuple[float, list]:
    """Serve `requests` with `concurrency` clients each keeping one request in flight; (seconds, finished seqs)."""
    if engine.finished.maxlen is not None and engine.finished.maxlen < len(requests):
        raise ValueError(f"the engine keeps {engine.finished.maxlen} finished requests; the workload has "
                         f"{len(requests)}")
    todo = deque(requests)
    in_flight = 0
    start = time.perf_counter()
    while todo or in_flight:
        while todo and in_flight < concurrency:
            prompt, max_tokens = todo.popleft()
            engine.submit(prompt, SamplingParams(max_tokens=max_tokens))
            in_flight += 1
        in_flight -= sum(event.finish_reason is not None for event in engine.step())
    return time.perf_counter() - start, list(engine.finished)


def bench_llm_serve(model: nn.Module, concurrencies: tuple[int, ...] = (1, 4, 8, 16), requests: int = 32,
                    seed: int = 0) -> list[LLMServeRow]:
    """Tokens/s, TTFT and TPOT of each policy at each concurrency, on the same `requests` requests."""
    if requests < 1 or not concurrencies or min(concurrencies) < 1:
        raise ValueError(f"need at least one request and positive concurrencies, got {requests}, {concurrencies}")
    work = workload(requests, seed, vocab=model.cfg.vocab_size,
                    prompt=(8, model.cfg.max_len // 3), reply=(8, model.cfg.max_len // 2))
    Engine(model, max_batch_size=2).run([p for p, _ in work[:2]], SamplingParams(max_tokens=4))  # warm-up
    rows = []
    for c in concurrencies:
        for name, how in POLICIES.items():
            engine = Engine(model, max_batch_size=how.get("batch", c), policy=how["policy"], history=requests)
            seconds, seqs = closed_loop(engine, work, c)
            tpots = [s.tpot for s in seqs if s.tpot is not None]
            ttfts = [s.ttft for s in seqs]
            rows.append(LLMServeRow(name, c, len(seqs), sum(len(s.generated) for s in seqs), seconds,
                                    percentile(ttfts, 50), percentile(ttfts, 99),
                                    statistics.median(tpots) if tpots else float("nan")))
    return rows


def format_llm_serve(rows: list[LLMServeRow]) -> str:
    """A plain-text table: per concurrency, each policy's throughput (and its ratio to one at a time) and latency."""
    lines = [f"{'streams':>7}  {'policy':<20}{'tokens/s':>10}{'× one':>7}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}"
             f"{'TPOT p50 ms':>13}"]
    for c in sorted({r.concurrency for r in rows}):
        group = [r for r in rows if r.concurrency == c]
        base = next(r for r in group if r.policy == "one at a time").tokens_per_s
        for r in group:
            lines.append(f"{c:>7}  {r.policy:<20}{r.tokens_per_s:>10.0f}{r.tokens_per_s / base:>7.2f}"
                         f"{1e3 * r.ttft_p50:>13.1f}{1e3 * r.ttft_p99:>13.1f}{1e3 * r.tpot_p50:>13.2f}")
    return "\n".join(lines)
