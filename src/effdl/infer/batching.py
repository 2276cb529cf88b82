"""Serving many generation requests with one model: static batching against continuous batching.

Static batching groups requests and runs each group until its longest request is done, so rows that finish
early sit idle and later requests wait for the whole group. Continuous batching (Yu et al., 2022, "Orca")
schedules at token granularity: every step decodes one token for each running request, finished requests
leave at once, and waiting requests join the free rows while the step's token budget lasts (a prompt costs its
length, a decode step one token). Both run the book's GPT through :mod:`effdl.infer.kv_cache`; continuous batching
also runs a Hugging Face causal LM (SmolLM2) through :mod:`effdl.infer.hf_batch`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

import torch
from torch import nn

from effdl.infer.hf_batch import HFBatch
from effdl.infer.kv_cache import KVCache, forward_cached, generate_batch, next_token, prefill
from effdl.infer.paged import PagedKVCache
from effdl.models import GPT


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    """A prompt (1-D token ids), how many tokens to generate at most, the scheduler step it arrives at, and a token
    that ends it early (an end-of-text token; kept as the last token)."""

    prompt: torch.Tensor
    max_new_tokens: int
    arrival: int = 0
    stop: int | None = None

    def __post_init__(self) -> None:
        if self.prompt.ndim != 1 or len(self.prompt) == 0:
            raise ValueError(f"prompt must be a non-empty 1-D token tensor, got shape {tuple(self.prompt.shape)}")
        if self.max_new_tokens < 1 or self.arrival < 0:
            raise ValueError(f"max_new_tokens must be >= 1 and arrival >= 0, got {self.max_new_tokens}, "
                             f"{self.arrival}")  # fmt: skip

    def cut(self, tokens: list[int]) -> list[int]:
        """``tokens`` up to ``max_new_tokens`` and the first ``stop``, which is kept."""
        tokens = tokens[: self.max_new_tokens]
        return tokens[: tokens.index(self.stop) + 1] if self.stop in tokens else tokens

    def done(self, tokens: list[int]) -> bool:
        """Whether ``tokens``, generated so far, end the request."""
        return len(tokens) >= self.max_new_tokens or (self.stop is not None and tokens[-1:] == [self.stop])


@dataclasses.dataclass
class Served:
    """One request's new tokens and when it was admitted, got its first token and finished: scheduler steps and
    seconds since the run began."""

    tokens: list[int]
    admitted_step: int
    finished_step: int
    first_token_s: float
    finished_s: float


def static_batching(model: GPT, requests: Sequence[Request], batch_size: int) -> list[Served]:
    """Requests in groups of ``batch_size`` (in order), each group started once its last request has arrived and
    generated to its longest ``max_new_tokens`` with one prefill and then one decode step per token, its other rows
    cut to their own length (or stop token) afterwards."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start, served, step = time.perf_counter(), [], 0
    for first in range(0, len(requests), batch_size):
        group = requests[first : first + batch_size]
        step = max(step, *(r.arrival for r in group))
        longest = max(r.max_new_tokens for r in group)
        outputs = generate_batch(model, [r.prompt for r in group], longest)
        done = time.perf_counter() - start
        for request, out in zip(group, outputs, strict=True):
            tokens = request.cut(out[len(request.prompt) :].tolist())
            served.append(Served(tokens, step, step + longest, done, done))  # tokens arrive with the group
        step += longest
    return served


