"""The experiments of ``chap-hardware`` (``notebooks/13_hardware.ipynb``): where the char-level GPT's training step
spends its time, and what mixed precision, ``torch.compile``, memory layout, activation checkpointing, gradient
accumulation and data-loader workers change about it, on whatever machine runs the notebook.

The GPT has the shape of the zoo's ``gpt-shakespeare`` recipe (fast: context 64, 2 layers, width 64; full:
context 128, 4 layers, width 192) but starts from a random initialization: a training step costs the same
whatever the weights. Every step is a batch of 32 random windows of the training split, AdamW, on
``effdl.device()``. Speeds are ratios of medians from interleaved rounds (``sec-measuring-noise``); GPU-only
studies return ``None`` on a machine without CUDA.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from effdl import bench as measure_bench
from effdl import claims, data, models, stats, train, zoo
from effdl.accel import compile as accel_compile
from effdl.accel import graphs, loader, memory, profile, steps
from effdl.config import cache_dir, device, pick
from effdl.experiments.measuring import ceilings as ceilings  # this device's peaks (sec-measuring-roofline)
from effdl.train import token_cross_entropy

NOTEBOOK = "13_hardware"
BATCH = 32
LR = 2e-3
ROUNDS = pick(fast=5, full=6)  # interleaved timing rounds
CALLS_PER_ROUND = pick(fast=3, full=2)  # calls timed per round (their mean is the round's time)
VAL_BATCHES = pick(fast=10, full=20)  # validation batches of 32 windows: 20,480 characters fast, 81,920 full


# --- the GPT and its training step --------------------------------------------------------------------------


def gpt_config() -> models.GPTConfig:
    """The shape of the zoo's ``gpt-shakespeare`` recipe in this mode."""
    arch = {k: v for k, v in zoo.recipe("gpt-shakespeare").arch.items() if k != "kind"}
    return models.GPTConfig(**arch)


def gpt(seed: int = 0) -> models.GPT:
    """A randomly initialized GPT of :func:`gpt_config` on ``effdl.device()``."""
    torch.manual_seed(seed)
    return models.GPT(gpt_config()).to(device())


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The chapter's optimizer: AdamW at the zoo recipe's learning rate and weight decay."""
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)


def train_batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of :data:`BATCH` random training windows, on ``effdl.device()``."""
    tokens = data.shakespeare().split("train")
    batches = data.LMBatches(tokens, BATCH, gpt_config().context, steps=n, seed=seed)
    return [(x.to(device()), y.to(device())) for x, y in batches]


def val_loss(model: nn.Module) -> float:
    """Mean cross-entropy (nats per character) on the first :data:`VAL_BATCHES` batches of validation windows."""
    batches = data.LMBatches(data.shakespeare().split("val"), BATCH, gpt_config().context, VAL_BATCHES, random=False)
    return train.evaluate(model, batches, device())["loss"]


def step_call(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], **kwargs) -> Callable[[], torch.Tensor]:
    """One training step of ``model`` on ``batch`` with its own AdamW, as a call to time or profile."""
    opt = optimizer(model)
    return functools.partial(steps.train_step, model, opt, *batch, **kwargs)


