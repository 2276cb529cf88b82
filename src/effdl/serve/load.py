"""A load generator for the server (``sec-serve-load``): N requests at concurrency C, bounded in time.

:func:`run_load` sends ``payloads`` from ``concurrency`` clients (async ``httpx``, one connection each), each within
``timeout_s``, none started after ``deadline_s``; it records every request's status, latency, time to first token
(streams) and text. :class:`LoadReport` turns them into throughput, percentiles and the count of lost requests:
those that got no complete answer and no explicit refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import time
from collections import Counter
from collections.abc import Sequence

import httpx
import numpy as np


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One request's fate: its HTTP status (0: no answer), seconds to its last byte and (streams) to its first
    text, the reply's text, whether the answer was complete (a body, or a stream that reached ``[DONE]``), the
    ``Retry-After`` header and what went wrong, if anything."""

    status: int
    latency_s: float
    first_token_s: float | None = None
    text: str = ""
    complete: bool = False
    retry_after: str | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """The outcomes of a load run (in the order of its payloads), its wall-clock seconds and the CPU seconds the
    load generator's process spent meanwhile (NaN if not measured): on a small machine the generator competes with
    the server for the CPU."""

    outcomes: list[Outcome]
    wall_s: float
    cpu_s: float = float("nan")

    def statuses(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200 and o.complete]

    def lost(self) -> int:
        """Requests with neither a complete answer nor a refusal (a 4xx or 5xx status)."""
        return sum(o.status < 400 and not (o.status == 200 and o.complete) for o in self.outcomes)

    def throughput(self) -> float:
        """Complete answers per second."""
        return len(self.ok()) / self.wall_s

    def latency(self, q: float) -> float:
        """The ``q``-th percentile (0 to 100) of the complete answers' latency, in seconds."""
        return float(np.percentile([o.latency_s for o in self.ok()], q))

    def first_token(self, q: float) -> float:
        """The ``q``-th percentile of the streams' time to first token, in seconds."""
        return float(np.percentile([o.first_token_s for o in self.ok() if o.first_token_s is not None], q))


def _text(body: dict) -> str:
    """The text of a completion, a chat completion or one of their chunks."""
    choice = (body.get("choices") or [{}])[0]
    return choice.get("text") or (choice.get("message") or choice.get("delta") or {}).get("content") or ""


async def _stream(response: httpx.Response, start: float) -> Outcome:
    first, pieces = None, []
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return Outcome(200, time.perf_counter() - start, first, "".join(pieces), complete=True)
        event = json.loads(line[len("data: ") :])
        if "error" in event:
            return Outcome(200, time.perf_counter() - start, first, "".join(pieces), error=event["error"]["message"])
        if piece := _text(event):
            first = first if first is not None else time.perf_counter() - start
            pieces.append(piece)
    return Outcome(200, time.perf_counter() - start, first, "".join(pieces), error="stream ended without [DONE]")


async def _send(client: httpx.AsyncClient, path: str, payload: dict) -> Outcome:
    start = time.perf_counter()
    try:
        async with client.stream("POST", path, json=payload) as response:
            if response.status_code == 200 and payload.get("stream"):
                return await _stream(response, start)
            body = json.loads(await response.aread())
            return Outcome(response.status_code, time.perf_counter() - start, text=_text(body),
                           complete=response.status_code == 200, retry_after=response.headers.get("retry-after"),
                           error=(body.get("error") or {}).get("message"))  # fmt: skip
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return Outcome(0, time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")


async def run_load(base_url: str | Sequence[str], path: str, payloads: Sequence[dict], concurrency: int,
                   timeout_s: float = 60.0, deadline_s: float = 300.0) -> LoadReport:  # fmt: skip
    """POST each of ``payloads`` to ``base_url + path`` from ``concurrency`` clients, each with a connection of its
    own that sends its next payload as soon as its last one is answered (a closed loop; with several base URLs,
    replicas of one server, client ``i`` talks to ``base_url[i % n]``); each request within ``timeout_s`` and none
    started after ``deadline_s`` (it counts as lost, status 0). One pool of connections shared by all the clients
    would cost the load generator more CPU per request the more connections it holds, and on a small machine the
    generator, not the server, would set the pace."""
    if concurrency < 1 or timeout_s <= 0 or deadline_s <= 0:
        raise ValueError(f"concurrency, timeout_s and deadline_s must be positive, got {concurrency}, {timeout_s}, "
                         f"{deadline_s}")  # fmt: skip
    outcomes: list[Outcome] = [Outcome(0, 0.0, error="not sent: the run's deadline had passed")] * len(payloads)
    queue = iter(enumerate(payloads))
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    async with contextlib.AsyncExitStack() as stack:
        # made before the clock starts: making a client takes milliseconds of CPU (it loads TLS certificates), which
        # would block the event loop while the first requests are in flight
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=urls[i % len(urls)],
                                                                     timeout=timeout_s, limits=one))
                   for i in range(min(concurrency, len(payloads)))]  # fmt: skip
        start, cpu = time.perf_counter(), time.process_time()

        async def client(http: httpx.AsyncClient) -> None:
            for i, payload in queue:
                if time.perf_counter() - start > deadline_s:
                    return
                outcomes[i] = await _send(http, path, payload)

        collecting = gc.isenabled()
        gc.disable()  # a full collection of a large process (torch imported) pauses every client for a moment
        try:
            await asyncio.gather(*(client(http) for http in clients))
        finally:
            if collecting:
                gc.enable()
        wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return LoadReport(outcomes, wall_s, cpu_s)


def load(base_url: str | Sequence[str], path: str, payloads: Sequence[dict], concurrency: int, timeout_s: float = 60.0,
         deadline_s: float = 300.0) -> LoadReport:  # fmt: skip
    """:func:`run_load` from synchronous code (a script; a notebook, whose event loop runs, awaits
    :func:`run_load` instead)."""
    return asyncio.run(run_load(base_url, path, payloads, concurrency, timeout_s, deadline_s))