class GPTRows:
    """The rows of the book's GPT for :class:`ContinuousBatcher`: a :class:`~effdl.infer.kv_cache.KVCache` of the
    model's context, or the ``cache`` given (e.g. a :class:`~effdl.infer.paged.PagedKVCache`)."""

    def __init__(self, model: GPT, rows: int, cache: KVCache | PagedKVCache | None = None) -> None:
        if cache is not None and cache.batch != rows:
            raise ValueError(f"cache must have max_batch={rows} rows, got {cache.batch}")
        weight = model.tok_emb.weight
        self.model = model
        self.cache = cache or KVCache(model.cfg, rows, dtype=weight.dtype, device=weight.device)
        self.promised: dict[int, int] = {}  # row -> paged blocks its request may still need, kept for it

    def reserve(self, row: int, request: Request) -> bool:
        """Whether ``request`` can start in ``row`` now: on a paged cache, only if the blocks its whole run needs
        (prompt and new tokens, the last one never stored) are not promised to the running requests; then they
        are promised to it, so that no running request ever finds the pool empty (there is no preemption)."""
        if not isinstance(self.cache, PagedKVCache):
            return True
        need = math.ceil((len(request.prompt) + request.max_new_tokens - 1) / self.cache.block_size)
        if need > self.cache.blocks - sum(self.promised.values()):
            return False
        self.promised[row] = need
        return True

    def check(self, request: Request) -> None:
        total = len(request.prompt) + request.max_new_tokens
        if total > self.cache.max_tokens:
            raise ValueError(f"requests: a prompt of {len(request.prompt)} and {request.max_new_tokens} new tokens "
                             f"exceed the context ({self.cache.max_tokens})")  # fmt: skip
        if isinstance(self.cache, PagedKVCache) and math.ceil(total / self.cache.block_size) > self.cache.blocks:
            raise ValueError(f"requests: {total} tokens need more blocks than the cache's {self.cache.blocks}")

    def prefill(self, rows: list[int], prompts: list[torch.Tensor]) -> list[int]:
        """One right-padded prefill of ``prompts`` into the free ``rows``: each one's first new token."""
        index = torch.tensor(rows, device=self.cache.lengths.device)
        self.cache.reset(index)
        return next_token(prefill(self.model, prompts, self.cache, rows=index))[:, 0].tolist()

    def decode(self, rows: list[int], last: list[int]) -> list[int]:
        """One decode step of ``rows``, whose last tokens are ``last``: each one's next token."""
        index = torch.tensor(rows, device=self.cache.lengths.device)
        tokens = torch.tensor(last, device=index.device)[:, None]
        return next_token(forward_cached(self.model, tokens, self.cache, rows=index)[:, -1])[:, 0].tolist()

    def release(self, rows: list[int]) -> None:
        self.cache.reset(torch.tensor(rows, device=self.cache.lengths.device))
        for row in rows:
            self.promised.pop(row, None)


class HFRows:
    """The rows of a Hugging Face causal LM for :class:`ContinuousBatcher`, kept in one
    :class:`~effdl.infer.hf_batch.HFBatch`; a row number is a slot, mapped to its place in the batch."""

    def __init__(self, model: nn.Module) -> None:
        self.batch, self.order = HFBatch(model), []  # order[i]: the slot of the batch's row i
        self.context = model.config.max_position_embeddings

    def check(self, request: Request) -> None:
        if len(request.prompt) + request.max_new_tokens > self.context:
            raise ValueError(f"requests: a prompt of {len(request.prompt)} and {request.max_new_tokens} new tokens "
                             f"exceed the context ({self.context})")  # fmt: skip

    def reserve(self, row: int, request: Request) -> bool:
        """Always: the cache grows as needed."""
        return True

    def prefill(self, rows: list[int], prompts: list[torch.Tensor]) -> list[int]:
        self.order += rows
        return [self.batch.join(p) for p in prompts]

    def decode(self, rows: list[int], last: list[int]) -> list[int]:
        by_slot = dict(zip(rows, last, strict=True))
        tokens = dict(zip(self.order, self.batch.decode([by_slot[s] for s in self.order]), strict=True))
        return [tokens[r] for r in rows]

    def release(self, rows: list[int]) -> None:
        self.batch.leave([self.order.index(r) for r in rows])
        self.order = [s for s in self.order if s not in rows]