def interleaved(calls: dict[str, Callable[[], object]], rounds: int = ROUNDS,
                calls_per_round: int = CALLS_PER_ROUND) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per call of each call, one value per round, on ``effdl.device()``
    (:func:`effdl.bench.interleaved_times` after one warm-up call each)."""
    return measure_bench.interleaved_times(calls, rounds, 1, calls_per_round, device())


@dataclasses.dataclass(frozen=True)
class Speedup:
    """Per-round seconds of a baseline and of a variant: the ratio of medians and whether it is measurable."""

    baseline: list[float]
    variant: list[float]

    @property
    def ratio(self) -> float:
        """Baseline's median time over the variant's: above 1, the variant is faster."""
        return statistics.median(self.baseline) / statistics.median(self.variant)

    def milliseconds(self) -> tuple[float, float]:
        """Median milliseconds per call of the baseline and of the variant."""
        return 1e3 * statistics.median(self.baseline), 1e3 * statistics.median(self.variant)

    def verdict(self) -> str:
        """``faster``, ``slower`` or ``no measurable difference`` (two standard errors of the rounds' means)."""
        return stats.difference_of_means(self.baseline, self.variant).verdict("faster", "slower")

    def compared_to(self, baseline: str) -> str:
        """The verdict as a phrase about ``baseline``: ``faster than eager's``, ``not measurably different from``."""
        word = self.verdict()
        return f"not measurably different from {baseline}" if word == stats.NO_DIFFERENCE else f"{word} than {baseline}"


# --- devices and the roofline (sec-hw-devices) -------------------------------------------------------------

# Published peaks and memory bandwidths: (name, FLOP/s, bytes/s, source key). The H100 SXM's dense bf16 tensor-core
# peak and HBM3 bandwidth from NVIDIA's whitepaper; TPU v1's int8 peak (operations/s) and DDR3 bandwidth from
# Jouppi et al.
PUBLISHED = (
    ("NVIDIA H100 SXM, bf16", 989e12, 3.35e12, "nvidia2022h100"),
    ("Google TPU v1, int8", 92e12, 34e9, "jouppi2017datacenter"),
)


def ridge(ceil: measure_bench.Ceilings, dtype: str = "float32") -> float:
    """The roofline's ridge point in FLOP/byte: below it a kernel is bound by memory, above it by arithmetic."""
    return ceil.matmul_gflops[dtype] / ceil.bandwidth_gbs


def bound_by(intensity: float, ridge_point: float) -> str:
    """``compute-bound`` right of the ridge point, ``memory-bound`` left of it."""
    return "compute-bound" if intensity >= ridge_point else "memory-bound"


def linear_shapes(cfg: models.GPTConfig | None = None) -> dict[str, tuple[int, int, int]]:
    """``(M, K, N)`` of each distinct matmul of the GPT's forward pass: ``M = batch x context`` tokens times a
    ``K x N`` weight."""
    cfg = cfg or gpt_config()
    tokens, width = BATCH * cfg.context, cfg.n_embd
    return {"qkv": (tokens, width, 3 * width), "attn proj": (tokens, width, width),
            "mlp up": (tokens, width, 4 * width), "mlp down": (tokens, 4 * width, width),
            "lm head": (tokens, width, cfg.vocab_size)}  # fmt: skip


def intensity(m: int, k: int, n: int, element_bytes: int = 4) -> float:
    """FLOP per byte of an ``(M x K) @ (K x N)`` matmul that reads both operands and writes the product once."""
    return 2 * m * k * n / (element_bytes * (m * k + k * n + m * n))


def matmul_points() -> dict[str, tuple[float, float]]:
    """Each of :func:`linear_shapes`' matmuls on the roofline: (intensity, measured GFLOP/s in fp32)."""
    points = {}
    for name, (m, k, n) in linear_shapes().items():
        a, b = torch.randn(m, k, device=device()), torch.randn(k, n, device=device())
        seconds = measure_bench.time_fn(functools.partial(torch.matmul, a, b), device=device()).median
        points[name] = (intensity(m, k, n), 2 * m * k * n / seconds / 1e9)
    return points


def published_ridges() -> dict[str, float]:
    """The ridge point (FLOP or operations per byte) of each :data:`PUBLISHED` device."""
    return {name: peak / bandwidth for name, peak, bandwidth, _ in PUBLISHED}


# --- where a step's time goes (sec-hw-profile) -------------------------------------------------------------

PROFILED_STEPS = 3
PROFILE_WARMUP = 3  # the first steps of a process pay for allocations and kernel selection


@dataclasses.dataclass(frozen=True)
class Profile:
    """The profiled GPT step: operators per step, the trace file, and the step's time measured without the
    profiler."""

    table: list[profile.OpTime]
    trace: Path
    step_ms: float

    def matmul_share(self) -> float:
        """Fraction of the step's self time in matmuls and attention."""
        return profile.share_of(self.table, profile.MATMUL_OPS + profile.ATTENTION_OPS)

    def amdahl_bound(self) -> float:
        """The speed-up of the step if everything but its matmuls and attention took no time at all."""
        return 1 / self.matmul_share()


@functools.cache
def profiled_step() -> Profile:
    """Profile :data:`PROFILED_STEPS` GPT training steps after :data:`PROFILE_WARMUP` warm-up steps, write their
    Chrome trace to ``effdl.cache_dir("traces")``, and time the same step without the profiler."""
    batch = train_batches(1)[0]
    step = step_call(gpt(), batch)
    trace = cache_dir("traces") / "gpt_train_step.json"
    prof = profile.profile_steps(step, steps=PROFILED_STEPS, warmup=PROFILE_WARMUP, trace=trace, device=device())
    seconds = measure_bench.time_fn(step, device=device()).median
    return Profile(profile.op_table(prof, PROFILED_STEPS), trace, 1e3 * seconds)


def check_profile(result: Profile) -> None:
    """The table's ten largest rows account for most of the step, and matmuls and attention take most of it."""
    top = sum(row.share for row in result.table[:10])
    claims.claim("share of the step's self time in the profile's ten largest rows", top, ">=", full=0.65, fast=0.65)
    # full bound: 0.36 to 0.59 measured on a loaded 2-core CPU (0.88 on an idle one), fast: 0.40 to 0.45 loaded
    claims.claim("share of the GPT step's time in matmuls and attention", result.matmul_share(), ">=",
                 full=0.3, fast=0.25)  # fmt: skip


# --- mixed precision (sec-hw-mixed) ------------------------------------------------------------------------

PRECISION_STEPS = pick(fast=60, full=200)
PRECISION_WARMUP = PRECISION_STEPS // 10  # linear warm-up steps, then the constant learning rate
GRAD_CLIP = 1.0  # the zoo's GPT recipe clips too: without it a bf16 run once stalled on the unigram plateau
PRECISION_SEEDS = pick(fast=(0,), full=(0, 1, 2))
LOSS_TOLERANCE = 0.02  # the book's aim: bf16 autocast ends within 2 % of fp32's validation loss


@dataclasses.dataclass(frozen=True)
class PrecisionRun:
    """fp32 and bf16-autocast training from the same initialization on the same batches, seed by seed: final
    validation losses, per-step training losses (first seed), per-step seconds (all seeds, interleaved), and the
    first seed's trained fp32 model."""

    val: dict[str, list[float]]
    curves: dict[str, list[float]]
    seconds: dict[str, list[float]]
    trained: nn.Module | None = None

    def relative_gap(self) -> float:
        """``|mean bf16 - mean fp32| / mean fp32`` of the final validation losses."""
        fp32, bf16 = statistics.fmean(self.val["fp32"]), statistics.fmean(self.val["bf16"])
        return abs(bf16 - fp32) / fp32

    def speedup(self) -> Speedup:
        return Speedup(self.seconds["fp32"], self.seconds["bf16"])

    def noise(self) -> str:
        """Whether the seeds tell bf16's final loss from fp32's (``sec-measuring-noise``), in words."""
        if len(self.val["fp32"]) < 2:
            return "one seed cannot tell that gap from seed-to-seed noise"
        verdict = stats.difference_of_means(self.val["bf16"], self.val["fp32"]).verdict("higher", "lower")
        if verdict == stats.NO_DIFFERENCE:
            return f"over the seeds the two losses show {verdict}"
        return f"over the seeds, bf16's loss is measurably {verdict} than fp32's"


@functools.cache
def precision_runs() -> PrecisionRun:
    """Train an fp32 and a bf16-autocast GPT in lockstep (one step of each in turn, each step timed) for each seed
    of :data:`PRECISION_SEEDS`: AdamW after a linear warm-up of :data:`PRECISION_WARMUP` steps, gradients clipped
    at :data:`GRAD_CLIP`, as the zoo trains the GPT."""
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    val: dict[str, list[float]] = {name: [] for name in dtypes}
    seconds: dict[str, list[float]] = {name: [] for name in dtypes}
    curves: dict[str, list[float]] = {}
    trained = None
    for seed in PRECISION_SEEDS:
        nets = {name: gpt(seed) for name in dtypes}
        opts = {name: optimizer(net) for name, net in nets.items()}
        warmups = {name: torch.optim.lr_scheduler.LinearLR(opt, 1 / PRECISION_WARMUP, total_iters=PRECISION_WARMUP)
                   for name, opt in opts.items()}  # fmt: skip
        losses: dict[str, list[float]] = {name: [] for name in dtypes}
        for x, y in train_batches(PRECISION_STEPS, seed):
            for name, dtype in dtypes.items():
                start = time.perf_counter()
                loss = steps.train_step(nets[name], opts[name], x, y, dtype=dtype, grad_clip=GRAD_CLIP)
                losses[name].append(loss.item())  # syncs
                seconds[name].append(time.perf_counter() - start)
                warmups[name].step()
        for name, net in nets.items():
            val[name].append(val_loss(net))
        curves, trained = curves or losses, trained or nets["fp32"]
    return PrecisionRun(val, curves, {name: s[1:] for name, s in seconds.items()}, trained)


def check_precision(run: PrecisionRun) -> float:
    """bf16 autocast trains to fp32's validation loss within :data:`LOSS_TOLERANCE` (claim and target)."""
    gap = run.relative_gap()
    # 1.5e-4 measured over 3 seeds of 200 steps (idle, full mode): the bound is the target itself
    claims.claim("bf16 autocast's final validation loss, relative gap to fp32", gap, "<=", full=0.02, fast=0.05)
    claims.target("bf16 autocast within 2 % of fp32's final validation loss", gap, "<=", LOSS_TOLERANCE,
                  section="sec-hw-mixed")  # fmt: skip
    claims.measure("bf16 autocast training step speed-up over fp32", run.speedup().ratio, "x")
    return gap


GRADSCALER_INIT = torch.amp.GradScaler("cpu").get_scale()  # the scale a fresh GradScaler starts from (2^16)


@dataclasses.dataclass(frozen=True)
class Gradients:
    """Real gradients of one batch of the GPT trained in fp32 by :func:`precision_runs` (first seed): of the loss
    with respect to the logits, where the backward pass starts, and of every weight."""

    logits: torch.Tensor
    weights: torch.Tensor


@functools.cache
def gradients() -> Gradients:
    """The :class:`Gradients` of :func:`precision_runs`' trained fp32 GPT on a fresh batch of training windows."""
    model = precision_runs().trained
    x, y = train_batches(1, seed=len(PRECISION_SEEDS))[0]
    logits = model(x)
    logits.retain_grad()
    token_cross_entropy(logits, y).backward()
    weights = torch.cat([p.grad.flatten() for p in model.parameters()])
    return Gradients(logits.grad.detach().cpu(), weights.detach().cpu())


def check_underflow(grads: Gradients) -> tuple[steps.Underflow, steps.Underflow]:
    """Cast to fp16 as they are, most logit gradients are lost or kept as subnormals; scaled by the GradScaler's
    starting scale, none is lost and none overflows."""
    plain, scaled = steps.fp16_underflow(grads.logits), steps.fp16_underflow(grads.logits, GRADSCALER_INIT)
    claims.claim("logit gradients lost or subnormal in fp16 without scaling", plain.zero + plain.subnormal, ">=",
                 full=0.5, fast=0.5)  # fmt: skip
    claims.claim("logit gradients lost or subnormal in fp16 at the GradScaler's scale",
                 scaled.zero + scaled.subnormal + scaled.overflow, "<=", full=0.01, fast=0.01)  # fmt: skip
    return plain, scaled


SCALER_STEPS = pick(fast=3, full=2)


def scaler_steps(n: int = SCALER_STEPS) -> list[tuple[float, float]]:
    """``(scale, loss)`` of ``n`` fp16-autocast GPT steps with a GradScaler (slow on a CPU without fp16 arithmetic,
    hence few steps): the scale a step used and its loss."""
    model = gpt(0)
    opt = optimizer(model)
    scaler = torch.amp.GradScaler(device().type)
    history = []
    for x, y in train_batches(n, 0):
        scale = scaler.get_scale()
        history.append((scale, steps.train_step(model, opt, x, y, dtype=torch.float16, scaler=scaler).item()))
    return history


# --- torch.compile (sec-hw-compile) ------------------------------------------------------------------------

COMPILE_TARGET = 1.2  # the book's aim: torch.compile 1.2x the eager training step after warm-up


@dataclasses.dataclass(frozen=True)
class CompileResult:
    """Seconds of the first compiled step with an empty cache (cold) and of a recompile in the same process
    (warm), the steady-state timing against eager, and the first step's loss, compiled and eager."""

    cold_s: float
    warm_s: float
    speed: Speedup
    losses: tuple[float, float]

    def loss_gap(self) -> float:
        compiled, eager = self.losses
        return abs(compiled - eager) / eager

    def payback(self) -> str:
        """When the cold compile time is won back by the faster steps, in words."""
        eager_ms, compiled_ms = self.speed.milliseconds()
        if compiled_ms >= eager_ms:
            return "never: the compiled step is not faster"
        return f"after about {1e3 * self.cold_s / (eager_ms - compiled_ms):,.0f} steps"


@functools.cache
def compile_study() -> CompileResult:
    """Compile the GPT (forward and, through AOTAutograd, backward; the optimizer step stays eager) with
    Inductor's default mode: time its first step with an empty cache, a second compile of a fresh copy, then
    eager against compiled in interleaved rounds."""
    batch = train_batches(1)[0]
    eager_model, compiled_model = gpt(0), gpt(0)
    eager = step_call(eager_model, batch)
    with accel_compile.fresh_compile_cache():
        compiled = step_call(torch.compile(compiled_model), batch)
        start = time.perf_counter()
        first = compiled().item()  # .item() waits for the device
        cold = time.perf_counter() - start
        losses = (first, eager().item())
        torch._dynamo.reset()
        again = step_call(torch.compile(gpt(0)), batch)
        warm = measure_bench.call_times(again, 1, device=device())[0]
        times = interleaved({"eager": eager, "compiled": again})
    return CompileResult(cold, warm, Speedup(times["eager"], times["compiled"]), losses)


def check_compile(result: CompileResult) -> float:
    """Compiled and eager steps compute the same loss; the speed-up is a target (and a weak claim: not much slower)."""
    claims.claim("compiled step's loss, relative gap to eager", result.loss_gap(), "<=", full=1e-4, fast=1e-4)
    # bounds far below 1 (1.00 measured idle in full mode): on a machine shared with other work the ratio swings
    # (0.76 to 5.3 in fast mode, 0.97 in full mode); a compile that recompiled every step would still miss them
    claims.claim("torch.compile speed-up of the GPT training step", result.speed.ratio, ">=", full=0.7, fast=0.5,
                 unit="x")  # fmt: skip
    claims.target("torch.compile speed-up of the GPT training step", result.speed.ratio, ">=", COMPILE_TARGET,
                  unit="x", section="sec-hw-compile")  # fmt: skip
    claims.measure("torch.compile cold compile time (first step)", result.cold_s, "s")
    return result.speed.ratio


SOFTCAP = 30.0


def capped_logits_broken(model: nn.Module, x: torch.Tensor, cap: float = SOFTCAP) -> torch.Tensor:
    """Soft-capped logits, capped only when needed: the ``if`` reads a tensor's value in Python (a graph break)."""
    logits = model(x)
    if logits.abs().max() > cap:
        logits = cap * torch.tanh(logits / cap)
    return logits


def capped_logits(model: nn.Module, x: torch.Tensor, cap: float = SOFTCAP) -> torch.Tensor:
    """The same, with the choice made by ``torch.where`` inside the graph: no break."""
    logits = model(x)
    return torch.where(logits.abs().amax() > cap, cap * torch.tanh(logits / cap), logits)


def graph_break_study() -> tuple[accel_compile.GraphReport, accel_compile.GraphReport, float]:
    """The graphs Dynamo makes of the soft-cap with a Python ``if`` and with ``torch.where``, and the largest
    difference between their logits (eager) on a batch whose logits are pushed past the cap."""
    model, x = gpt(0), train_batches(1)[0][0]
    with torch.no_grad():
        model.lm_head.weight.mul_(2 * SOFTCAP)  # untrained logits are tiny: scale them up so the cap applies
    reports = [accel_compile.graph_breaks(fn, model, x) for fn in (capped_logits_broken, capped_logits)]
    with torch.no_grad():
        gap = (capped_logits_broken(model, x) - capped_logits(model, x)).abs().max().item()
    return reports[0], reports[1], gap


def check_graph_breaks(broken: accel_compile.GraphReport, fixed: accel_compile.GraphReport, gap: float) -> None:
    claims.claim("graph breaks in the soft-cap with a Python if", broken.breaks, ">=", full=1, fast=1)
    claims.claim("graph breaks after the fix", fixed.breaks, "==", full=0, fast=0)
    claims.claim("largest difference between the two functions' logits", gap, "<=", full=1e-6, fast=1e-6)


def standardize_broken(x: torch.Tensor) -> torch.Tensor:
    """The exercise's function: standardize ``x``, guarding against a zero spread, with a graph break."""
    spread = x.std().item()
    return (x - x.mean()) / max(spread, 1e-5)


# --- memory layout (sec-hw-layout) -------------------------------------------------------------------------

CNN_BATCH = pick(fast=64, full=256)


@functools.cache
def channels_last_study() -> Speedup:
    """Forward and backward of the chapter's CNN (``cnn-fmnist``'s shape) in NCHW against channels-last, on
    random images, interleaved."""
    def call(layout: torch.memory_format) -> Callable[[], None]:
        torch.manual_seed(0)
        model = models.CNN(width=32, depth=2).to(device(), memory_format=layout)
        x = torch.randn(CNN_BATCH, 1, 28, 28, device=device()).to(memory_format=layout)
        y = torch.randint(0, 10, (CNN_BATCH,), device=device())

        def step() -> None:
            nn.functional.cross_entropy(model(x), y).backward()
            model.zero_grad(set_to_none=True)

        return step

    times = interleaved({"nchw": call(torch.contiguous_format), "channels_last": call(torch.channels_last)})
    return Speedup(times["nchw"], times["channels_last"])


# --- activation checkpointing (sec-hw-checkpoint) ----------------------------------------------------------

CHECKPOINT_TARGET = 0.30  # the book's aim: checkpointing every block cuts the step's peak memory by 30 %


def with_checkpoints(model: models.GPT, count: int) -> models.GPT:
    """A copy of ``model`` whose first ``count`` transformer blocks are checkpointed."""
    copied = copy.deepcopy(model)
    copied.blocks = memory.checkpoint_blocks(copied.blocks, count)
    return copied


def peak_mb(call: Callable[[], object]) -> float:
    """Peak MiB (2^20 bytes) a call allocates above what was allocated before it."""
    return measure_bench.peak_memory(call, device()) / 2**20


@dataclasses.dataclass(frozen=True)
class CheckpointStudy:
    """Peak memory (MiB) and per-round seconds of a training step with 0, 1, ... all blocks checkpointed, and the
    largest gradient difference between all blocks checkpointed and none."""

    peak: dict[int, float]
    seconds: dict[int, list[float]]
    grad_gap: float

    def cut(self) -> float:
        """Fraction of the peak memory saved by checkpointing every block."""
        return 1 - self.peak[max(self.peak)] / self.peak[0]

    def slowdown(self) -> float:
        """Median step time with every block checkpointed over none."""
        return statistics.median(self.seconds[max(self.seconds)]) / statistics.median(self.seconds[0])

    def step_ms(self) -> dict[int, float]:
        """Median milliseconds per step for each number of checkpointed blocks."""
        return {count: 1e3 * statistics.median(s) for count, s in self.seconds.items()}


def max_grad_gap(a: nn.Module, b: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest absolute difference between the two models' weight gradients on one batch."""
    for model in (a, b):
        model.zero_grad(set_to_none=True)
        token_cross_entropy(model(x), y).backward()
    return max((p.grad - q.grad).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


@functools.cache
def checkpoint_study() -> CheckpointStudy:
    """Checkpoint the first 0, 1, ..., all blocks of one GPT: peak memory of a warm training step (optimizer state
    already allocated, so the peak is activations and gradients), step times interleaved, gradients compared."""
    base, batch = gpt(0), train_batches(1)[0]
    counts = range(len(base.blocks) + 1)
    calls = {}
    for count in counts:
        call = step_call(with_checkpoints(base, count), batch)
        call()  # allocate the optimizer's state before measuring
        calls[count] = call
    peak = {count: peak_mb(call) for count, call in calls.items()}
    seconds = interleaved(calls)
    gap = max_grad_gap(with_checkpoints(base, 0), with_checkpoints(base, len(base.blocks)), *batch)
    return CheckpointStudy(peak, seconds, gap)


def check_checkpoint(study: CheckpointStudy) -> float:
    claims.claim("activation checkpointing's largest gradient difference", study.grad_gap, "<=", full=1e-6,
                 fast=1e-6)  # fmt: skip
    claims.claim("peak memory cut by checkpointing every block", study.cut(), ">=", full=0.5, fast=0.2)  # 0.65, 0.42
    claims.target("activation checkpointing cuts peak training memory by 30 %", study.cut(), ">=", CHECKPOINT_TARGET,
                  section="sec-hw-checkpoint")  # fmt: skip
    claims.measure("step time with every block checkpointed over none", study.slowdown(), "x")
    return study.cut()


# --- gradient accumulation (sec-hw-accumulate) --------------------------------------------------------------

MICRO_BATCHES = 4


@dataclasses.dataclass(frozen=True)
class Accumulation:
    """Largest differences between one batch and its micro-batches: the GPT's gradients and its weights after one
    SGD step; and the gradients of a CNN with BatchNorm, where the two are not the same computation."""

    gpt_grads: float
    gpt_weights: float
    batchnorm_grads: float
    peak_mb: dict[int, float]


def _grads_and_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, micro: int,
                    loss_fn: steps.Loss = token_cross_entropy) -> list[torch.Tensor]:  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=LR)  # AdamW's first step, lr * g / |g|, would amplify rounding
    steps.accumulate_gradients(model, x, y, micro, loss_fn)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return grads


def _largest_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a, b, strict=True))


