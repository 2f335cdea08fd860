"""A language model behind the continuous-batching engine, for an asyncio web service.

The engine is not thread-safe and its steps block, so one background thread owns it: requests and cancellations
reach it through an inbox, and every event it produces is handed to the waiting request's asyncio queue on the
event loop. A request whose client goes away is cancelled and frees its KV slot in the next iteration.

    service = LLMService(model, tokenizer, name="assistant")
    service.start()
    async for event in service.stream(prompt_ids, SamplingParams(max_tokens=32)):
        ...
    service.close()
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from torch import nn

from ..chat import END, render
from ..tokenization import CharTokenizer
from .engine import Engine, Event, SamplingParams
from .engine import Sequence as EngineSequence
from .middleware import logger

TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LLMMetrics:
    """Prometheus metrics of the generation engine, registered in the service's registry.

    Time to first token and time per output token are per request; tokens generated count every released token;
    running and waiting requests are gauges read at each iteration. One label, the served model's name.
    """

    def __init__(self, registry: CollectorRegistry, model: str) -> None:
        self.registry, self.model = registry, model
        self.ttft = Histogram("bigmodel_llm_time_to_first_token_seconds", "From a request's arrival to its first "
                              "token", ["model"], buckets=TOKEN_LATENCY_BUCKETS, registry=registry)
        self.tpot = Histogram("bigmodel_llm_time_per_output_token_seconds", "Mean time between a request's "
                              "tokens after the first", ["model"], buckets=TOKEN_LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("bigmodel_llm_generated_tokens", "Tokens generated", ["model"], registry=registry)
        self.running = Gauge("bigmodel_llm_running_requests", "Requests holding a KV slot", ["model"],
                             registry=registry)
        self.waiting = Gauge("bigmodel_llm_waiting_requests", "Requests queued for a KV slot", ["model"],
                             registry=registry)

    def finished(self, seq: EngineSequence) -> None:
        """Record a finished request's latencies."""
        if seq.ttft is not None:
            self.ttft.labels(self.model).observe(seq.ttft)
        if seq.tpot is not None:
            self.tpot.labels(self.model).observe(seq.tpot)


class LLMService:
    """A chat model (a GPT with the chat tokens and its character tokenizer) served by one engine thread."""

    def __init__(self, model: nn.Module, tokenizer: CharTokenizer, name: str = "assistant", max_batch_size: int = 8,
                 max_total_tokens: int | None = None, registry: CollectorRegistry | None = None) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.engine = Engine(model, max_batch_size=max_batch_size, max_total_tokens=max_total_tokens,
                             history=4 * max_batch_size)  # enough to find the requests one iteration finishes
        self.metrics = LLMMetrics(registry or CollectorRegistry(), name)
        self.end_id = tokenizer.token_to_id(END) if END in tokenizer.vocab else None
        self._inbox: list[Callable[[], None]] = []
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._ids = itertools.count()

    @property
    def context(self) -> int:
        """The model's context window in tokens."""
        return self.model.cfg.max_len

    # ---------------------------------------------------------------- prompts

    def chat_prompt(self, messages: Sequence[dict]) -> list[int]:
        """Token ids of a conversation, ending with <|assistant|> (chat.render's checks apply)."""
        if self.end_id is None:
            raise ValueError("the served model's tokenizer has no chat tokens; it can only complete text")
        return render(messages, self.tokenizer, add_generation_prompt=True).input_ids

    def text_prompt(self, prompt: str) -> list[int]:
        """Token ids of a plain text prompt, starting with the pre-training text boundary [SEP]."""
        return [self.tokenizer.sep_id, *self.tokenizer.encode(prompt, add_special=False)]

    def stop_sequences(self, stop: Sequence[str]) -> tuple[tuple[int, ...], ...]:
        """Stop strings as token-id sequences (one id per character)."""
        return tuple(tuple(self.tokenizer.encode(s, add_special=False)) for s in stop)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated token ids."""
        return self.tokenizer.decode(list(ids))

    # ---------------------------------------------------------------- the engine thread

    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        if self._thread is None:
            self._closed = False
            self._thread = threading.Thread(target=self._loop, name=f"llm-engine-{self.name}", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the engine thread after its current iteration; requests still open end as cancelled."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _post(self, op: Callable[[], None]) -> None:
        with self._wake:
            self._inbox.append(op)
            self._wake.notify()

    def _loop(self) -> None:
        engine = self.engine
        while True:
            with self._wake:
                while not (self._inbox or engine.has_work() or self._closed):
                    self._wake.wait()
                inbox, self._inbox = self._inbox, []
                closed = self._closed
            for op in inbox:
                op()
            if closed:
                for seq in [*engine.waiting, *engine.running.values()]:
                    self._deliver(engine.cancel(seq.request_id))
                return
            if engine.has_work():
                try:
                    events = engine.step()
                except Exception as e:  # a failed iteration must not leave its requests waiting forever
                    logger.exception("generation engine iteration failed; its requests end with an error")
                    for seq in [*engine.waiting, *engine.running.values()]:
                        engine.cancel(seq.request_id)
                        self._deliver(RuntimeError(f"generation failed: {type(e).__name__}"), seq.request_id)
                    events = []
                for event in events:
                    self._deliver(event)
            self.metrics.running.labels(self.name).set(len(engine.running))
            self.metrics.waiting.labels(self.name).set(len(engine.waiting))

    def _deliver(self, event: Event | BaseException | None, request_id: str | None = None) -> None:
        if event is None:
            return
        rid = request_id if isinstance(event, BaseException) else event.request_id
        if isinstance(event, Event):
            self.metrics.tokens.labels(self.name).inc(len(event.tokens))
            if event.finish_reason is not None:
                seq = next((s for s in reversed(self.engine.finished) if s.request_id == rid), None)
                if seq is not None:
                    self.metrics.finished(seq)
        done = not isinstance(event, Event) or event.finish_reason is not None
        target = self._streams.pop(rid, None) if done else self._streams.get(rid)
        if target is not None:
            loop, queue = target
            loop.call_soon_threadsafe(queue.put_nowait, event)

    # ---------------------------------------------------------------- requests

    async def stream(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[Event]:
        """The request's events as the engine produces them; leaving the iteration early cancels the request."""
        if self._thread is None:
            raise RuntimeError("the LLM service is not started")
        rid = f"gen-{next(self._ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = (asyncio.get_running_loop(), queue)

        def submit() -> None:
            try:
                self.engine.submit(prompt, params, request_id=rid)
            except ValueError as e:
                self._deliver(e, rid)

        self._post(submit)
        finished = False
        try:
            while True:
                event = await queue.get()
                if isinstance(event, BaseException):
                    finished = True
                    raise event
                yield event
                if event.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:  # the consumer went away: free the slot
                self._streams.pop(rid, None)
                self._post(lambda: self.engine.cancel(rid))
