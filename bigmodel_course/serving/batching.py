"""Micro-batching: concurrent requests wait a few milliseconds in an asyncio queue and share one forward pass.

One worker task takes the first waiting request, gathers more until it holds `max_items` inputs or
`max_wait_s` has passed, runs one `predict` per model over all gathered inputs in a worker thread, and
hands every request its own slice of the predictions. While a forward pass runs, new requests queue up
and form the next batch, so under load the batches grow by themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool


@dataclass
class _Job:
    """One request's inputs for one model and the future its predictions go to."""

    model: object
    inputs: list
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Gather concurrent `submit(model, inputs)` calls into one `model.predict` call per model."""

    def __init__(self, max_items: int = 32, max_wait_s: float = 0.005,
                 on_batch: Callable[[object, int, int], None] | None = None) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items <= 0:
            raise ValueError(f"max_items must be a positive int, got {max_items!r}")
        if isinstance(max_wait_s, bool) or not isinstance(max_wait_s, (int, float)) or not 0 <= max_wait_s <= 1:
            raise ValueError(f"max_wait_s must be a number of seconds in [0, 1], got {max_wait_s!r}")
        self.max_items, self.max_wait_s, self.on_batch = max_items, float(max_wait_s), on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None

    def _start(self) -> asyncio.Queue:
        """The queue, with its worker task started in the running event loop on first use."""
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
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
            predictions = await run_in_threadpool(model.predict, inputs)
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

    async def aclose(self) -> None:
        """Stop the worker task (at application shutdown)."""
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._worker = None
