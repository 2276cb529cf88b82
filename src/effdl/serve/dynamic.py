"""Dynamic batching for a classifier (``sec-serve-batching``).

One image alone leaves most of a forward pass's arithmetic idle. :class:`DynamicBatcher` gathers the requests that
arrive within ``max_wait_ms`` of the first one (or until ``max_batch`` have come), runs them as one batch in a
worker thread that owns the model, and resolves each request's future with its own row of the output. The wait
is the price: a lone request is ``max_wait_ms`` slower, a busy server much faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch


@dataclasses.dataclass(eq=False)
class _Item:
    input: torch.Tensor
    future: asyncio.Future


class DynamicBatcher:
    """Batches calls of ``forward`` (inputs stacked along a new first dimension): at most ``max_batch`` inputs,
    gathered for at most ``max_wait_ms`` after the first, with at most ``queue_size`` waiting (more raise
    :class:`asyncio.QueueFull`). ``on_batch(size, seconds)`` hears each batch's size and the seconds its forward
    pass took in the worker (the model's share of a request's time, ``sec-serve-metrics``). Start and stop it on
    the event loop that submits to it."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], max_batch: int, max_wait_ms: float,
                 queue_size: int, on_batch: Callable[[int, float], None] | None = None) -> None:  # fmt: skip
        if max_batch < 1 or max_wait_ms < 0 or queue_size < 1:
            raise ValueError(f"max_batch and queue_size must be >= 1 and max_wait_ms >= 0, got {max_batch}, "
                             f"{queue_size}, {max_wait_ms}")  # fmt: skip
        self.forward, self.max_batch, self.max_wait_s = forward, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="effdl-serve-classify")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        """Stop gathering (call once no request waits: uvicorn finishes its requests before the lifespan ends)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.worker.shutdown()

    async def submit(self, input: torch.Tensor) -> torch.Tensor:
        """``forward`` of ``input`` alone, computed in a batch with others."""
        item = _Item(input, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(item)
        return await item.future

    async def _gather(self) -> list[_Item]:
        """The first waiting item, then those that come within ``max_wait_ms``, up to ``max_batch``."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if self.queue.empty():
                getting = asyncio.ensure_future(self.queue.get())
                await asyncio.wait([getting], timeout=max(0.0, deadline - loop.time()))
                if not getting.done():
                    getting.cancel()  # not yet run: the queue keeps any item it was woken for
                    break
                batch.append(getting.result())
            else:
                batch.append(self.queue.get_nowait())
        return [item for item in batch if not item.future.done()]  # a timed-out request needs no answer

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            try:
                outputs, seconds = await loop.run_in_executor(self.worker, self._run, [item.input for item in batch])
            except Exception as exc:  # the model failed: each waiting request gets the error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.on_batch(len(batch), seconds)
            for item, output in zip(batch, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(output)

    @torch.no_grad()
    def _run(self, inputs: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
        """The rows of ``forward`` on the stacked ``inputs``, and the seconds it took."""
        start = time.perf_counter()
        outputs = list(self.forward(torch.stack(inputs)))
        return outputs, time.perf_counter() - start
