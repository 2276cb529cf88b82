"""Honest measurement: time, throughput, bytes, FLOPs, memory, and this machine's ceilings.

The chapter ``chap-measuring`` (*Measuring performance*) teaches every function here. Timing goes
through ``torch.utils.benchmark`` (warm-up, repeated blocks, median and interquartile range, device
synchronization); FLOPs through ``torch.utils.flop_counter``; sizes count real storage bytes.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

# A CUDA build of torch on a machine without CUDA warns when torch.utils.benchmark imports
# cpp_extension (for its valgrind helpers, unused here); the warning is noise in every notebook.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from effdl.config import pick  # noqa: E402

MIN_BLOCKS = 5


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and interquartile range over repeated blocks, and every block."""

    median: float
    iqr: float
    times: tuple[float, ...]

    @property
    def spread(self) -> float:
        """IQR relative to the median: below ~0.05 is a quiet measurement."""
        return self.iqr / self.median


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], *, min_run_time: float | None = None, warmup: int | None = None,
            device: torch.device | str | None = None) -> Timing:  # fmt: skip
    """Time ``fn()`` with ``torch.utils.benchmark.Timer.blocked_autorange`` after ``warmup`` calls
    (default 3, 1 in fast mode).

    The Timer uses all of torch's threads (its default is one) and synchronizes CUDA itself. When
    it returns fewer than ``MIN_BLOCKS`` blocks (one call outlasts the budget, or a noisy overhead
    estimate made one huge block), the missing blocks are timed and merged in, so the interquartile
    range always measures something.
    """
    min_run_time = pick(fast=0.1, full=1.0) if min_run_time is None else min_run_time
    warmup = pick(fast=1, full=3) if warmup is None else warmup
    if min_run_time <= 0 or warmup < 0:
        raise ValueError(f"min_run_time must be > 0 and warmup >= 0, got {min_run_time}, {warmup}")
    for _ in range(warmup):
        fn()
    _sync(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    if len(m.times) < MIN_BLOCKS:  # Timer.timeit would warm up again before each block: time them here
        calls = max(1, int(min_run_time / MIN_BLOCKS / m.median))
        extra = [sum(call_times(fn, calls, device=device)) / calls for _ in range(MIN_BLOCKS - len(m.times))]
        m = benchmark.Measurement(number_per_run=1, raw_times=[*m.times, *extra], task_spec=m.task_spec)
    return Timing(median=m.median, iqr=m.iqr, times=tuple(m.times))


def call_times(fn: Callable[[], Any], n: int, *, warmup: int = 0,
               device: torch.device | str | None = None) -> list[float]:  # fmt: skip
    """Seconds of each of ``n`` single calls of ``fn()``, after ``warmup`` untimed calls.

    What one request sees, call by call: the first calls show warm-up, the tail shows jitter
    (use :func:`time_fn` for a robust median).
    """
    if n <= 0 or warmup < 0:
        raise ValueError(f"n must be positive and warmup >= 0, got {n}, {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer; the CPU for a model with neither (an int8 engine
    keeps its packed weights outside both)."""
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def latency(model: nn.Module, example: torch.Tensor, *, min_run_time: float | None = None,
            warmup: int | None = None) -> Timing:  # fmt: skip
    """Seconds for one forward pass of ``model`` on ``example`` (inference mode)."""
    model.eval()
    dev = model_device(model)
    example = example.to(dev)

    def forward() -> None:
        with torch.inference_mode():
            model(example)

    return time_fn(forward, min_run_time=min_run_time, warmup=warmup, device=dev)


def compare_latency(models: dict[str, nn.Module], example: torch.Tensor, rounds: int = 3,
                    **kwargs: Any) -> dict[str, float]:  # fmt: skip
    """Median seconds per forward pass of each model, timed in ``rounds`` interleaved passes.

    On a busy or small machine a model's latency drifts by tens of percent between moments (the
    allocator, other processes, clocks); timing A, B, A, B, ... and taking each model's median
    over the rounds lets a slow moment hit every model alike, so their ratio is trustworthy.
    """
    if rounds <= 0:
        raise ValueError(f"rounds must be positive, got {rounds}")
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(latency(model, example, **kwargs).median)
    return {name: statistics.median(t) for name, t in times.items()}


def interleaved_times(calls: dict[str, Callable[[], Any]], rounds: int = 5, warmup: int = 1,
                      calls_per_round: int = 1, device: torch.device | str | None = None,
                      ) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per call of each call in ``calls``, one value per round (the mean of ``calls_per_round`` timed
    calls): after ``warmup`` untimed calls each, every round times each call in turn, so a slow moment of the
    machine hits all of them alike. The rounds' spread gives a standard error (``sec-measuring-noise``)."""
    if rounds <= 0 or calls_per_round <= 0:
        raise ValueError(f"rounds and calls_per_round must be positive, got {rounds}, {calls_per_round}")
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(statistics.fmean(call_times(call, calls_per_round, device=device)))
    return times


