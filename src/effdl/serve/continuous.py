"""Continuous batching online: requests join a running batch while it decodes (``sec-serve-batching``).

:meth:`effdl.infer.batching.ContinuousBatcher.run` knows every request up front. A server does not: requests
arrive on the event loop at any time. :class:`OnlineBatcher` keeps the same row backends (``GPTRows`` or
``HFRows``: ``check``, ``reserve``, ``prefill``, ``decode``, ``release``) and the same step (decode the running
rows, admit waiting requests into free rows within the token budget, prefill them, retire the finished), but runs
it in one worker thread that owns the model and takes new requests from a bounded queue between steps. Each
request's tokens go to its own :class:`asyncio.Queue` as they are made, so a handler can stream them; a cancelled
request (its client left, its deadline passed) leaves the batch at the next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable

import torch

from effdl.infer.batching import GPTRows, HFRows, Request

log = logging.getLogger("effdl.serve")


@dataclasses.dataclass(eq=False)
class Job:
    """One request in the scheduler: its :class:`~effdl.infer.batching.Request`, the tokens made so far, and the
    stream (on the event loop of :meth:`OnlineBatcher.submit`) that receives each token, then ``None`` at the end
    or the exception that ended it."""

    request: Request
    loop: asyncio.AbstractEventLoop
    stream: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)
    tokens: list[int] = dataclasses.field(default_factory=list)
    cancelled: bool = False

    def cancel(self) -> None:
        """Ask the scheduler to drop this request at its next step."""
        self.cancelled = True

    def push(self, item: int | BaseException | None) -> None:
        """Hand ``item`` to the stream from the worker thread."""
        self.loop.call_soon_threadsafe(self.stream.put_nowait, item)

    async def next_token(self) -> int | None:
        """The next token, ``None`` once the request has ended; raises what ended it if it failed."""
        item = await self.stream.get()
        if isinstance(item, BaseException):
            raise item
        return item


class QueueFull(Exception):
    """The batcher's waiting queue is full."""


class OnlineBatcher:
    """Continuous batching of requests that arrive while it runs: one worker thread steps ``max_batch`` rows of
    ``rows`` token by token, spending at most ``token_budget`` tokens a step, and admits waiting requests (at most
    ``queue_size`` of them; more are refused) between steps. ``on_step(tokens)`` hears how many tokens each step
    made (one per running or admitted row): a batch-size metric."""

    def __init__(self, rows: GPTRows | HFRows, max_batch: int, token_budget: int, queue_size: int,
                 on_step: Callable[[int], None] | None = None) -> None:  # fmt: skip
        if max_batch < 1 or token_budget < max_batch or queue_size < 1:
            raise ValueError(f"max_batch and queue_size must be >= 1 and token_budget >= max_batch, got "
                             f"{max_batch}, {queue_size}, {token_budget}")  # fmt: skip
        self.rows, self.max_batch, self.token_budget, self.queue_size = rows, max_batch, token_budget, queue_size
        self.on_step = on_step or (lambda tokens: None)
        self.waiting: deque[Job] = deque()
        self.running: dict[int, Job] = {}  # row -> job
        self.tokens_generated = 0  # every token the model made, whether or not a client read it
        self.wakeup = threading.Condition()
        self.closing = False
        self.worker = threading.Thread(target=self._work, name="effdl-serve-generate", daemon=True)

    def start(self) -> None:
        self.worker.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the accepted requests, then end the worker."""
        with self.wakeup:
            self.closing = True
            self.wakeup.notify()
        self.worker.join(timeout_s)

    def submit(self, prompt: list[int], max_new_tokens: int, stop: int | None = None) -> Job:
        """Queue a request (call on the event loop); :class:`QueueFull` when ``queue_size`` requests wait, a
        ``ValueError`` when the model cannot hold it."""
        request = Request(torch.tensor(prompt, dtype=torch.long), max_new_tokens, stop=stop)
        self.rows.check(request)
        job = Job(request, asyncio.get_running_loop())
        with self.wakeup:
            if len(self.waiting) >= self.queue_size:
                raise QueueFull
            self.waiting.append(job)
            self.wakeup.notify()
        return job

    def _work(self) -> None:
        while True:
            with self.wakeup:
                while not (self.waiting or self.running or self.closing):
                    self.wakeup.wait()
                if self.closing and not (self.waiting or self.running):
                    return
            try:
                self._step()
            except Exception as exc:  # the model failed: end its requests, keep serving
                log.exception("generation step failed")
                self._end(list(self.running), exc)

    def _step(self) -> None:
        """Drop cancelled requests, decode the running ones, admit and prefill waiting ones, retire the done."""
        self._drop_cancelled()
        decoding = sorted(self.running)
        if decoding:
            self._emit(decoding, self.rows.decode(decoding, [self.running[row].tokens[-1] for row in decoding]))
        admitted = self._admit(self.token_budget - len(decoding))
        if admitted:
            self._emit(admitted, self.rows.prefill(admitted, [self.running[row].request.prompt for row in admitted]))
        self.on_step(len(decoding) + len(admitted))
        self._end([row for row, job in self.running.items() if job.request.done(job.tokens)], None)

    def _drop_cancelled(self) -> None:
        """End the cancelled requests, waiting or running (their clients left or their deadlines passed)."""
        with self.wakeup:
            for job in [job for job in self.waiting if job.cancelled]:
                self.waiting.remove(job)
                job.push(None)
        self._end([row for row, job in self.running.items() if job.cancelled], None)

    def _admit(self, budget: int) -> list[int]:
        """Move waiting requests, first come first served, into free rows while their prompts fit ``budget``."""
        free = [row for row in range(self.max_batch) if row not in self.running]
        admitted = []
        with self.wakeup:
            while self.waiting and free:
                job = self.waiting[0]
                if len(job.request.prompt) > budget or not self.rows.reserve(free[0], job.request):
                    break
                budget -= len(job.request.prompt)
                row = free.pop(0)
                self.running[row] = self.waiting.popleft()
                admitted.append(row)
        return admitted

    def _emit(self, rows: list[int], tokens: list[int]) -> None:
        self.tokens_generated += len(tokens)
        for row, token in zip(rows, tokens, strict=True):
            job = self.running[row]
            job.tokens.append(token)
            job.push(token)

    def _end(self, rows: list[int], outcome: BaseException | None) -> None:
        """Retire ``rows``: free them and end their jobs' streams with ``outcome``."""
        if not rows:
            return
        for row in rows:
            self.running.pop(row).push(outcome)
        self.rows.release(rows)
