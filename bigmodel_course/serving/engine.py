"""Continuous batching for a decoder language model: an iteration-level scheduler over per-sequence KV slots.

Each `Engine.step()` is one iteration: it admits waiting requests into free slots (running each new prompt
through the model once, the *prefill*, which also yields its first token) and then advances every running
sequence by one token in a single batched forward pass (the *decode* step). A finished or cancelled sequence
frees its slot at once, and the next waiting request takes it in the following iteration — the idea of Orca
(Yu et al., OSDI 2022) that vLLM, SGLang and TGI build on. The `static` policy, for comparison, admits a new
batch only when every sequence of the previous one has finished.

Keys and values live in one preallocated tensor per engine, (layers, slots, kv heads, max_len, head width);
each slot holds one sequence, and the attention of a batch masks every key past a sequence's own length.

    engine = Engine(model, max_batch_size=8)
    rid = engine.submit(prompt_ids, SamplingParams(max_tokens=32, stop_ids=(end_id,)))
    while engine.has_work():
        for event in engine.step():
            print(event.request_id, event.tokens, event.finish_reason)
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..generation import GenerationConfig, next_token

POLICIES = ("continuous", "static")
FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded (OpenAI's names: temperature 0 is greedy)."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop_ids: tuple[int, ...] = ()  # tokens that end the reply (an end-of-turn token); never returned
    stop_sequences: tuple[tuple[int, ...], ...] = ()  # token sequences that end the reply; never returned
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError("stop sequences must not be empty")

    def generation_config(self) -> GenerationConfig:
        """The per-token choice as `generation.next_token` makes it."""
        if self.temperature == 0.0:
            return GenerationConfig(do_sample=False)
        return GenerationConfig(do_sample=True, temperature=self.temperature, top_p=self.top_p)


@dataclass
class Event:
    """What one iteration produced for one request: tokens released to the client, and the finish reason."""

    request_id: str
    tokens: list[int]
    finish_reason: str | None = None  # "stop", "length" or "cancelled" once the request is done


@dataclass
class Sequence:
    """A request's state: its prompt, the tokens generated so far and the times the benchmark reads."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    submitted: float
    generated: list[int] = field(default_factory=list)
    released: int = 0  # how many generated tokens the client has received
    slot: int | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    config: GenerationConfig | None = None

    @property
    def reserved_tokens(self) -> int:
        """The most KV positions this sequence can ever occupy."""
        return len(self.prompt) + self.params.max_tokens

    @property
    def ttft(self) -> float | None:
        """Time to first token: from submission to the first sampled token (seconds)."""
        return None if self.first_token_at is None else self.first_token_at - self.submitted

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (seconds); None with fewer than two tokens."""
        n = len(self.generated)
        if self.finished_at is None or self.first_token_at is None or n < 2:
            return None
        return (self.finished_at - self.first_token_at) / (n - 1)


class SlotKVCache:
    """Preallocated keys and values for `slots` sequences of up to `max_len` tokens, and each slot's length."""

    def __init__(self, n_layers: int, slots: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (n_layers, slots, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)

    def views(self, slots: Tensor) -> list[_SlotView]:
        """One cache view per layer over the given slots (the rows of the next forward pass)."""
        offsets = self.lengths[slots].clone()
        return [_SlotView(self, layer, slots, offsets) for layer in range(self.k.shape[0])]

    def nbytes(self) -> int:
        """Bytes held by the keys and values."""
        return self.k.numel() * self.k.element_size() * 2


class _SlotView:
    """One layer's KV cache for a batch of slots whose sequences have cached different numbers of tokens
    (the cache protocol of `attention.KVCache`: offset, update, key_mask)."""

    def __init__(self, store: SlotKVCache, layer: int, slots: Tensor, offsets: Tensor) -> None:
        self.store, self.layer, self.slots, self.offset = store, layer, slots, offsets

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this step's keys/values (B, H_kv, T, d) after each slot's cached ones; return (B, H_kv, S, d) with
        S the longest sequence of the batch (shorter rows are masked by `key_mask`)."""
        T = k.shape[-2]
        K, V = self.store.k[self.layer], self.store.v[self.layer]
        if T == 1:
            K[self.slots, :, self.offset] = k[:, :, 0]
            V[self.slots, :, self.offset] = v[:, :, 0]
        else:
            for row, (slot, start) in enumerate(zip(self.slots.tolist(), self.offset.tolist())):
                K[slot, :, start:start + T] = k[row]
                V[slot, :, start:start + T] = v[row]
        S = int(self.offset.max()) + T
        return K[self.slots, :, :S], V[self.slots, :, :S]

    def key_mask(self, q_len: int) -> Tensor:
        """(B, 1, q_len, S): row b sees its own offset[b] + q_len keys; causality among new tokens comes on top."""
        S = int(self.offset.max()) + q_len
        keys = torch.arange(S, device=self.offset.device)
        B = len(self.slots)
        return (keys < (self.offset + q_len).unsqueeze(1)).view(B, 1, 1, S).expand(B, 1, q_len, S)


class Engine:
    """Iteration-level scheduler: admit, prefill and decode requests over a fixed number of KV slots.

    max_batch_size: KV slots, the most sequences decoded together.
    max_total_tokens: the most KV positions the running sequences may reserve (prompt + max_tokens each, as TGI
        reserves them); None: no limit beyond the slots.
    policy: "continuous" admits a request whenever a slot is free; "static" only when the batch is empty.
    clock: the time function the per-request timings use.
    history: how many finished sequences `finished` keeps (with their timings) for inspection and benchmarks.
    """

    def __init__(self, model: nn.Module, max_batch_size: int = 8, max_total_tokens: int | None = None,
                 policy: str = "continuous", clock=time.perf_counter, history: int = 4096) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
        if max_total_tokens is not None and max_total_tokens < 2:
            raise ValueError(f"max_total_tokens must be at least 2, got {max_total_tokens}")
        cfg = model.cfg
        self.model, self.cfg, self.policy, self.clock = model.eval(), cfg, policy, clock
        self.max_batch_size, self.max_total_tokens = max_batch_size, max_total_tokens
        param = next(model.parameters())
        self.cache = SlotKVCache(cfg.n_layers, max_batch_size, cfg.n_kv_heads, cfg.max_len, cfg.head_dim,
                                 dtype=param.dtype, device=param.device)
        self.device = param.device
        self.waiting: deque[Sequence] = deque()
        self.running: dict[int, Sequence] = {}
        self.free = list(range(max_batch_size))
        self.finished: deque[Sequence] = deque(maxlen=history)
        self._ids = itertools.count()
        self.steps = 0

    # ------------------------------------------------------------------ requests

    def submit(self, prompt: list[int], params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a request; returns its id. The prompt must leave room for at least one new token."""
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        if len(prompt) >= self.cfg.max_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens; the model's context holds {self.cfg.max_len}, "
                             "leaving no room for a reply")
        if min(prompt) < 0 or max(prompt) >= self.cfg.vocab_size:
            raise ValueError(f"prompt token ids must lie in [0, {self.cfg.vocab_size})")
        if self.max_total_tokens is not None and len(prompt) + 1 > self.max_total_tokens:
            raise ValueError(f"the prompt alone needs {len(prompt) + 1} KV positions; max_total_tokens="
                             f"{self.max_total_tokens}")
        rid = request_id or f"req-{next(self._ids)}"
        if any(s.request_id == rid for s in [*self.waiting, *self.running.values()]):
            raise ValueError(f"request id {rid!r} is already queued or running")
        seq = Sequence(rid, prompt, params, submitted=self.clock(), config=params.generation_config())
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        self.waiting.append(seq)
        return rid

    def cancel(self, request_id: str) -> Event | None:
        """Stop a waiting or running request now (a client went away) and free its slot."""
        for seq in list(self.waiting):
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return self._finish(seq, "cancelled")
        for seq in list(self.running.values()):
            if seq.request_id == request_id:
                return self._finish(seq, "cancelled")
        return None

    def has_work(self) -> bool:
        """Whether any request is waiting or running."""
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------------ one iteration

    def step(self) -> list[Event]:
        """Admit what fits (prefill, first token), then decode one token for every running sequence."""
        events: list[Event] = []
        newly = self._admit(events)
        decoding = [s for s in self.running.values() if s not in newly]
        if decoding:
            self._decode(decoding, events)
        self.steps += 1
        return events

    def _reserved(self) -> int:
        return sum(s.reserved_tokens for s in self.running.values())

    def _admit(self, events: list[Event]) -> list[Sequence]:
        if self.policy == "static" and self.running:
            return []
        admitted = []
        while self.waiting and self.free:
            seq = self.waiting[0]
            need = min(seq.reserved_tokens, self.cfg.max_len)
            if self.max_total_tokens is not None and self.running and self._reserved() + need > self.max_total_tokens:
                break  # first come, first served: later requests wait behind this one
            self.waiting.popleft()
            seq.slot = self.free.pop(0)
            self.cache.lengths[seq.slot] = 0
            self.running[seq.slot] = seq
            admitted.append(seq)
            self._prefill(seq, events)
        return admitted

    @torch.inference_mode()
    def _prefill(self, seq: Sequence, events: list[Event]) -> None:
        slots = torch.tensor([seq.slot], device=self.device)
        ids = torch.tensor([seq.prompt], device=self.device)
        logits = self.model(ids, kv_cache=self.cache.views(slots)).logits[:, -1]
        self.cache.lengths[seq.slot] = len(seq.prompt)
        self._accept(seq, self._sample(seq, logits[0]), events)

    @torch.inference_mode()
    def _decode(self, seqs: list[Sequence], events: list[Event]) -> None:
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        last = torch.tensor([[s.generated[-1]] for s in seqs], device=self.device)
        logits = self.model(last, kv_cache=self.cache.views(slots)).logits[:, -1]
        self.cache.lengths[slots] += 1
        for seq, row in zip(seqs, logits):
            self._accept(seq, self._sample(seq, row), events)

    def _sample(self, seq: Sequence, logits: Tensor) -> int:
        return int(next_token(logits.float().unsqueeze(0), seq.config, seq.generator)[0])

    def _accept(self, seq: Sequence, token: int, events: list[Event]) -> None:
        """Record a sampled token, release what can no longer be part of a stop sequence, finish if due."""
        now = self.clock()
        if seq.first_token_at is None:
            seq.first_token_at = now
        p = seq.params
        if token in p.stop_ids:
            events.append(self._finish(seq, "stop"))
            return
        seq.generated.append(token)
        for stop in p.stop_sequences:
            if tuple(seq.generated[-len(stop):]) == stop:
                del seq.generated[-len(stop):]
                events.append(self._finish(seq, "stop"))
                return
        context_full = len(seq.prompt) + len(seq.generated) >= self.cfg.max_len
        if len(seq.generated) >= p.max_tokens or context_full:
            events.append(self._finish(seq, "length"))
            return
        hold = _stop_prefix_length(seq.generated, p.stop_sequences)
        ready = len(seq.generated) - hold
        if ready > seq.released:
            events.append(Event(seq.request_id, seq.generated[seq.released:ready]))
            seq.released = ready

    def _finish(self, seq: Sequence, reason: str) -> Event:
        seq.finish_reason, seq.finished_at = reason, self.clock()
        if seq.slot is not None and self.running.get(seq.slot) is seq:
            del self.running[seq.slot]
            self.free.append(seq.slot)
            self.free.sort()
        self.finished.append(seq)
        tokens = [] if reason == "cancelled" else seq.generated[seq.released:]
        seq.released = len(seq.generated)
        return Event(seq.request_id, tokens, reason)

    # ------------------------------------------------------------------ convenience

    def run(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[list[int]]:
        """Submit every prompt, step until all finish and return each reply's tokens, in order."""
        ids = [self.submit(p, params) for p in prompts]
        out: dict[str, list[int]] = {rid: [] for rid in ids}
        while self.has_work():
            for event in self.step():
                out[event.request_id].extend(event.tokens)
        return [out[rid] for rid in ids]


def _stop_prefix_length(generated: list[int], stops: tuple[tuple[int, ...], ...]) -> int:
    """How many trailing tokens could still be the start of a stop sequence (they are held back)."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(generated)), best, -1):
            if tuple(generated[-n:]) == stop[:n]:
                best = n
                break
    return best