@functools.cache
def accumulation_study() -> Accumulation:
    """One batch of :data:`BATCH` against :data:`MICRO_BATCHES` micro-batches of it, from the same weights; and
    the peak memory of the accumulated backward for each number of micro-batches that divides the batch."""
    x, y = train_batches(1)[0]
    whole, pieces = gpt(0), gpt(0)
    grads_whole, grads_pieces = _grads_and_step(whole, x, y, 1), _grads_and_step(pieces, x, y, MICRO_BATCHES)
    weights = _largest_gap(list(whole.parameters()), list(pieces.parameters()))
    torch.manual_seed(0)
    cnn = models.CNN(width=8, depth=2, dropout=0.0).to(device())
    images, labels = torch.randn(BATCH, 1, 28, 28, device=device()), torch.randint(0, 10, (BATCH,), device=device())
    bn = _largest_gap(*(_grads_and_step(copy.deepcopy(cnn), images, labels, micro, nn.functional.cross_entropy)
                        for micro in (1, MICRO_BATCHES)))  # fmt: skip
    model = gpt(0)
    peak = {micro: peak_mb(functools.partial(steps.accumulate_gradients, model, x, y, micro))
            for micro in (1, 2, 4, 8)}  # fmt: skip
    return Accumulation(_largest_gap(grads_whole, grads_pieces), weights, bn, peak)


