"""Benchmark of the generation engine: one request at a time vs static batching vs continuous batching.

Closed loop, as a load generator measures a server: `concurrency` clients each send a request, wait for its
last token and send the next, until the workload is done. Every policy serves the same requests (mixed prompt
and reply lengths, greedy decoding without stop tokens, so each reply has exactly its `max_tokens`) in the same
process, one after the other, so the ratios compare like with like on a noisy machine.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .engine import Engine, Event, SamplingParams

POLICIES = {"one at a time": dict(policy="continuous", batch=1), "static batching": dict(policy="static"),
            "continuous batching": dict(policy="continuous")}


@dataclass(frozen=True)
class LLMServeRow:
    """One policy at one concurrency."""

    policy: str
    concurrency: int
    round: int
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


def closed_loop(engine: Engine, requests: list[tuple[list[int], int]], concurrency: int,
                on_step: Callable[[Engine, list[Event]], None] | None = None) -> tuple[float, list]:
    """Serve `requests` with `concurrency` clients each keeping one request in flight; (seconds, finished seqs).
    `on_step(engine, events)` is called after every iteration (to trace the queue, say)."""
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
        events = engine.step()
        in_flight -= sum(event.finish_reason is not None for event in events)
        if on_step is not None:
            on_step(engine, events)
    return time.perf_counter() - start, list(engine.finished)


def llm_workload(model: nn.Module, requests: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """The benchmark's requests for `model`: prompts of 8 to a third of its context, replies of 8 to half of it."""
    return workload(requests, seed, vocab=model.cfg.vocab_size, prompt=(8, model.cfg.max_len // 3),
                    reply=(8, model.cfg.max_len // 2))


def bench_llm_serve(model: nn.Module, concurrencies: tuple[int, ...] = (1, 4, 8, 16), requests: int = 32,
                    rounds: int = 1, seed: int = 0) -> list[LLMServeRow]:
    """Tokens/s, TTFT and TPOT of each policy at each concurrency, on the same `requests` requests; `rounds`
    repetitions, each round running every (concurrency, policy) once, so slow spells of the machine hit all."""
    if requests < 1 or rounds < 1 or not concurrencies or min(concurrencies) < 1:
        raise ValueError(f"need at least one request and round and positive concurrencies, got {requests}, "
                         f"{rounds}, {concurrencies}")
    work = llm_workload(model, requests, seed)
    Engine(model, max_batch_size=2).run([p for p, _ in work[:2]], SamplingParams(max_tokens=4))  # warm-up
    rows = []
    for r in range(rounds):
        for c in concurrencies:
            for name, how in POLICIES.items():
                engine = Engine(model, max_batch_size=how.get("batch", c), policy=how["policy"], history=requests)
                seconds, seqs = closed_loop(engine, work, c)
                tpots = [s.tpot for s in seqs if s.tpot is not None]
                ttfts = [s.ttft for s in seqs]
                rows.append(LLMServeRow(name, c, r, len(seqs), sum(len(s.generated) for s in seqs), seconds,
                                        percentile(ttfts, 50), percentile(ttfts, 99),
                                        statistics.median(tpots) if tpots else float("nan")))
    return rows


def timeline(engine: Engine, requests: list[tuple[list[int], int]], concurrency: int) -> list[tuple[int, int, int]]:
    """Serve `requests` in a closed loop like `closed_loop` and record (iteration, slot, request index) for every
    slot busy after each iteration: the picture of how a policy fills its slots."""
    todo = deque(enumerate(requests))
    index: dict[str, int] = {}
    cells, in_flight = [], 0
    while todo or in_flight:
        while todo and in_flight < concurrency:
            i, (prompt, max_tokens) = todo.popleft()
            index[engine.submit(prompt, SamplingParams(max_tokens=max_tokens))] = i
            in_flight += 1
        events = engine.step()
        in_flight -= sum(e.finish_reason is not None for e in events)
        ended = {e.request_id for e in events if e.finish_reason is not None}
        worked = [*engine.running.values(), *(s for s in engine.finished if s.request_id in ended)]
        cells += [(engine.steps, s.slot, index[s.request_id]) for s in worked]
    return cells


def summarise(rows: list[LLMServeRow]) -> list[dict]:
    """Per (concurrency, policy): medians over rounds of tokens/s, TTFT p50/p99 and TPOT p50, and the per-round
    ratios to one at a time (throughput) and to static batching (TTFT p50) as (median, min, max)."""
    out = []
    for c in sorted({r.concurrency for r in rows}):
        for policy in POLICIES:
            mine = [r for r in rows if r.concurrency == c and r.policy == policy]
            if not mine:
                continue
            def ratio(other: str, value) -> tuple[float, float, float]:
                theirs = {r.round: r for r in rows if r.concurrency == c and r.policy == other}
                vals = [value(r) / value(theirs[r.round]) for r in mine if r.round in theirs]
                return (statistics.median(vals), min(vals), max(vals)) if vals else (math.nan,) * 3
            out.append({"concurrency": c, "policy": policy, "rounds": len(mine),
                        "tokens_per_s": statistics.median(r.tokens_per_s for r in mine),
                        "ttft_p50": statistics.median(r.ttft_p50 for r in mine),
                        "ttft_p99": statistics.median(r.ttft_p99 for r in mine),
                        "tpot_p50": statistics.median(r.tpot_p50 for r in mine),
                        "speedup": ratio("one at a time", lambda r: r.tokens_per_s),
                        "ttft_vs_static": ratio("static batching", lambda r: r.ttft_p50)})
    return out


def format_llm_serve(rows: list[LLMServeRow]) -> str:
    """A plain-text table: per concurrency and policy, medians over rounds and the throughput ratio to one at a time
    with its range over rounds."""
    lines = [f"{'streams':>7}  {'policy':<20}{'tokens/s':>10}{'× one (min–max)':>20}{'TTFT p50 ms':>13}"
             f"{'TTFT p99 ms':>13}{'TPOT p50 ms':>13}"]
    for s in summarise(rows):
        mid, lo, hi = s["speedup"]
        lines.append(f"{s['concurrency']:>7}  {s['policy']:<20}{s['tokens_per_s']:>10.0f}"
                     f"{f'{mid:.2f} ({lo:.2f}–{hi:.2f})':>20}{1e3 * s['ttft_p50']:>13.1f}{1e3 * s['ttft_p99']:>13.1f}"
                     f"{1e3 * s['tpot_p50']:>13.2f}")
    return "\n".join(lines)
