"""The collectives every strategy rests on, timed, and the alpha-beta model fitted to them
(``sec-parallel-collectives``).

Sending ``n`` bytes costs about ``alpha + n * beta``: a latency ``alpha`` per message and an inverse bandwidth
``beta`` per byte. A ring all-reduce over ``p`` ranks sends ``2 (p - 1)`` messages of ``n / p`` bytes from each
rank (a reduce-scatter, then an all-gather), so it takes ``2 (p - 1) alpha + 2 (p - 1) / p * n * beta``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist

from effdl.parallel.group import worker_device, world

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter")


def _collective(name: str, numel: int):
    """A call that runs collective ``name`` on a float32 tensor of ``numel`` elements (the full, gathered size)."""
    device, ranks = worker_device(), world()
    full = torch.ones(numel, device=device)
    shard = torch.ones(numel // ranks, device=device)
    calls = {"all_reduce": lambda: dist.all_reduce(full),
             "all_gather": lambda: dist.all_gather_single(full, shard),
             "reduce_scatter": lambda: dist.reduce_scatter_single(shard, full)}  # fmt: skip
    return calls[name]


def time_collective(name: str, numel: int, repeats: int = 5) -> float:
    """Median seconds of ``repeats`` calls of collective ``name`` on ``numel`` float32 elements, each call
    started together on every rank (a barrier first) and timed to its end on this rank."""
    if name not in COLLECTIVES:
        raise ValueError(f"name must be one of {COLLECTIVES}, got {name!r}")
    if numel < world() or repeats < 1:
        raise ValueError(f"numel must be >= the world size and repeats >= 1, got numel={numel}, repeats={repeats}")
    call, times = _collective(name, numel - numel % world()), []
    call()  # warm-up
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        call()
        if worker_device().type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def collective_sweep(sizes_bytes: Sequence[int], repeats: int = 5) -> list[dict]:
    """:func:`time_collective` for every collective and message size (bytes of the full tensor)."""
    return [{"collective": name, "bytes": size, "seconds": time_collective(name, size // 4, repeats)}
            for name in COLLECTIVES for size in sizes_bytes]  # fmt: skip


def fit_alpha_beta(sizes_bytes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``seconds = alpha + beta * bytes``: the latency ``alpha`` (s) and the inverse bandwidth
    ``beta`` (s per byte)."""
    if len(sizes_bytes) != len(seconds) or len(seconds) < 2:
        raise ValueError(f"sizes_bytes and seconds must be two equal-length sequences of >= 2 points, got "
                         f"{len(sizes_bytes)} and {len(seconds)}")  # fmt: skip
    x, y = torch.tensor(sizes_bytes, dtype=torch.float64), torch.tensor(seconds, dtype=torch.float64)
    design = torch.stack([torch.ones_like(x), x], dim=1)
    alpha, beta = torch.linalg.lstsq(design, y[:, None]).solution.flatten().tolist()
    return alpha, beta


def _compute_for(seconds: float) -> None:
    """Keep this rank busy with matrix products for ``seconds`` (a straggler: a slower GPU, a longer batch)."""
    a, deadline = torch.randn(128, 128, device=worker_device()), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        a = torch.tanh(a @ a)


def straggler_timings(numel: int, late_s: float = 0.05, repeats: int = 3) -> dict:
    """A common mistake, timing a collective without a barrier: the last rank arrives ``late_s`` later, and rank
    0's clock counts the wait as communication. The all-reduce's seconds on this rank without and with a barrier
    before the clock starts (medians of ``repeats``), and ``late_s``."""
    tensor, seconds = torch.ones(numel, device=worker_device()), {"without_barrier": [], "with_barrier": []}
    for _ in range(repeats):
        for barrier in (False, True):
            if dist.get_rank() == world() - 1:
                _compute_for(late_s)
            if barrier:
                dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(tensor)
            seconds["with_barrier" if barrier else "without_barrier"].append(time.perf_counter() - start)
            dist.barrier()
    return {name: statistics.median(times) for name, times in seconds.items()} | {"late_s": late_s}