def check_accumulation(result: Accumulation) -> None:
    claims.claim("largest gradient difference, one batch vs accumulated micro-batches", result.gpt_grads, "<=",
                 full=1e-6, fast=1e-6)  # fmt: skip
    claims.claim("largest weight difference after one SGD step", result.gpt_weights, "<=", full=1e-6, fast=1e-6)
    claims.claim("largest gradient difference with BatchNorm", result.batchnorm_grads, ">=", full=1e-4, fast=1e-4)


# --- data loading (sec-hw-loader) --------------------------------------------------------------------------

LOADER_IMAGES = pick(fast=512, full=2048)
LOADER_BATCH = 64
WORKERS = (0, 1, 2)
LOADER_REPEATS = pick(fast=2, full=3)


def png_dataset(augment: bool = True) -> loader.DecodingDataset:
    """The first :data:`LOADER_IMAGES` training images as PNG files in memory, decoded, normalized and augmented
    (a random flip and a shift of up to 2 pixels, ``augment_fmnist``'s default; the zoo's cnn-fmnist trains with
    1) one at a time."""
    images, labels = data.fashion_mnist("train", limit=LOADER_IMAGES).tensors
    raw = (images[:, 0] * data.FMNIST_STD + data.FMNIST_MEAN).mul(255).round().to(torch.uint8)
    return loader.DecodingDataset(loader.encode_png(raw), labels, data.FMNIST_MEAN, data.FMNIST_STD,
                                  augment=data.augment_fmnist if augment else None)  # fmt: skip