def compare_calls(calls: dict[str, Callable[[], Any]], rounds: int = 5, warmup: int = 1,
                  device: torch.device | str | None = None) -> dict[str, float]:  # fmt: skip
    """Median seconds of each call in ``calls`` over the rounds of :func:`interleaved_times`, one timed call per
    round: the interleaving of :func:`compare_latency` for calls that take long enough to time one by one (a
    whole generation, say)."""
    times = interleaved_times(calls, rounds, warmup, device=device)
    return {name: statistics.median(t) for name, t in times.items()}


def throughput(model: nn.Module, example: torch.Tensor, **kwargs: Any) -> float:
    """Examples per second at the batch size of ``example``: batch / median latency."""
    return example.shape[0] / latency(model, example, **kwargs).median


def param_count(model: nn.Module) -> int:
    """Number of distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def size_bytes(obj: nn.Module | str | Path) -> int:
    """True storage bytes: of a module's parameters and buffers, or of a file on disk.

    Each storage counts once, so tied weights and views are not double-counted, and every
    tensor is charged its real element size (int8 = 1 byte, bf16 = 2, fp32 = 4).
    """
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise ValueError(f"obj: no such file {path}")
        return os.path.getsize(path)
    if not isinstance(obj, nn.Module):
        raise ValueError(f"obj must be an nn.Module or a file path, got {type(obj).__name__}")
    return _storage_bytes([*obj.parameters(), *obj.buffers()])


def parameter_bytes(model: nn.Module) -> int:
    """Storage bytes of ``model``'s parameters alone: :func:`size_bytes` without the buffers
    (BatchNorm running statistics and counters), each storage counted once."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    return _storage_bytes(list(model.parameters()))


def _data_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding ``t``'s data: ``t`` itself, or the inner tensors of a wrapper subclass
    (torchao's quantized weights keep codes and scales inside a tensor that only looks like fp32)."""
    if is_traceable_wrapper_subclass(t):
        return [leaf for name in t.__tensor_flatten__()[0] for leaf in _data_tensors(getattr(t, name))]
    return [t]


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    storages = {}
    for t in (leaf for tensor in tensors for leaf in _data_tensors(tensor)):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes of one tensor, a quantized tensor subclass's codes and scales included."""
    return _storage_bytes([t])


def flops(model: nn.Module, example: Any) -> int:
    """Floating-point operations of one forward pass (a multiply-add counts 2), by
    ``torch.utils.flop_counter.FlopCounterMode``. Ops it does not know count 0."""
    if isinstance(example, torch.Tensor):
        example = example.to(model_device(model))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example)
    return counter.get_total_flops()


