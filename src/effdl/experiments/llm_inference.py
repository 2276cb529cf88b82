"""The experiments of ``chap-infer`` (``notebooks/10_llm_inference.ipynb``): generating tokens fast with the book's
char-level GPT and SmolLM2-135M, on :func:`effdl.device` (SmolLM2's quantized kernels are CPU-only, so its
weight-format comparison runs on the CPU).

Every speed is a ratio measured in one run, its arms interleaved where they are short; every comparison of
outputs is token for token against plain greedy decoding.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from effdl import bench as measure_bench
from effdl import claims, data, infer, lm, models, zoo
from effdl.config import cache_dir, device, pick, seed_everything
from effdl.experiments import distillation_lm
from effdl.experiments._shared import speed_comparison  # noqa: F401 (the notebook's words for a speed ratio)
from effdl.quant import llm

NOTEBOOK = "10_llm_inference"

CHAR_GPT = "gpt-shakespeare"
PROMPT = "The capital of France is a city that"  # SmolLM2's prompt where the text does not matter
SMOL_NEW_TOKENS = pick(fast=32, full=256)  # new tokens of the cache-vs-recompute run on SmolLM2
SMOL_PROMPT_CHARS = 256  # its prompt: a passage of the test split (about 70 SmolLM2 tokens), as a chat turn might be
CACHE_TARGET = 5.0  # the book's aim: the KV cache at least 5x faster than recomputing, 256 new tokens on SmolLM2
DECODE_TARGET = 1.5  # the book's aim: a decode loop at least 1.5x plain Hugging Face generate's tokens/s
BATCHES = pick(fast=(1, 32), full=(1, 2, 4, 8, 16, 32, 64))  # decode batch sizes on the roofline
FORMATS = ("fp32", "int8 weights", "int4 weights (g64)")  # weight formats of chap-quant-llm in the decode loop
DECODE_STEPS = pick(fast=3, full=8)  # timed decode steps per (format, batch) and round
ROUNDS = pick(fast=1, full=3)  # interleaved rounds of SmolLM2's speed comparisons (seconds each); medians are kept
LOOP_TOKENS = pick(fast=16, full=64)  # tokens of each timed generate-vs-own-loop run
TIMING_ROUNDS = pick(fast=5, full=9)  # interleaved rounds of the char GPT's short timings
SERVING_ROUNDS = pick(fast=7, full=3)  # interleaved rounds of the char GPT's workloads (about 30 ms each in fast mode)


def char_gpt() -> models.GPT:
    """The trained char-level GPT of ``chap-quant-llm``, in eval mode on :func:`effdl.device`."""
    return zoo.pretrained(CHAR_GPT).model.eval().to(device())


@functools.cache
def smollm2() -> tuple[nn.Module, object]:
    """SmolLM2-135M (fp32, eval) on the CPU and its tokenizer, loaded once per process; its end-of-text token is
    switched off for generation so every run makes the tokens it asks for."""
    model, tokenizer = models.smollm2()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    return model, tokenizer


def smol_prompt(text: str = PROMPT) -> torch.Tensor:
    """``text`` in SmolLM2 tokens, ``(1, time)``."""
    return smollm2()[1](text, return_tensors="pt").input_ids


def held_out_prompts(count: int, chars: int, seed: int = 0) -> list[str]:
    """``count`` stretches of ``chars`` characters from random places of the Shakespeare test split."""
    text = data.shakespeare().text("test")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(text) - chars, (count,), generator=gen).tolist()
    return [text[s : s + chars] for s in starts]


def seconds(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of one call of ``fn`` and what it returned."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# --- recompute against the KV cache (sec-infer-cache) ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PositionTimes:
    """Milliseconds of one new token at each position: recomputing the whole sequence, or one cached step."""

    positions: list[int]
    recompute_ms: list[float]
    cached_ms: list[float]


def position_times(model: models.GPT, positions: list[int] | None = None) -> PositionTimes:
    """Time one new token of the char GPT at each of ``positions`` (default: up to its context), both ways, each
    position's two arms interleaved."""
    context = model.cfg.context
    positions = positions or sorted({1, *range(context // 8, context + 1, context // 8)})
    idx = torch.randint(0, model.cfg.vocab_size, (1, context), device=device())
    recompute, cached = [], []
    for p in positions:
        arms = {"recompute": lambda p=p: model(idx[:, :p]), "cached": gpt_step(model, p - 1)}
        with torch.no_grad():
            ms = measure_bench.compare_calls(arms, rounds=TIMING_ROUNDS, device=device())
        recompute.append(ms["recompute"] * 1e3)
        cached.append(ms["cached"] * 1e3)
    return PositionTimes(positions, recompute, cached)


@dataclasses.dataclass(frozen=True)
class WholeRun:
    """Seconds to generate the same new tokens by recomputing and with the cache, and whether they agree."""

    new_tokens: int
    recompute_s: float
    cached_s: float
    same_tokens: bool

    @property
    def speedup(self) -> float:
        return self.recompute_s / self.cached_s


def char_gpt_run(model: models.GPT) -> WholeRun:
    """The char GPT generating its context minus an 8-character prompt, greedy: :meth:`GPT.generate` (recompute)
    against :func:`effdl.infer.generate` (cached), median seconds of interleaved runs."""
    prompt = data.shakespeare().split("test")[None, :8].to(device())
    new = model.cfg.context - prompt.shape[1]
    runs = {"recompute": lambda: model.generate(prompt, new), "cached": lambda: infer.generate(model, prompt, new)}
    median = measure_bench.compare_calls(runs, rounds=TIMING_ROUNDS, device=device())
    recompute_s, cached_s = median["recompute"], median["cached"]
    same = torch.equal(model.generate(prompt, new), infer.generate(model, prompt, new))
    return WholeRun(new, recompute_s, cached_s, same)


def smol_run(new_tokens: int = SMOL_NEW_TOKENS) -> WholeRun:
    """SmolLM2's greedy ``new_tokens`` after a test passage of :data:`SMOL_PROMPT_CHARS` characters by Hugging Face
    ``generate`` without and with its cache (``use_cache=False`` / ``True``), after one short warm-up call of
    each."""
    model, ids = smollm2()[0], smol_prompt(held_out_prompts(1, SMOL_PROMPT_CHARS)[0])

    def run(use_cache: bool, tokens: int) -> torch.Tensor:
        return hf_generate(model, ids, tokens, use_cache=use_cache)

    for use_cache in (False, True):
        run(use_cache, 2)
    recompute_s, slow = seconds(lambda: run(False, new_tokens))
    cached_s, fast = seconds(lambda: run(True, new_tokens))
    return WholeRun(new_tokens, recompute_s, cached_s, torch.equal(slow, fast))


def cache_bytes_check(tokens: int = 50, batch: int = 3) -> tuple[int, int]:
    """``(bytes of the cache's tensors, bytes by the formula)`` for SmolLM2's ``DynamicCache`` after a prefill of
    ``tokens`` tokens in ``batch`` rows (fp32: 4 bytes a value). (The book's :class:`KVCache` is allocated by the
    formula, so counting its bytes would check nothing.)"""
    from transformers import DynamicCache

    smol = smollm2()[0]
    cache = DynamicCache(config=smol.config)
    with torch.no_grad():
        smol(torch.zeros(batch, tokens, dtype=torch.long), cache=cache, use_cache=True)
    tensors = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
    return tensors, lm.kv_cache_bytes(smol.config, tokens, batch, 4)


def check_cache(char: WholeRun, smol: WholeRun, sizes: tuple[int, int]) -> None:
    """The claims of ``sec-infer-cache``: identical tokens both ways, the formula exact, the cache's speed-up (fast
    mode's char GPT, two layers of width 64 over 64 positions, is too small for the cache to pay: there it may be at
    most a quarter slower than recomputing)."""
    for name, run in (("char GPT", char), ("SmolLM2", smol)):
        claims.claim(f"{name}: cached greedy tokens equal recomputed ones", float(run.same_tokens), "==",
                     full=1.0, fast=1.0)  # fmt: skip
    claims.claim("SmolLM2 KV cache bytes after a prefill / formula", sizes[0] / sizes[1], "==", full=1.0, fast=1.0)
    claims.claim(f"char GPT cache speed-up, {char.new_tokens} new tokens", char.speedup, ">=", full=2.0, fast=0.8,
                 unit="x")  # fmt: skip
    claims.claim(f"SmolLM2 cache speed-up, {smol.new_tokens} new tokens", smol.speedup, ">=", full=CACHE_TARGET,
                 fast=1.3, unit="x")  # fmt: skip
    claims.target(f"SmolLM2 KV cache vs recompute, {smol.new_tokens} new tokens", smol.speedup, ">=", CACHE_TARGET,
                  unit="x", section="sec-infer-cache")  # fmt: skip


# --- decoding on the roofline (sec-infer-roofline) ---------------------------------------------------------------


@functools.cache
def formats() -> dict[str, nn.Module]:
    """SmolLM2 in each of :data:`FORMATS` on the CPU: fp32 and ``chap-quant-llm``'s int8 (per channel) and int4
    (groups of 64) weight-only linear layers, built once per process."""
    model = smollm2()[0]
    return {"fp32": model, "int8 weights": llm.weight_only(model, 8), "int4 weights (g64)": llm.weight_only(model, 4)}


def step_seconds(model: nn.Module, batch: int, steps: int = DECODE_STEPS) -> float:
    """Seconds of one greedy decode step of ``batch`` rows after a prefill of :data:`PROMPT` (not timed) and one
    untimed step."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        token = model(smol_prompt().repeat(batch, 1), cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        token = model(token, cache=cache, use_cache=True).logits.argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            token = model(token, cache=cache, use_cache=True).logits.argmax(-1)
    return (time.perf_counter() - start) / steps


def step_table(batches: tuple[int, ...] = BATCHES, rounds: int = ROUNDS) -> dict[tuple[str, int], float]:
    """``(format, batch) -> seconds per decode step``, the median of ``rounds`` rounds that each time every format
    at every batch size in turn."""
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for batch in batches:
            for label, model in formats().items():
                times.setdefault((label, batch), []).append(step_seconds(model, batch))
    return {key: statistics.median(t) for key, t in times.items()}


def linear_weights() -> int:
    """Weights of SmolLM2's linear layers (the output head included): a decode step multiplies each by every row."""
    return sum(m.weight.numel() for m in smollm2()[0].modules() if isinstance(m, nn.Linear))


def roofline_points(table: dict[tuple[str, int], float], label: str = "fp32") -> dict[str, tuple[float, float]]:
    """``"batch B" -> (FLOP per byte, achieved GFLOP/s)`` of one decode step in format ``label``: two FLOPs per
    linear weight and row, over the weight bytes read once per step (the attention over a short prompt is left
    out: under 1 % of either)."""
    flops_per_row, weight_bytes = 2 * linear_weights(), llm.decode_weight_bytes(formats()[label])
    return {f"batch {b}": (flops_per_row * b / weight_bytes, flops_per_row * b / s / 1e9)
            for (name, b), s in table.items() if name == label}  # fmt: skip


def tokens_per_s(table: dict[tuple[str, int], float], label: str) -> dict[int, float]:
    """``batch -> tokens/s`` of format ``label``: rows over the step time."""
    return {b: b / s for (name, b), s in table.items() if name == label}


def format_speedups(table: dict[tuple[str, int], float], label: str) -> dict[int, float]:
    """``batch -> step-time speed-up of format ``label`` over fp32``."""
    return {b: table[("fp32", b)] / s for (name, b), s in table.items() if name == label}


def check_roofline(table: dict[tuple[str, int], float]) -> None:
    """The claims of ``sec-infer-roofline``: batching multiplies the tokens per second of a memory-bound step, and
    weight-only quantization pays most where the step is memory bound (batch 1)."""
    fp32, largest = tokens_per_s(table, "fp32"), max(BATCHES)
    claims.claim(f"SmolLM2 fp32 tokens/s, batch {largest} / batch 1", fp32[largest] / fp32[1], ">=", full=8.0,
                 fast=2.0, unit="x")  # fmt: skip
    int8 = format_speedups(table, "int8 weights")
    claims.claim(f"int8-weight speed-up at batch 1 / at batch {largest}", int8[1] / int8[largest], ">=", full=1.3,
                 fast=1.1, unit="x")  # fmt: skip


# --- the production path and our own loop (sec-infer-production) -------------------------------------------------


def hf_generate(model: nn.Module, ids: torch.Tensor, tokens: int, **kwargs) -> torch.Tensor:
    """Hugging Face ``generate``, greedy, ``tokens`` new tokens."""
    return model.generate(ids, max_new_tokens=tokens, do_sample=False, attention_mask=torch.ones_like(ids),
                          **kwargs)  # end of text is off (smollm2()): every run makes all its tokens


@torch.no_grad()
def own_loop(model: nn.Module, ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """Greedy decoding in a dozen lines: one prefill into a ``DynamicCache``, then one forward pass per token."""
    from transformers import DynamicCache

    cache, out = DynamicCache(config=model.config), [ids]
    logits = model(ids, cache=cache, use_cache=True).logits[:, -1:]
    for step in range(tokens):
        out.append(logits.argmax(-1))
        if step + 1 < tokens:
            logits = model(out[-1], cache=cache, use_cache=True).logits
    return torch.cat(out, dim=1)


def compiled_static(model: nn.Module) -> tuple[nn.Module, float]:
    """A copy of ``model`` whose forward pass is ``torch.compile``d, for ``generate`` with a static cache
    (``cache_implementation="static"``), and the seconds its first call took (compiling it)."""
    import copy

    compiled = copy.deepcopy(model)
    compiled.forward = torch.compile(compiled.forward, dynamic=False)
    first, _ = seconds(lambda: hf_generate(compiled, smol_prompt(), 3, cache_implementation="static"))
    return compiled, first


COMPILE = pick(fast=False, full=True)  # compiling SmolLM2 takes about 30 s on a 2-core CPU: full mode only


def decoders() -> tuple[dict[str, Callable[[int], torch.Tensor]], float | None]:
    """The single-stream decoders ``sec-infer-production`` compares (``run(n)`` makes ``n`` tokens of
    :data:`PROMPT`) and the compile time of the compiled one (None when :data:`COMPILE` is off)."""
    model, ids = smollm2()[0], smol_prompt()
    runs = {
        "HF generate": functools.partial(hf_generate, model, ids),
        "HF generate, static cache": functools.partial(hf_generate, model, ids, cache_implementation="static"),
        "own loop": functools.partial(own_loop, model, ids),
        "own loop, int8 weights": functools.partial(own_loop, formats()["int8 weights"], ids),
    }
    if not COMPILE:
        return runs, None
    compiled, compile_s = compiled_static(model)
    runs["HF generate, static cache + compile"] = functools.partial(hf_generate, compiled, ids,
                                                                    cache_implementation="static")  # fmt: skip
    return runs, compile_s


def same_greedy_tokens(runs: dict[str, Callable[[int], torch.Tensor]], tokens: int = LOOP_TOKENS) -> dict[str, bool]:
    """Whether each decoder's ``tokens`` greedy tokens equal plain ``generate``'s."""
    reference = runs["HF generate"](tokens)
    return {name: torch.equal(run(tokens), reference) for name, run in runs.items()}


def read_bound(decoder: str = "HF generate") -> float:
    """Tokens/s if a batch-1 step of ``decoder`` (one of :func:`decoders`) only read its weights once at the CPU's
    read bandwidth."""
    label = "int8 weights" if "int8" in decoder else "fp32"
    return measure_bench.machine("cpu").read_gbs * 1e9 / llm.decode_weight_bytes(formats()[label])


def check_production(speeds: dict[str, float], same: dict[str, bool]) -> None:
    """The claims of ``sec-infer-production``: every fp32 decoder writes generate's tokens, none beats the read
    bound, our fp32 loop is no faster than ``generate`` beyond noise, and int8 weights in the loop reach the book's
    1.5x over plain ``generate``."""
    fp32_same = [ok for name, ok in same.items() if "int8" not in name]
    claims.claim("fp32 decoders writing generate's greedy tokens (share)", sum(fp32_same) / len(fp32_same), "==",
                 full=1.0, fast=1.0)  # fmt: skip
    best_fp32 = max(v for name, v in speeds.items() if "int8" not in name)
    claims.claim("fastest fp32 decoder / read-bandwidth bound", best_fp32 / read_bound(), "<=", full=1.0, fast=1.0)
    int8 = "own loop, int8 weights"
    claims.claim("int8 loop / its read-bandwidth bound", speeds[int8] / read_bound(int8), "<=", full=1.0, fast=1.0)
    claims.claim("own fp32 loop / HF generate (tokens/s): no faster beyond noise", speeds["own loop"]
                 / speeds["HF generate"], "<=", full=1.25, fast=1.25, unit="x")  # fmt: skip
    ratio = speeds["own loop, int8 weights"] / speeds["HF generate"]
    claims.claim("own loop with int8 weights / HF generate (tokens/s)", ratio, ">=", full=DECODE_TARGET, fast=1.2,
                 unit="x")  # fmt: skip
    claims.target("SmolLM2 decode, own loop with int8 weights / plain HF generate (fp32)", ratio, ">=",
                  DECODE_TARGET, unit="x", section="sec-infer-production")  # fmt: skip


# --- static against continuous batching (sec-infer-batching) -----------------------------------------------------

REQUESTS = pick(fast=16, full=128)  # requests of the mixed-length workload
MAX_BATCH = 8  # rows of both schedulers
SMOL_REQUESTS = pick(fast=8, full=16)  # SmolLM2's requests, continuous batching against one at a time
SMOL_LENGTHS = pick(fast=(4, 16), full=(8, 64))  # their new tokens: log-uniform between these
BATCHING_TARGET = 2.0  # the book's aim: continuous batching at least 2x static batching's tokens/s


def workload(count: int = REQUESTS, context: int | None = None, seed: int = 0) -> list[infer.Request]:
    """``count`` requests for the char GPT: prompts of the test split of 1/16 to 1/4 of its ``context`` characters,
    and new tokens spread log-uniformly from 4 to the rest of the context (most short, a few long, as chat
    answers are), all arriving at once."""
    context = context or char_gpt().cfg.context
    corpus = data.shakespeare().split("test")
    gen = torch.Generator().manual_seed(seed)
    requests = []
    for _ in range(count):
        prompt = int(torch.randint(context // 16, context // 4 + 1, (), generator=gen))
        longest = context - context // 4
        new = int(4 * (longest / 4) ** float(torch.rand((), generator=gen)))
        start = int(torch.randint(len(corpus) - prompt, (), generator=gen))
        requests.append(infer.Request(corpus[start : start + prompt], new))
    return requests


@dataclasses.dataclass(frozen=True)
class Schedule:
    """One scheduler's run of a workload: wall seconds, tokens, scheduler steps (decode passes, each request's
    prefill counted in the step it joins), and each request's seconds to its first token and to its last."""

    seconds: float
    tokens: int
    steps: int
    first_token_s: list[float]
    finished_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def percentile(self, which: str, q: float) -> float:
        """The ``q`` quantile (0 to 1) of ``first_token_s`` or ``finished_s``."""
        return float(torch.tensor(getattr(self, which)).quantile(q))


def compare_schedules(runs: dict[str, Callable[[], list[infer.Served]]], rounds: int = ROUNDS,
                      warm_up: dict[str, Callable[[], object]] | None = None) -> dict[str, Schedule]:  # fmt: skip
    """Each scheduler of ``runs`` (one run serves the whole workload) timed in ``rounds`` interleaved rounds, after
    the ``warm_up`` calls; each keeps its round of median seconds. Greedy, every scheduler must write the same
    tokens for every request."""
    for call in (warm_up or {}).values():
        call()
    kept: dict[str, list[Schedule]] = {name: [] for name in runs}
    tokens = {}
    for _ in range(rounds):
        for name, run in runs.items():
            wall, served = seconds(run)
            tokens[name] = [s.tokens for s in served]
            steps = 1 + max(s.finished_step for s in served)
            kept[name].append(Schedule(wall, sum(len(s.tokens) for s in served), steps,
                                       [s.first_token_s for s in served], [s.finished_s for s in served]))  # fmt: skip
    if any(t != next(iter(tokens.values())) for t in tokens.values()):
        raise AssertionError(f"the schedulers {list(runs)} wrote different tokens for the same requests")
    return {name: sorted(k, key=lambda r: r.seconds)[len(k) // 2] for name, k in kept.items()}


def static_vs_continuous(model: models.GPT, requests: list[infer.Request]) -> dict[str, Schedule]:
    """The workload served by static batching and by continuous batching, both :data:`MAX_BATCH` rows."""
    budget = MAX_BATCH * model.cfg.context // 4  # room for several prompts to join in one step
    runs = {
        "static": lambda reqs=requests: infer.static_batching(model, reqs, MAX_BATCH),
        "continuous": lambda reqs=requests: infer.ContinuousBatcher(model, MAX_BATCH, budget).run(reqs),
    }
    warm_up = {name: functools.partial(run, requests[:MAX_BATCH]) for name, run in runs.items()}
    return compare_schedules(runs, rounds=SERVING_ROUNDS, warm_up=warm_up)


def smol_requests(count: int = SMOL_REQUESTS, seed: int = 0) -> list[infer.Request]:
    """``count`` SmolLM2 requests: test-split prompts of 64 characters, :data:`SMOL_LENGTHS` new tokens."""
    gen, (low, high) = torch.Generator().manual_seed(seed), SMOL_LENGTHS
    lengths = [int(low * (high / low) ** float(torch.rand((), generator=gen))) for _ in range(count)]
    tokenizer = smollm2()[1]
    return [infer.Request(tokenizer(text, return_tensors="pt").input_ids[0], n)
            for text, n in zip(held_out_prompts(count, 64, seed), lengths, strict=True)]  # fmt: skip


def smol_batching(requests: list[infer.Request]) -> dict[str, Schedule]:
    """SmolLM2 serving ``requests`` one at a time and by continuous batching over :data:`MAX_BATCH` rows."""
    model = smollm2()[0]
    return compare_schedules({
        "one at a time": lambda: infer.ContinuousBatcher(model, 1, 1024).run(requests),
        "continuous": lambda: infer.ContinuousBatcher(model, MAX_BATCH, 1024).run(requests),
    }, warm_up={"both": lambda: infer.ContinuousBatcher(model, 2, 1024).run(requests[:2])})


def check_batching(char: dict[str, Schedule], smol: dict[str, Schedule]) -> None:
    """The claims of ``sec-infer-batching`` and the book's target for it."""
    steps = char["static"].steps / char["continuous"].steps
    claims.claim(f"static / continuous batching scheduler steps, {REQUESTS} requests", steps, ">=", full=1.8,
                 fast=1.3, unit="x")  # fmt: skip
    ratio = char["continuous"].tokens_per_s / char["static"].tokens_per_s
    claims.claim(f"continuous / static batching tokens/s, {REQUESTS} requests", ratio, ">=", full=1.5, fast=1.1,
                 unit="x")  # fmt: skip
    claims.target(f"continuous / static batching, {REQUESTS} mixed-length requests", ratio, ">=", BATCHING_TARGET,
                  unit="x", section="sec-infer-batching")  # fmt: skip
    claims.claim("continuous batching's time ratio / its step ratio (joins cost a prefill pass)", ratio / steps,
                 "<=", full=1.0, fast=1.0)  # fmt: skip
    p50 = char["static"].percentile("finished_s", 0.5) / char["continuous"].percentile("finished_s", 0.5)
    claims.claim("static / continuous median request latency", p50, ">=", full=1.5, fast=1.1, unit="x")
    smol_ratio = smol["continuous"].tokens_per_s / smol["one at a time"].tokens_per_s
    claims.claim(f"SmolLM2 continuous batching ({MAX_BATCH} rows) / one at a time", smol_ratio, ">=", full=2.5,
                 fast=1.5, unit="x")  # fmt: skip


# --- the paged cache (sec-infer-paged) ---------------------------------------------------------------------------

BLOCK = pick(fast=8, full=16)  # positions per block
CONTIGUOUS_ROWS = 4  # rows of the contiguous cache whose memory both caches get in the equal-memory comparison
PAGED_ROWS = 4 * CONTIGUOUS_ROWS  # rows sharing the paged cache of that memory


class RecordedPagedCache(infer.PagedKVCache):
    """A :class:`~effdl.infer.paged.PagedKVCache` that records, at every forward pass, the blocks its sequences
    hold and the positions they fill."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[tuple[int, int]] = []  # (blocks held, positions filled) per forward pass

    def prepare(self, rows: torch.Tensor, ends: torch.Tensor) -> None:
        super().prepare(rows, ends)
        filled = int(self.lengths.sum() - self.lengths[rows].sum() + ends.sum())
        self.history.append((sum(len(t) for t in self.tables), filled))


@dataclasses.dataclass(frozen=True)
class Memory:
    """Cache memory over a run, in positions: what a contiguous cache reserves, what the paged blocks hold and
    what the sequences fill, at every forward pass."""

    reserved: int
    held: list[int]
    filled: list[int]
    block: int

    @property
    def paged_waste(self) -> float:
        """Share of the paged blocks' positions left empty, at the pass holding the most blocks."""
        peak = max(range(len(self.held)), key=self.held.__getitem__)
        return 1 - self.filled[peak] / self.held[peak]

    @property
    def contiguous_waste(self) -> float:
        """Share of the contiguous reservation left empty at that same pass."""
        peak = max(range(len(self.held)), key=self.held.__getitem__)
        return 1 - self.filled[peak] / self.reserved


def paged_memory(model: models.GPT, requests: list[infer.Request]) -> Memory:
    """The workload on a paged cache with blocks for every row's whole context (so memory never limits it), its
    memory recorded; the contiguous cache of the same rows reserves the whole context for each."""
    context = model.cfg.context
    cache = RecordedPagedCache(model.cfg, MAX_BATCH, blocks=MAX_BATCH * context // BLOCK, block_size=BLOCK,
                               device=device())  # fmt: skip
    infer.ContinuousBatcher(model, MAX_BATCH, MAX_BATCH * context // 4, cache=cache).run(requests)
    held, filled = zip(*cache.history, strict=True)
    return Memory(MAX_BATCH * context, [h * BLOCK for h in held], list(filled), BLOCK)


def equal_memory(model: models.GPT, requests: list[infer.Request]) -> dict[str, Schedule]:
    """The workload served by continuous batching with the memory of a contiguous cache of
    :data:`CONTIGUOUS_ROWS` rows: those rows, or a paged cache of as many positions in blocks shared by
    :data:`PAGED_ROWS` rows (a request starts only when the blocks of its whole run are free), each after a
    warm-up run. Both caches are allocated once and reused by every run, so neither arm times an allocation."""
    context = model.cfg.context
    budget = CONTIGUOUS_ROWS * context  # room for several prompts to join in one step
    contiguous = infer.KVCache(model.cfg, CONTIGUOUS_ROWS, device=device())
    paged = infer.PagedKVCache(model.cfg, PAGED_ROWS, blocks=CONTIGUOUS_ROWS * context // BLOCK,
                               block_size=BLOCK, device=device())  # fmt: skip
    runs = {
        "contiguous": lambda: infer.ContinuousBatcher(model, CONTIGUOUS_ROWS, budget, cache=contiguous).run(requests),
        "paged": lambda: infer.ContinuousBatcher(model, PAGED_ROWS, budget, cache=paged).run(requests),
    }
    return compare_schedules(runs, rounds=SERVING_ROUNDS, warm_up=runs)


def check_paged(memory: Memory, same_memory: dict[str, Schedule]) -> None:
    """The claims of ``sec-infer-paged``: a paged cache never holds more than one partly filled block per running
    sequence, wastes far less than a contiguous one, and serves more at equal memory."""
    worst = max((h - f) / memory.block for h, f in zip(memory.held, memory.filled, strict=True))
    claims.claim("paged cache: empty positions / block size, worst pass (at most the rows)", worst, "<=",
                 full=MAX_BATCH, fast=MAX_BATCH)  # fmt: skip
    claims.claim("contiguous waste / paged waste at the paged peak", memory.contiguous_waste / memory.paged_waste,
                 ">=", full=3.0, fast=2.0, unit="x")  # fmt: skip
    steps = same_memory["contiguous"].steps / same_memory["paged"].steps
    claims.claim("contiguous / paged scheduler steps at equal cache memory", steps, ">=", full=1.5, fast=1.2, unit="x")
    ratio = same_memory["paged"].tokens_per_s / same_memory["contiguous"].tokens_per_s
    claims.claim("paged / contiguous tokens/s at equal cache memory", ratio, ">=", full=1.05, fast=1.05, unit="x")
    claims.claim("paged cache's time ratio / its step ratio (block gathering costs)", ratio / steps, "<=", full=1.0,
                 fast=1.0)  # fmt: skip


# --- speculative decoding (sec-infer-speculative) ----------------------------------------------------------------

GAMMAS = pick(fast=(1, 4), full=(1, 2, 4, 8))  # proposals per target pass
SPEC_PROMPTS = pick(fast=2, full=4)  # test prompts each method continues
SPEC_TOKENS = pick(fast=24, full=96)  # new tokens per prompt
SPEC_TARGET = 1.5  # the book's aim: speculative decoding at least 1.5x the target alone, identical greedy output
DRAFT_SHAPE = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2}  # fmt: skip
DRAFT_TEXT = pick(fast=(16, 32), full=(128, 128))  # (streams, new tokens each) SmolLM2 writes for its draft
DRAFT_PROMPT = 16  # real tokens that start each stream
DRAFT_STEPS = pick(fast=40, full=200)  # the draft's optimizer steps, 16 streams each (about 1 s each on a 2-core CPU)
DRAFT_LR = 3e-3


def speedup_formula(alpha: float, gamma: int, c: float, verify: float = 1.0) -> float:
    """Expected speed-up of speculative decoding (Leviathan et al., 2023): tokens per target pass,
    ``(1 - alpha^(gamma+1)) / (1 - alpha)``, over the cost of ``gamma`` draft steps and one verifying pass, in
    target steps: ``gamma c + verify`` (``alpha`` the chance a proposal is accepted, ``c`` a draft step's cost over
    a target step's, ``verify`` the cost of the target's pass over ``gamma + 1`` positions over one position's,
    which the paper takes as 1)."""
    if not 0 <= alpha <= 1 or gamma < 1 or c < 0 or verify <= 0:
        raise ValueError(f"alpha must be in [0, 1], gamma >= 1, c >= 0, verify > 0; got {alpha}, {gamma}, {c}, "
                         f"{verify}")  # fmt: skip
    tokens = gamma + 1 if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tokens / (gamma * c + verify)


def verify_costs(model: nn.Module, positions: tuple[int, ...]) -> dict[int, float]:
    """``k -> seconds of a cached forward pass of the Hugging Face causal LM over k positions / over one``, after a
    16-token prompt: the price of verifying ``k - 1`` proposals in one pass (median of 5 calls of :func:`hf_step`
    each)."""
    seconds_by_k = {k: statistics.median(measure_bench.call_times(hf_step(model, k), 5, warmup=1))
                    for k in sorted({1, *positions})}  # fmt: skip
    return {k: t / seconds_by_k[1] for k, t in seconds_by_k.items()}


@dataclasses.dataclass(frozen=True)
class Speculation:
    """One speculative decoder over the prompts: its seconds, the target alone's, and the acceptance rate."""

    gamma: int
    seconds: float
    baseline_s: float
    alpha: float

    @property
    def speedup(self) -> float:
        return self.baseline_s / self.seconds


def _spec_sweep(generate: Callable[[torch.Tensor, int], infer.Speculated], baseline: Callable[[torch.Tensor], list],
                prompts: list[torch.Tensor], gammas: tuple[int, ...]) -> dict[int, Speculation]:  # fmt: skip
    """Each ``gamma`` of ``generate(prompt, gamma)`` against ``baseline(prompt)`` (the target's greedy new tokens)
    over ``prompts``, interleaved prompt by prompt; every output must equal the baseline's."""
    base_s, spent = 0.0, dict.fromkeys(gammas, 0.0)
    accepted, rejections = dict.fromkeys(gammas, 0), dict.fromkeys(gammas, 0)
    for prompt in prompts:
        wall, reference = seconds(lambda prompt=prompt: baseline(prompt))
        base_s += wall
        for g in gammas:
            wall, result = seconds(lambda prompt=prompt, g=g: generate(prompt, g))
            if result.tokens.tolist() != reference:
                raise AssertionError(f"speculative decoding at gamma={g} changed the greedy output")
            spent[g] += wall
            accepted[g], rejections[g] = accepted[g] + result.accepted, rejections[g] + result.rejections
    alpha = {g: accepted[g] / max(accepted[g] + rejections[g], 1) for g in gammas}  # as Speculated.acceptance
    return {g: Speculation(g, spent[g], base_s, alpha[g]) for g in gammas}


def char_pair() -> tuple[models.GPT, models.GPT]:
    """The char GPT and its draft, ``chap-distill-lm``'s token-KD student (about four times fewer weights; the KD
    term the whole loss, that chapter's default)."""
    draft = distillation_lm.student("token KD")
    return char_gpt(), draft.eval().to(device())


def char_speculation(target: models.GPT, draft: models.GPT) -> dict[int, Speculation]:
    """Greedy speculative decoding of the char GPT with its draft at every :data:`GAMMAS`, on test prompts of 8
    characters, each continued to the context."""
    corpus, context = data.shakespeare().split("test"), target.cfg.context
    prompts = [corpus[None, s : s + 8].to(device()) for s in range(0, 4000 * SPEC_PROMPTS, 4000)]
    new = context - 8
    return _spec_sweep(lambda p, g: infer.speculative_generate(target, draft, p, new, g),
                       lambda p: infer.generate(target, p, new)[0, 8:].tolist(), prompts, GAMMAS)  # fmt: skip


def step_cost_ratio(draft_step: Callable[[], object], target_step: Callable[[], object]) -> float:
    """``c``: a draft step's median seconds over a target step's, the two timed interleaved."""
    draft_s, target_s = [], []
    for _ in range(3):
        draft_s.append(measure_bench.time_fn(draft_step).median)
        target_s.append(measure_bench.time_fn(target_step).median)
    return statistics.median(draft_s) / statistics.median(target_s)


def gpt_step(model: models.GPT, position: int = 8) -> Callable[[], object]:
    """One cached decode step of the book's GPT at ``position`` (0-based: ``position`` tokens cached before it; the
    cache rewound before each)."""
    cache = infer.KVCache(model.cfg, 1, dtype=model.tok_emb.weight.dtype, device=device())
    idx = torch.zeros(1, position + 1, dtype=torch.long, device=device())
    if position:
        infer.forward_cached(model, idx[:, :position], cache)

    def step() -> None:
        cache.lengths[0] = position
        infer.forward_cached(model, idx[:, position:], cache)

    return step


def hf_step(model: nn.Module, positions: int = 1) -> Callable[[], object]:
    """One cached forward pass of a Hugging Face causal LM over ``positions`` new positions after a 16-token prompt
    (its cache cropped back to the prompt before each)."""
    from transformers import DynamicCache

    cache, ids = DynamicCache(config=model.config), torch.zeros(1, 16 + positions, dtype=torch.long)
    with torch.no_grad():
        model(ids[:, :16], cache=cache, use_cache=True)

    def step() -> None:
        if cache.get_seq_length() > 16:
            cache.crop(16 - cache.get_seq_length())
        with torch.no_grad():
            model(ids[:, 16:], cache=cache, use_cache=True)

    return step


def _token_stream(split: str) -> torch.Tensor:
    """The start of the Shakespeare ``split`` in SmolLM2 tokens (enough for the draft's streams and prompts)."""
    text = data.shakespeare().text(split)[: 40 * DRAFT_PROMPT * max(DRAFT_TEXT[0], SPEC_PROMPTS) + 1000]
    return smollm2()[1](text, return_tensors="pt").input_ids[0]


def draft_text(batch: int = 32) -> torch.Tensor:
    """:data:`DRAFT_TEXT`'s streams ``(streams, DRAFT_PROMPT + new)``: SmolLM2's greedy continuations of prompts of
    :data:`DRAFT_PROMPT` tokens from the train split, generated ``batch`` streams at a time (equal lengths, so no
    padding)."""
    streams, new = DRAFT_TEXT
    tokens = _token_stream("train")
    step = (len(tokens) - DRAFT_PROMPT) // streams
    prompts = torch.stack([tokens[i * step : i * step + DRAFT_PROMPT] for i in range(streams)])
    model = smollm2()[0]
    return torch.cat([hf_generate(model, prompts[i : i + batch], new) for i in range(0, streams, batch)])


def new_draft() -> nn.Module:
    """An untrained draft of :data:`DRAFT_SHAPE` for SmolLM2: a Llama with its tokenizer and tied embeddings,
    started from SmolLM2's own token embedding reduced to the draft's width (its top singular directions)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    smol = smollm2()[0]
    config = LlamaConfig(vocab_size=smol.config.vocab_size, max_position_embeddings=smol.config.max_position_embeddings,
                         tie_word_embeddings=True, rope_parameters=dict(smol.config.rope_parameters),
                         **DRAFT_SHAPE)  # fmt: skip
    draft = LlamaForCausalLM(config)
    embedding = smol.get_input_embeddings().weight.detach()
    _, _, directions = torch.linalg.svd(embedding, full_matrices=False)
    reduced = embedding @ directions[: config.hidden_size].T
    with torch.no_grad():
        draft.get_input_embeddings().weight.copy_(reduced / reduced.std())
    draft.generation_config.eos_token_id = None
    return draft


def train_draft(text: torch.Tensor, steps: int = DRAFT_STEPS, seed: int = 0) -> nn.Module:
    """:func:`new_draft` trained on SmolLM2's ``text`` ``(streams, length)`` to predict its next tokens after the
    prompts (sequence-level distillation, ``sec-distill-lm-sequence``): AdamW, warm-up then cosine, 16 streams a
    step."""
    seed_everything(seed)
    draft = new_draft().train()
    optimizer = torch.optim.AdamW(draft.parameters(), lr=DRAFT_LR, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, DRAFT_LR, total_steps=steps, pct_start=0.1)
    labels = text.clone()
    labels[:, :DRAFT_PROMPT] = -100  # the prompts are real text; the draft learns what SmolLM2 writes
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick_rows = torch.randint(len(text), (16,), generator=gen)
        loss = draft(text[pick_rows], labels=labels[pick_rows]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return draft.eval()


@functools.cache
def smol_draft() -> nn.Module:
    """SmolLM2's draft, trained once (:func:`train_draft` on :func:`draft_text`) and kept in the cache as
    safetensors, under a name that hashes its recipe (shape, text, steps, learning rate)."""
    from transformers import LlamaForCausalLM

    recipe = json.dumps([DRAFT_SHAPE, DRAFT_TEXT, DRAFT_PROMPT, DRAFT_STEPS, DRAFT_LR], sort_keys=True)
    where = cache_dir("llm_inference") / f"smollm2-draft-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if not (where / "model.safetensors").exists():
        train_draft(draft_text()).save_pretrained(where, safe_serialization=True)
    draft = LlamaForCausalLM.from_pretrained(where).eval()
    draft.generation_config.eos_token_id = None
    return draft


def smol_spec_prompts() -> list[torch.Tensor]:
    """:data:`SPEC_PROMPTS` prompts of :data:`DRAFT_PROMPT` SmolLM2 tokens from the test split, ``(1, time)`` each."""
    tokens = _token_stream("test")
    step = (len(tokens) - DRAFT_PROMPT) // SPEC_PROMPTS
    return [tokens[None, i * step : i * step + DRAFT_PROMPT] for i in range(SPEC_PROMPTS)]


def smol_speculation(draft: nn.Module) -> dict[int, Speculation]:
    """Greedy speculative decoding of SmolLM2 with ``draft`` at every :data:`GAMMAS`, against SmolLM2 alone (the
    chapter's own loop), :data:`SPEC_TOKENS` new tokens per prompt."""
    model = smollm2()[0]
    return _spec_sweep(
        lambda p, g: infer.speculative_generate_hf(model, p, SPEC_TOKENS, infer.DraftProposer(draft), g),
        lambda p: own_loop(model, p, SPEC_TOKENS)[0, p.shape[1] :].tolist(), smol_spec_prompts(), GAMMAS)


def library_paths(draft: nn.Module, lookup_k: int = 10) -> dict[str, tuple[float, bool]]:
    """``method -> (seconds over the prompts, greedy output equal to generate's)`` for plain ``generate``,
    ``assistant_model=draft``, ``prompt_lookup_num_tokens=lookup_k`` and the chapter's prompt lookup."""
    model = smollm2()[0]
    methods = {
        "generate": lambda p: hf_generate(model, p, SPEC_TOKENS)[0, p.shape[1] :],
        "generate, assistant_model=draft": lambda p: hf_generate(model, p, SPEC_TOKENS,
                                                                 assistant_model=draft)[0, p.shape[1] :],
        f"generate, prompt_lookup_num_tokens={lookup_k}": lambda p: hf_generate(
            model, p, SPEC_TOKENS, prompt_lookup_num_tokens=lookup_k)[0, p.shape[1] :],
        "own prompt lookup": lambda p: infer.prompt_lookup_generate(model, p, SPEC_TOKENS, k=lookup_k).tokens,
    }
    spent, same = dict.fromkeys(methods, 0.0), dict.fromkeys(methods, True)
    for prompt in smol_spec_prompts():
        reference = None
        for name, method in methods.items():
            wall, out = seconds(lambda method=method, prompt=prompt: method(prompt))
            reference = out if reference is None else reference
            spent[name] += wall
            same[name] &= torch.equal(out, reference)
    return {name: (spent[name], same[name]) for name in methods}


def check_speculation(c_char: float, smol: dict[int, Speculation], c_smol: float, verify: dict[int, float],
                      paths: dict[str, tuple[float, bool]]) -> None:  # fmt: skip
    """The claims of ``sec-infer-speculative`` and the book's targets for it: the trained draft's best speed-up and
    prompt lookup's, both with identical greedy output (fast mode's runs of a few dozen tokens, timed once, follow
    the formula only loosely)."""
    claims.claim("char GPT: its KD student's step / its step (c)", c_char, ">=", full=0.25, fast=0.25)
    claims.claim("SmolLM2 pass over 2 positions / over one (the verify cost)", verify[2], ">=", full=1.2, fast=1.1,
                 unit="x")  # fmt: skip
    off = max(abs(math.log(s.speedup / speedup_formula(s.alpha, g, c_smol, verify[g + 1]))) for g, s in smol.items())
    claims.claim("SmolLM2 speculative speed-up vs the formula with the measured verify cost, worst factor",
                 math.exp(off), "<=", full=1.5, fast=4.0, unit="x")  # fmt: skip
    same = [ok for _, ok in paths.values()]
    claims.claim("library and own speculative paths writing generate's greedy tokens (share)", sum(same) / len(same),
                 "==", full=1.0, fast=1.0)  # fmt: skip
    lookup = paths["generate"][0] / paths["own prompt lookup"][0]
    claims.claim("SmolLM2 own prompt lookup / generate", lookup, ">=", full=1.3, fast=0.7, unit="x")
    best = max(s.speedup for s in smol.values())
    claims.target("speculative decoding, SmolLM2 + trained draft / SmolLM2 alone (own loop)", best, ">=", SPEC_TARGET,
                  unit="x", section="sec-infer-speculative")  # fmt: skip
    claims.target("speculative decoding, SmolLM2 + prompt lookup (no draft) / generate", lookup, ">=", SPEC_TARGET,
                  unit="x", section="sec-infer-speculative")  # fmt: skip


# --- pitfalls (sec-infer-pitfalls) -------------------------------------------------------------------------------

PITFALL_TOKENS = pick(fast=8, full=32)  # tokens of the re-encoding and padding pitfalls
PADDED_PROMPTS = ("To be, or not to be", "Friends, Romans, countrymen, lend me your ears;", "All the world's a stage")


@dataclasses.dataclass(frozen=True)
class Reencoding:
    """A loop that turns its text back into tokens every step, against the cached loop: seconds for the same number
    of tokens, the steps whose re-encoded tokens differed from those generated, and whether the outputs agree."""

    reencode_s: float
    cached_s: float
    changed_steps: int
    same_text: bool


@torch.no_grad()
def reencoding_pitfall(tokens: int = PITFALL_TOKENS) -> Reencoding:
    """Greedy SmolLM2 from a test passage, the common mistake: each step decodes the text so far, encodes it again
    and runs the whole sequence; against :func:`own_loop`."""
    model, tokenizer = smollm2()
    ids = smol_prompt(held_out_prompts(1, SMOL_PROMPT_CHARS, seed=1)[0])
    start, text, generated, changed = time.perf_counter(), tokenizer.decode(ids[0]), ids[0].tolist(), 0
    for _ in range(tokens):
        encoded = tokenizer(text, return_tensors="pt").input_ids
        changed += encoded[0].tolist() != generated
        token = int(model(encoded).logits[0, -1].argmax())
        generated.append(token)
        text += tokenizer.decode([token])
    reencode_s = time.perf_counter() - start
    cached_s, reference = seconds(lambda: own_loop(model, ids, tokens))
    return Reencoding(reencode_s, cached_s, changed, text == tokenizer.decode(reference[0]))


def padding_pitfall(tokens: int = PITFALL_TOKENS) -> dict[str, int]:
    """``side -> rows whose greedy continuation differs from the prompt's alone``, for :data:`PADDED_PROMPTS`
    generated in one batch padded on the right and on the left (both with their attention masks)."""
    model, tokenizer = smollm2()
    alone = [hf_generate(model, tokenizer(p, return_tensors="pt").input_ids, tokens)[0, -tokens:]
             for p in PADDED_PROMPTS]  # fmt: skip
    differ = {}
    for side in ("right", "left"):
        batch = tokenizer(list(PADDED_PROMPTS), return_tensors="pt", padding=True, padding_side=side)
        out = model.generate(**batch, max_new_tokens=tokens, do_sample=False)[:, -tokens:]
        differ[side] = sum(not torch.equal(row, ref) for row, ref in zip(out, alone, strict=True))
    return differ


def first_calls(model: nn.Module, calls: int = 5) -> list[float]:
    """Seconds of each of the first ``calls`` calls of the char GPT's forward pass on one context, once
    ``torch.compile``d: the first one compiles."""
    compiled = torch.compile(model)
    idx = torch.zeros(1, model.cfg.context, dtype=torch.long, device=device())
    with torch.no_grad():
        return measure_bench.call_times(lambda: compiled(idx), calls, device=device())


def first_call_ratio(calls: list[float]) -> float:
    """The first call's seconds over the median of the calls after it."""
    return calls[0] / statistics.median(calls[1:])


def check_pitfalls(reencoding: Reencoding, padding: dict[str, int], calls: list[float]) -> None:
    """The claims of ``sec-infer-pitfalls``."""
    claims.claim("re-encoding loop / cached loop, seconds", reencoding.reencode_s / reencoding.cached_s, ">=",
                 full=3.0, fast=1.2, unit="x")  # fmt: skip
    claims.claim("rows changed by right padding, minus by left padding", padding["right"] - padding["left"], ">=",
                 full=1, fast=1)  # fmt: skip
    claims.claim("compiled GPT: first call / median of the next", first_call_ratio(calls), ">=", full=10.0,
                 fast=10.0, unit="x")  # fmt: skip


# --- exercises --------------------------------------------------------------------------------------------------


def self_check_kv_bytes(answer: int, tokens: int = 8192, batch: int = 8, bytes_per_value: int = 2) -> bool:
    """Exercise 1: SmolLM2's KV cache bytes for ``batch`` sequences of ``tokens`` tokens at ``bytes_per_value``."""
    right = lm.kv_cache_bytes(smollm2()[0].config, tokens, batch, bytes_per_value)
    problems = [] if answer == right else [f"{answer:,} bytes; count 2 (keys and values) x layers x kv heads x "
                                           "head dim x tokens x batch x bytes per value"]  # fmt: skip
    return claims.self_check(problems, f"{right / 2**30:.2f} GiB: more than the model's weights")


def self_check_formula(formula: Callable[[float, int, float], float]) -> bool:
    """Exercise 2: ``formula(alpha, gamma, c)``, the expected speed-up of speculative decoding, on a grid."""
    problems = []
    for alpha, gamma, c in ((0.0, 4, 0.1), (0.5, 1, 0.0), (0.8, 4, 0.05), (0.9, 8, 0.5), (1.0, 3, 0.1)):
        got, right = formula(alpha, gamma, c), speedup_formula(alpha, gamma, c)
        if not math.isclose(got, right, rel_tol=1e-6):
            problems.append(f"alpha={alpha}, gamma={gamma}, c={c}: {got:.4f}, expected {right:.4f}")
    return claims.self_check(problems, "the formula matches on every point")


# --- make bench ----------------------------------------------------------------------------------------------------


def bench() -> None:
    """The rows of ``chap-infer``: every section's claims and the book's targets for it."""
    gpt = char_gpt()
    check_cache(char_gpt_run(gpt), smol_run(), cache_bytes_check())
    check_roofline(step_table())
    runs, _ = decoders()
    check_production(measure_bench.compare_tokens_per_s(runs, LOOP_TOKENS, ROUNDS), same_greedy_tokens(runs))
    requests = workload()
    check_batching(static_vs_continuous(gpt, requests), smol_batching(smol_requests()))
    check_paged(paged_memory(gpt, requests), equal_memory(gpt, requests))
    draft, smol = smol_draft(), smollm2()[0]
    c_smol = claims.measure("SmolLM2 draft step / SmolLM2 step (c)", step_cost_ratio(hf_step(draft), hf_step(smol)))
    verify = verify_costs(smol, tuple(g + 1 for g in GAMMAS))
    target, draft_gpt = char_pair()
    c_char = step_cost_ratio(gpt_step(draft_gpt), gpt_step(target))
    check_speculation(c_char, smol_speculation(draft), c_smol, verify, library_paths(draft))
    check_pitfalls(reencoding_pitfall(), padding_pitfall(), first_calls(gpt))