def cnn_consumer() -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A training step of the chapter's CNN on each batch the loader delivers."""
    torch.manual_seed(0)
    model = models.CNN(width=32, depth=2).to(device())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def consume(x: torch.Tensor, y: torch.Tensor) -> None:
        nn.functional.cross_entropy(model(x.to(device())), y.to(device())).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return consume


@functools.cache
def loader_study() -> dict[str, dict[int, list[float]]]:
    """Images per second through the loader with 0, 1 and 2 workers, alone and feeding a CNN training step,
    :data:`LOADER_REPEATS` interleaved passes each."""
    dataset, consume = png_dataset(), cnn_consumer()
    rates: dict[str, dict[int, list[float]]] = {"loader alone": {}, "with a training step": {}}
    for _ in range(LOADER_REPEATS):
        for workers in WORKERS:
            rates["loader alone"].setdefault(workers, []).append(
                loader.loader_throughput(dataset, LOADER_BATCH, workers))
            rates["with a training step"].setdefault(workers, []).append(
                loader.loader_throughput(dataset, LOADER_BATCH, workers, consume=consume))
    return rates


def pinned_copy_study() -> Speedup | None:
    """Copying a batch of images to the GPU from pageable against pinned memory (``non_blocking``); ``None``
    without CUDA."""
    if device().type != "cuda":
        return None
    pageable = torch.randn(1024, 1, 28, 28)
    pinned = pageable.pin_memory()
    times = interleaved({"pageable": lambda: pageable.to(device(), non_blocking=True),
                         "pinned": lambda: pinned.to(device(), non_blocking=True)})  # fmt: skip
    return Speedup(times["pageable"], times["pinned"])