class _TrafficCounter(TorchDispatchMode):
    """Adds up the bytes of every tensor each aten op reads and writes; views move nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # a view shares its input's memory: no bytes move
            return out
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        self.total += sum(t.numel() * t.element_size() for t in tensors)
        return out


def bytes_moved(fn: Callable[[], Any]) -> int:
    """Memory traffic of ``fn()`` if every op read its inputs and wrote its outputs to DRAM.

    An upper bound that ignores caches, used for the arithmetic intensity of the roofline
    model (``sec-measuring-roofline``): FLOPs / bytes moved.
    """
    counter = _TrafficCounter()
    with torch.no_grad(), counter:
        fn()
    return counter.total


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated by ``fn()`` above what was allocated before it was called.

    CUDA reads the caching allocator's high-water mark; on the CPU the allocations and frees
    recorded by ``torch.profiler`` are replayed in time order and the running maximum is kept.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    if dev.type != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {dev.type}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        running += record.nbytes()
        peak = max(peak, running)
    return peak


# --- machine ceilings for the roofline --------------------------------------------------------


@dataclass(frozen=True)
class Ceilings:
    """Measured limits of one device: memory bandwidth and dense matmul throughput per dtype.

    ``bandwidth_gbs`` is a copy's (each byte read once and written once, like most operators): the
    roofline's slope. ``read_gbs`` only reads, as decoding does with the weights
    (``sec-measuring-decode``).
    """

    device: str
    bandwidth_gbs: float
    read_gbs: float
    matmul_gflops: dict[str, float]

    def attainable_gflops(self, intensity: float, dtype: str = "float32") -> float:
        """Roofline: ``min(peak, intensity * bandwidth)`` for ``intensity`` in FLOP/byte."""
        if intensity <= 0:
            raise ValueError(f"intensity must be positive, got {intensity}")
        return min(self.matmul_gflops[dtype], intensity * self.bandwidth_gbs)


BANDWIDTH_PATTERNS = ("copy", "read")


def memory_bandwidth(device: torch.device | str = "cpu", mib: int | None = None, pattern: str = "copy") -> float:
    """GB/s streaming a tensor of ``mib`` MiB, far beyond the caches, through memory.

    ``pattern="copy"`` reads it and writes a copy (two passes of its bytes); ``"read"`` only reads
    it (a sum, whose arithmetic is far cheaper than the memory traffic).
    """
    mib = pick(fast=256, full=1024) if mib is None else mib
    if mib <= 0:
        raise ValueError(f"mib must be positive, got {mib}")
    if pattern not in BANDWIDTH_PATTERNS:
        raise ValueError(f"pattern must be one of {BANDWIDTH_PATTERNS}, got {pattern!r}")
    src = torch.ones(mib * 2**20 // 4, device=device)
    if pattern == "copy":
        dst, passes = torch.empty_like(src), 2
        call = partial(dst.copy_, src)
    else:
        call, passes = partial(torch.sum, src), 1
    t = time_fn(call, min_run_time=pick(fast=0.2, full=1.0), device=device)
    return passes * src.nbytes / t.median / 1e9


MATMUL_CALL_BUDGET = 0.5  # seconds: the longest matmul call matmul_gflops times


def _square_matmul(n: int, dtype: torch.dtype, device: torch.device | str) -> Callable[[], torch.Tensor]:
    """A call of one ``n x n`` by ``n x n`` matmul of random ``dtype`` operands on ``device``."""
    return partial(torch.matmul, *(torch.randn(n, n, device=device).to(dtype) for _ in range(2)))


def matmul_gflops(dtype: torch.dtype, device: torch.device | str = "cpu", n: int | None = None) -> float:
    """GFLOP/s of an ``n x n`` by ``n x n`` matmul (2 n^3 FLOPs) in ``dtype``.

    A dtype the device only emulates (bf16 on a CPU without bf16 instructions runs at about one
    GFLOP/s) would make each call take a minute; ``n`` is halved until one call should fit
    :data:`MATMUL_CALL_BUDGET`, estimated from one ``256 x 256`` product (the time grows as ``n^3``).
    """
    n = pick(fast=512, full=2048, gpu=8192) if n is None else n
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    small = call_times(_square_matmul(256, dtype, device), 1, warmup=1, device=device)[0]
    while n > 256 and small * (n / 256) ** 3 > MATMUL_CALL_BUDGET:
        n //= 2
    t = time_fn(_square_matmul(n, dtype, device), min_run_time=pick(fast=0.2, full=1.0), device=device)
    return 2 * n**3 / t.median / 1e9


@lru_cache(maxsize=4)
def machine(device: str | None = None) -> Ceilings:
    """Copy and read bandwidth and fp32 / bf16 matmul ceilings of ``device`` (default: the CPU).

    Measured once per process, then cached. bf16 is left out where the device lacks it.
    """
    dev = torch.device(device or "cpu")
    gflops = {"float32": matmul_gflops(torch.float32, dev)}
    try:
        gflops["bfloat16"] = matmul_gflops(torch.bfloat16, dev)
    except RuntimeError:
        pass
    copy, read = memory_bandwidth(dev), memory_bandwidth(dev, pattern="read")
    return Ceilings(device=str(dev), bandwidth_gbs=copy, read_gbs=read, matmul_gflops=gflops)


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: lower-or-equal cost and higher score.

    Sorted by cost; this is the accuracy/cost frontier of ``sec-measuring-frontier``.
    """
    if len(costs) != len(scores):
        raise ValueError(f"costs and scores must have equal length, got {len(costs)} and {len(scores)}")
    front, best = [], float("-inf")
    for i in sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i])):
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front


