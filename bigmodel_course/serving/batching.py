"""Micro-batching: concurrent requests wait a few milliseconds in an asyncio queue and share forward passes.

A worker task takes the first waiting request, gathers more until it holds `max_items` inputs or
`max_wait_s` has passed, runs `predict` per model over the gathered inputs in a worker thread, and hands
every request its own slice of the predictions. While a forward pass runs, new requests queue up and form
the next batch, so under load the batches grow by themselves. `workers` tasks share the queue (one
forward pass each at a time, e.g. one per CPU core). Texts of very different lengths are padded to the
longest one in a batch, so an optional `split` (e.g. `length_buckets`) cuts a gathered batch into
forward passes of similar lengths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool


def length_buckets(texts: Sequence[str], max_tokens: int = 1024) -> list[list[int]]:
    """Indices of `texts` sorted by length and cut into groups whose padded size (count × longest) ≤ max_tokens."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    groups: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(texts)), key=lambda i: len(texts[i])):
        if current and (len(current) + 1) * len(texts[i]) > max_tokens:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


@dataclass
class _Job:
    """One request's inputs for one model and the future its predictions go to."""

    model: object
    inputs: list
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Gather concurrent `submit(model, inputs)` calls into one `model.predict` call per model."""

    def __init__(self, max_items: int = 32, max_wait_s: float = 0.005,
                 on_batch: Callable[[object, int, int], None] | None = None, workers: int = 1,
                 split: Callable[[list], list[list[int]]] | None = None) -> None:
        for name, value in (("max_items", max_items), ("workers", workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(max_wait_s, bool) or not isinstance(max_wait_s, (int, float)) or not 0 <= max_wait_s <= 1:
            raise ValueError(f"max_wait_s must be a number of seconds in [0, 1], got {max_wait_s!r}")
        self.max_items, self.max_wait_s, self.on_batch = max_items, float(max_wait_s), on_batch
        self.workers, self.split = workers, split
        self._queue: asyncio.Queue[_Job] | None = None
        self._tasks: list[asyncio.Task] = []

    def _start(self) -> asyncio.Queue:
        """The queue, with its worker tasks started in the running event loop on first use."""
        if not self._tasks or any(t.done() for t in self._tasks):
            for task in self._tasks:
                task.cancel()
            self._queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._run()) for _ in range(self.workers)]
        return self._queue

    async def submit(self, model, inputs: list) -> list:
        """The predictions of `model` for `inputs`, computed together with other requests waiting at the same time."""
        if not inputs:
            raise ValueError("inputs is empty")
        future = asyncio.get_running_loop().create_future()
        self._start().put_nowait(_Job(model, list(inputs), future))
        return await future

    async def _gather(self) -> list[_Job]:
        """The next batch: the first waiting job plus more until max_items inputs or max_wait_s."""
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        n, deadline = len(jobs[0].inputs), loop.time() + self.max_wait_s
        while n < self.max_items:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            jobs.append(job)
            n += len(job.inputs)
        return jobs

    async def _run(self) -> None:
        """Worker: gather a batch, predict per model in a thread, answer every job."""
        while True:
            jobs = await self._gather()
            groups: dict[int, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(id(job.model), []).append(job)
            for group in groups.values():
                await self._predict(group)

    async def _predict(self, group: list[_Job]) -> None:
        """One forward pass over the inputs of jobs that share a model; each job gets its slice (or the error)."""
        model = group[0].model
        inputs = [x for job in group for x in job.inputs]
        try:
            predictions = await run_in_threadpool(self._predict_all, model, inputs)
        except Exception as e:  # the error goes to every waiting request; the worker keeps running
            for job in group:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(model, len(group), len(inputs))
        start = 0
        for job in group:
            end = start + len(job.inputs)
            if not job.future.done():  # a cancelled request (client went away) has no one to answer
                job.future.set_result(predictions[start:end])
            start = end

    def _predict_all(self, model, inputs: list) -> list:
        """model.predict over all inputs: one call, or one per group of `split`, in input order."""
        if self.split is None:
            return model.predict(inputs)
        out: list = [None] * len(inputs)
        for indices in self.split(inputs):
            for i, prediction in zip(indices, model.predict([inputs[i] for i in indices])):
                out[i] = prediction
        return out

    async def aclose(self) -> None:
        """Stop the worker tasks (at application shutdown)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