# --- GPU only: CUDA graphs (sec-hw-gpu) --------------------------------------------------------------------


def cuda_graph_study() -> Speedup | None:
    """The GPT's forward pass at batch 1, launched op by op against replayed as one CUDA graph; ``None`` without
    CUDA."""
    if device().type != "cuda":
        return None
    model = gpt(0).eval()
    x = torch.randint(0, gpt_config().vocab_size, (1, gpt_config().context), device=device())
    replay = graphs.capture_forward(model, x)
    with torch.no_grad():
        assert torch.allclose(replay(x), model(x), atol=1e-5)

        def eager() -> torch.Tensor:
            return model(x)

        times = interleaved({"eager": eager, "graph": lambda: replay(x)})
    return Speedup(times["eager"], times["graph"])


def gpu_note(result: Speedup | None) -> str:
    """The sentence a GPU-only study glues: its ratio, or that it was skipped here."""
    return "no GPU here: skipped" if result is None else f"{result.ratio:.2f}x ({result.verdict()})"


# --- exercises ----------------------------------------------------------------------------------------------


def self_check_graph_break(fn: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Exercise 1: ``fn`` standardizes like :func:`standardize_broken` without a graph break."""
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    report = accel_compile.graph_breaks(fn, x)
    problems = [f"{report.breaks} graph break(s): {report.reasons[0]}"] if report.breaks else []
    if not torch.allclose(fn(x), standardize_broken(x), atol=1e-5):
        problems.append("the result differs from standardize_broken's")
    constant = torch.ones(8, 8)
    if not torch.isfinite(fn(constant)).all():
        problems.append("a constant input (zero spread) gives inf or NaN")
    return claims.self_check(problems, "one graph, same values")


def self_check_checkpoint_peak(count: int, answer_mb: float, within: float = 0.15) -> bool:
    """Exercise 2: predict the peak memory with ``count`` blocks checkpointed (MiB), within ``within`` of the
    measurement of :func:`checkpoint_study`."""
    peak = checkpoint_study().peak
    if count not in peak:
        raise ValueError(f"count must be one of {sorted(peak)}, got {count}")
    measured = peak[count]
    problems = [f"{answer_mb:.1f} MiB is not within {within:.0%} of the measured {measured:.1f} MiB"
                ] if abs(answer_mb - measured) > within * measured else []  # fmt: skip
    return claims.self_check(problems, f"measured {measured:.1f} MiB")


def exercise_budget_mb() -> float:
    """Exercise 3's memory budget: halfway between the peaks of one and of two micro-batches."""
    peaks = accumulation_study().peak_mb
    return (peaks[1] + peaks[2]) / 2


def self_check_micro_batches(answer: int, budget_mb: float) -> bool:
    """Exercise 3: the fewest micro-batches (a divisor of :data:`BATCH`) whose accumulated backward fits
    ``budget_mb`` in :func:`accumulation_study`'s measurements."""
    peaks = accumulation_study().peak_mb
    fitting = [micro for micro, mb in sorted(peaks.items()) if mb <= budget_mb]
    if not fitting:
        raise ValueError(f"budget_mb must be at least {min(peaks.values()):.1f} MiB, got {budget_mb}")
    problems = [] if answer == fitting[0] else [f"{answer} is not the fewest micro-batches that fit"]
    return claims.self_check(problems, f"{fitting[0]} micro-batches peak at {peaks[fitting[0]]:.1f} MiB")


def bench() -> None:
    """The chapter's headline rows: the profile, bf16 autocast, torch.compile, checkpointing, accumulation."""
    check_profile(profiled_step())
    check_compile(compile_study())
    check_precision(precision_runs())
    check_underflow(gradients())
    check_checkpoint(checkpoint_study())
    check_accumulation(accumulation_study())
    check_graph_breaks(*graph_break_study())
    claims.measure("channels_last speed-up of the CNN's training step", channels_last_study().ratio, "x")