# --- language-model decoding ------------------------------------------------------------------


def decode_tokens_per_s(model: nn.Module, input_ids: torch.Tensor, new_tokens: int = 32,
                        repeats: int = 3) -> float:  # fmt: skip
    """Greedy decode speed of a Hugging Face causal LM, prefill excluded.

    Times ``generate`` for 1 and for ``new_tokens + 1`` tokens (forced, no early stop) and
    divides the extra tokens by the extra time; the best of ``repeats`` runs is kept.
    """
    if new_tokens <= 0 or repeats <= 0:
        raise ValueError(f"new_tokens and repeats must be positive, got {new_tokens}, {repeats}")
    dev = model_device(model)
    input_ids = input_ids.to(dev)

    def run(n: int) -> None:
        model.generate(input_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=model.config.eos_token_id)  # fmt: skip

    def seconds(n: int) -> float:
        return min(call_times(lambda: run(n), repeats, device=dev))

    run(new_tokens + 1)  # warm-up
    return new_tokens / (seconds(new_tokens + 1) - seconds(1))


def compare_tokens_per_s(runs: dict[str, Callable[[int], Any]], new_tokens: int = 32, rounds: int = 3,
                         device: torch.device | str | None = None) -> dict[str, float]:  # fmt: skip
    """Tokens per second of each generator in ``runs`` (``run(n)`` makes ``n`` new tokens), prefill excluded, timed
    interleaved: in each of ``rounds`` rounds every run makes ``new_tokens + 1`` tokens and 1 token in turn, and its
    speed is the extra tokens over the extra time, from the median time of each length over the rounds, so a slow
    moment of the machine hits every run alike (the interleaving of :func:`compare_latency`)."""
    if rounds <= 0 or new_tokens <= 0:
        raise ValueError(f"rounds and new_tokens must be positive, got {rounds}, {new_tokens}")
    for run in runs.values():
        run(2)  # warm-up: the first call of each pays for allocations and caches
    long: dict[str, list[float]] = {name: [] for name in runs}
    short: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            long[name] += call_times(lambda run=run: run(new_tokens + 1), 1, device=device)
            short[name] += call_times(lambda run=run: run(1), 1, device=device)
    # medians of each length first: one slow 1-token call cannot turn a round's difference negative
    extra = {name: statistics.median(long[name]) - statistics.median(short[name]) for name in runs}
    if any(seconds <= 0 for seconds in extra.values()):
        raise RuntimeError(f"new_tokens: {new_tokens} more tokens took no measurable time for {extra}; time more "
                           "tokens or rounds")  # fmt: skip
    return {name: new_tokens / seconds for name, seconds in extra.items()}