class ContinuousBatcher:
    """Continuous batching over ``max_batch`` rows of the book's GPT (:class:`GPTRows`, on the ``cache`` given if
    any) or of a Hugging Face causal LM (:class:`HFRows`); each step spends at most ``token_budget`` tokens
    (running requests' decodes first, then waiting prompts, first come first served)."""

    def __init__(self, model: nn.Module, max_batch: int, token_budget: int,
                 cache: KVCache | PagedKVCache | None = None) -> None:  # fmt: skip
        if max_batch < 1 or token_budget < max_batch:
            raise ValueError(f"max_batch must be >= 1 and token_budget >= max_batch, got {max_batch}, {token_budget}")
        self.max_batch, self.token_budget = max_batch, token_budget
        if isinstance(model, GPT):
            self.rows: GPTRows | HFRows = GPTRows(model, max_batch, cache)
        elif hasattr(model, "config") and cache is None:
            self.rows = HFRows(model)
        else:
            raise ValueError("model must be the book's GPT (with any cache) or a Hugging Face causal LM (no cache=)")

    def _check(self, request: Request, max_steps: int) -> None:
        if request.arrival >= max_steps:
            raise ValueError(f"requests: an arrival at step {request.arrival} is beyond max_steps ({max_steps})")
        if len(request.prompt) > self.token_budget:
            raise ValueError(f"requests: a prompt of {len(request.prompt)} tokens exceeds the token budget "
                             f"({self.token_budget})")  # fmt: skip
        self.rows.check(request)

    def _step(self, run: _Schedule, step: int) -> None:
        """Decode the running requests, admit waiting ones within the budget and prefill them, retire the done."""
        decoding = sorted(run.running)
        if decoding:
            last = [run.tokens[run.running[row]][-1] for row in decoding]
            run.emit(decoding, self.rows.decode(decoding, last))
        admitted = run.admit(step, self.max_batch, self.token_budget - len(decoding), self.rows.reserve)
        if admitted:
            prompts = [run.requests[run.running[row]].prompt for row in admitted]
            run.emit(admitted, self.rows.prefill(admitted, prompts))
            run.started(admitted, step)
        done = run.retire(step)
        if done:
            self.rows.release(done)

    def run(self, requests: Sequence[Request], max_steps: int = 100_000) -> list[Served]:
        """Serve ``requests`` (greedy) to completion; the results in the order of ``requests``. A step with nothing
        to run jumps to the next arrival."""
        for request in requests:
            self._check(request, max_steps)
        run = _Schedule(list(requests))
        step = 0
        while not run.finished():
            if step >= max_steps:
                raise RuntimeError(f"max_steps: {max_steps} steps left requests unfinished")
            if not run.running:
                step = max(step, run.requests[run.waiting[0]].arrival)
            self._step(run, step)
            step += 1
        return run.results()


class _Schedule:
    """The bookkeeping of one :meth:`ContinuousBatcher.run`: who waits, which row runs which request, the tokens
    so far, and the times."""

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests
        self.waiting = deque(sorted(range(len(requests)), key=lambda i: requests[i].arrival))
        self.running: dict[int, int] = {}  # row -> request
        self.tokens: dict[int, list[int]] = {i: [] for i in range(len(requests))}
        self.served: dict[int, Served] = {}
        self.start = time.perf_counter()

    def finished(self) -> bool:
        return not self.waiting and not self.running

    def results(self) -> list[Served]:
        return [self.served[i] for i in range(len(self.requests))]

    def emit(self, rows: list[int], tokens: list[int]) -> None:
        for row, token in zip(rows, tokens, strict=True):
            self.tokens[self.running[row]].append(token)

    def admit(self, step: int, max_batch: int, budget: int, reserve: Callable[[int, Request], bool]) -> list[int]:
        """Move arrived requests, first come first served, into free rows while their prompts fit ``budget`` and
        ``reserve`` finds room for them."""
        free = [row for row in range(max_batch) if row not in self.running]
        admitted = []
        while self.waiting and free and self.requests[self.waiting[0]].arrival <= step:
            request = self.requests[self.waiting[0]]
            if len(request.prompt) > budget or not reserve(free[0], request):
                break
            budget -= len(request.prompt)
            row = free.pop(0)
            self.running[row] = self.waiting.popleft()
            admitted.append(row)
        return admitted

    def started(self, rows: list[int], step: int) -> None:
        now = time.perf_counter() - self.start
        for row in rows:
            self.served[self.running[row]] = Served([], step, -1, now, -1.0)

    def retire(self, step: int) -> list[int]:
        """Free the rows whose requests have all their tokens; return those rows."""
        now = time.perf_counter() - self.start
        done = [r for r, i in self.running.items() if self.requests[i].done(self.tokens[i])]
        for row in done:
            i = self.running.pop(row)
            self.served[i] = dataclasses.replace(self.served[i], tokens=self.tokens[i], finished_step=step,
                                                 finished_s=now)  # fmt: skip
        return done
