"""The experiments of ``chap-measuring`` (``notebooks/01_measuring.ipynb``): the baselines' quality and
cost, this machine's ceilings, the accuracy/cost frontier, and SmolLM2's decode speed against its
bandwidth bound. The notebook and ``make bench`` call the same functions and the same ``check_*``
claims."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_model
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from effdl import bench as measure_bench
from effdl import claims, models, stats, zoo
from effdl.config import cache_dir, device, pick
from effdl.experiments._shared import fmnist_correct

NOTEBOOK = "01_measuring"
BATCH_LATENCY, BATCH_THROUGHPUT = 1, 256
TARGETS = {  # the foundation's goals, full mode on a 2-core CPU: (metric, op, bound, train seconds)
    "cnn-fmnist": ("test accuracy", ">=", 0.910, 300.0),
    "resnet-fmnist": ("test accuracy", ">=", 0.925, 300.0),
    "gpt-shakespeare": ("val loss", "<=", 1.70, 600.0),
}
ROUNDS = 3  # interleaved timing rounds for every comparison of speeds


# --- the baselines (sec-measuring-cost, sec-measuring-noise) ---------------------------------------


def baselines() -> dict[str, zoo.Baseline]:
    """The book's three trained baselines (cached by the zoo), moved to :func:`effdl.device`."""
    loaded = {name: zoo.pretrained(name) for name in zoo.NAMES}
    for baseline in loaded.values():
        baseline.model.to(device())
    return loaded


def quality(baseline: zoo.Baseline) -> tuple[str, float]:
    """The metric a baseline is judged by (``sec-measuring-cost``): test accuracy, or the GPT's
    validation loss in nats per character."""
    metric = TARGETS[baseline.recipe.name][0]
    return metric, baseline.metrics["val_loss" if metric == "val loss" else "test_accuracy"]


def vocab_size(baseline: zoo.Baseline) -> int:
    """Characters in the GPT's vocabulary: uniform guessing scores ``ln V`` nats per character."""
    return baseline.recipe.arch["vocab_size"]


@dataclass(frozen=True)
class Noise:
    """How precisely the test set measures accuracy (``sec-measuring-noise``)."""

    n: int
    accuracy: dict[str, float]
    se: dict[str, float]
    paired: stats.Paired  # McNemar: ResNet (a) against CNN (b) on the same images


def accuracy_noise(found: dict[str, zoo.Baseline]) -> Noise:
    """Standard errors of the two classifiers' test accuracies and McNemar's test between them."""
    correct = {name: fmnist_correct(found[name].model) for name in ("cnn-fmnist", "resnet-fmnist")}
    accuracy = {name: c.double().mean().item() for name, c in correct.items()}
    n = correct["cnn-fmnist"].numel()
    se = {name: stats.accuracy_se(acc, n) for name, acc in accuracy.items()}
    return Noise(n, accuracy, se, stats.mcnemar(correct["resnet-fmnist"], correct["cnn-fmnist"]))


# --- bytes (sec-measuring-bytes) --------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """One model's parameter count and bytes, in fp32 and as a bf16 copy."""

    parameters: int
    fp32_bytes: int
    bf16_bytes: int
    fp32_parameter_bytes: int
    bf16_parameter_bytes: int

    @property
    def buffer_bytes(self) -> int:
        """fp32 bytes that are not parameters: BatchNorm running statistics and counters."""
        return self.fp32_bytes - self.fp32_parameter_bytes


def sizes(found: dict[str, zoo.Baseline]) -> dict[str, Size]:
    """Parameters and storage bytes of each baseline in fp32 and in bf16 (``sec-measuring-bytes``)."""
    table = {}
    for name, baseline in found.items():
        fp32, bf16 = baseline.model, copy.deepcopy(baseline.model).to(torch.bfloat16)
        table[name] = Size(measure_bench.param_count(fp32), measure_bench.size_bytes(fp32),
                           measure_bench.size_bytes(bf16), measure_bench.parameter_bytes(fp32),
                           measure_bench.parameter_bytes(bf16))  # fmt: skip
    return table


def check_bf16_halves_parameter_bytes(table: dict[str, Size]) -> float:
    """Claim: a bf16 copy stores every parameter in exactly half the fp32 bytes (buffers aside)."""
    ratio = sum(s.bf16_parameter_bytes for s in table.values()) / sum(s.fp32_parameter_bytes for s in table.values())
    return claims.claim("bf16 / fp32 parameter bytes, three baselines", ratio, "==", full=0.5, fast=0.5)


def file_bytes(model: nn.Module) -> tuple[int, int]:
    """``(bytes in memory, bytes of its safetensors file)``: the file adds a small JSON header."""
    path = cache_dir("scratch") / "measuring-model.safetensors"
    save_model(model, str(path))
    return measure_bench.size_bytes(model), measure_bench.size_bytes(path)


# --- FLOPs (sec-measuring-flops) ----------------------------------------------------------------


def first_conv_flops(cnn: nn.Module) -> tuple[int, int]:
    """``(by hand, counted)`` FLOPs of the CNN's first 3x3 convolution on one 28x28 image:
    ``2 H W C_out C_in k^2`` against ``FlopCounterMode``."""
    conv = cnn.features[0][0]
    by_hand = 2 * 28 * 28 * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return by_hand, measure_bench.flops(conv, torch.randn(1, 1, 28, 28, device=device()))


def check_conv_flops(by_hand: int, counted: int) -> float:
    """Claim: the formula and PyTorch's counter agree exactly on the first convolution."""
    return claims.claim("first conv FLOPs: counted - by hand", counted - by_hand, "==", full=0, fast=0, unit="FLOP")


def forward_flops(found: dict[str, zoo.Baseline]) -> dict[str, int]:
    """FLOPs of one forward pass at batch 1 (one image, or one whole window for the GPT)."""
    return {name: measure_bench.flops(b.model, zoo.example_input(name, BATCH_LATENCY)) for name, b in found.items()}


def context(baseline: zoo.Baseline) -> int:
    """Characters in one GPT window: its forward's FLOPs cover them all."""
    return baseline.recipe.arch["context"]


def attention_flops(baseline: zoo.Baseline) -> int:
    """FLOPs that ``FlopCounterMode`` credits to attention operators in one GPT forward: zero where it
    does not know the fused attention kernel this device runs (it counts unknown operators as 0)."""
    counter = FlopCounterMode(display=False)
    example = zoo.example_input(baseline.recipe.name, BATCH_LATENCY).to(device())
    with torch.no_grad(), counter:
        baseline.model(example)
    return sum(n for op, n in counter.get_flop_counts()["Global"].items() if "attention" in str(op))


# --- latency and throughput (sec-measuring-latency, sec-measuring-throughput) --------------------


@dataclass(frozen=True)
class LatencyProfile:
    """Single-call times of a fresh and of a warmed-up model, and the Timer's robust median."""

    cold: list[float]
    warm: list[float]
    timing: measure_bench.Timing

    @property
    def first_call_ratio(self) -> float:
        """The fresh model's first call over the warm model's median single call."""
        return self.cold[0] / statistics.median(self.warm)


def latency_profile(baseline: zoo.Baseline) -> LatencyProfile:
    """Warm-up and jitter at batch 1 (``sec-measuring-latency``): each call of a model never run before,
    each call of the trained one after ten warm-up calls, and :func:`effdl.bench.latency`."""
    model = baseline.model
    fresh = zoo.build(baseline.recipe.arch).to(device()).eval()
    x = zoo.example_input(baseline.recipe.name, BATCH_LATENCY).to(device())
    n = pick(fast=30, full=300)
    with torch.inference_mode():
        cold = measure_bench.call_times(lambda: fresh(x), n, device=device())
        warm = measure_bench.call_times(lambda: model(x), n, warmup=10, device=device())
    return LatencyProfile(cold, warm, measure_bench.latency(model, x))


def batch_sizes() -> list[int]:
    """The batch sizes of the throughput curves: one small sweep in fast mode."""
    return pick(fast=[1, 8, 32], full=[1, 4, 16, 64, 256, 1024], gpu=[1, 16, 64, 256, 1024, 4096])


def throughput_curves(found: dict[str, zoo.Baseline], names: tuple[str, ...] = ("cnn-fmnist", "resnet-fmnist"),
                      rounds: int = ROUNDS) -> dict[str, list[float]]:  # fmt: skip
    """Images per second of each model at each of :func:`batch_sizes` (``sec-measuring-throughput``),
    timed in ``rounds`` interleaved passes over every (model, batch) pair; the median per pair."""
    sizes_ = batch_sizes()
    inputs = {bs: torch.randn(bs, 1, 28, 28, device=device()) for bs in sizes_}
    seconds: dict[tuple[str, int], list[float]] = {(n, bs): [] for n in names for bs in sizes_}
    for _ in range(rounds):
        for name in names:
            for bs in sizes_:
                seconds[name, bs].append(measure_bench.latency(found[name].model, inputs[bs]).median)
    return {name: [bs / statistics.median(seconds[name, bs]) for bs in sizes_] for name in names}


def check_throughput(curves: dict[str, list[float]]) -> float:
    """Claim: batching pays. The ResNet's throughput at the largest batch over its throughput at batch 1."""
    gain = curves["resnet-fmnist"][-1] / curves["resnet-fmnist"][0]
    return claims.claim(f"resnet throughput, batch {batch_sizes()[-1]} / batch 1", gain, ">=",
                        full=1.5, fast=1.5, unit="x")  # fmt: skip


# --- peak memory (sec-measuring-memory) --------------------------------------------------------


@dataclass(frozen=True)
class PeakMemory:
    batch: int
    inference: int
    training: int
    weights: int

    @property
    def ratio(self) -> float:
        return self.training / self.inference


def peak_memory(baseline: zoo.Baseline) -> PeakMemory:
    """Peak bytes of one inference pass and of one training step (forward + backward) of the same
    model on the same batch (``sec-measuring-memory``)."""
    model = baseline.model
    batch = torch.randn(pick(fast=64, full=256), 1, 28, 28, device=device())
    labels = torch.randint(0, 10, (batch.shape[0],), device=device())

    def inference() -> None:
        with torch.no_grad():
            model(batch)

    def training_step() -> None:
        torch.nn.functional.cross_entropy(model(batch), labels).backward()

    infer, train_ = measure_bench.peak_memory(inference, device()), measure_bench.peak_memory(training_step, device())
    model.zero_grad(set_to_none=True)
    return PeakMemory(batch.shape[0], infer, train_, measure_bench.size_bytes(model))


def check_peak_memory(peak: PeakMemory) -> float:
    """Claim: a training step needs at least twice the memory of inference at the same batch."""
    return claims.claim(f"resnet peak memory, training step / inference (batch {peak.batch})", peak.ratio, ">=",
                        full=2.0, fast=2.0, unit="x")  # fmt: skip


# --- the roofline (sec-measuring-roofline) -------------------------------------------------------


def ceilings() -> measure_bench.Ceilings:
    """This device's measured bandwidth and matmul peaks (measured once per process)."""
    return measure_bench.machine(str(device()))


def roofline_points(cnn: nn.Module, decode: Decode) -> dict[str, tuple[float, float]]:
    """``label -> (FLOP per byte moved, achieved GFLOP/s)`` for the CNN at batch 1 and a large batch,
    and for one SmolLM2 decode step at the measured decode speed."""
    points = {}
    for bs in (BATCH_LATENCY, pick(fast=64, full=BATCH_THROUGHPUT)):
        xb = torch.randn(bs, 1, 28, 28, device=device())
        f = measure_bench.flops(cnn, xb)
        moved = measure_bench.bytes_moved(lambda xb=xb: cnn(xb))
        points[f"CNN forward, batch {bs}"] = (f / moved, f / measure_bench.latency(cnn, xb).median / 1e9)
    one_token = decode.prompt[:, -1:]
    step_flops = measure_bench.flops(decode.model, one_token)
    intensity = step_flops / measure_bench.bytes_moved(lambda: decode.model(one_token))
    points["SmolLM2 decode step"] = (intensity, step_flops * decode.tokens_per_s / 1e9)
    return points


# --- the accuracy/cost frontier (sec-measuring-frontier) -----------------------------------------


@dataclass(frozen=True)
class Frontier:
    """CNN variants with their test accuracy, batch-1 latency (ms), bytes and FLOPs per image."""

    labels: list[str]
    accuracy: np.ndarray
    latency_ms: np.ndarray
    size: np.ndarray
    flops: np.ndarray

    def on_front(self, cost: np.ndarray) -> list[str]:
        """Labels of the Pareto-optimal variants for ``cost`` (one of this frontier's columns)."""
        return [self.labels[i] for i in measure_bench.pareto_front(cost, self.accuracy)]

    @property
    def flops_ratio(self) -> float:
        """FLOPs of the largest variant over the smallest."""
        return float(self.flops.max() / self.flops.min())

    @property
    def latency_ratio(self) -> float:
        """Latency of the variant with the most FLOPs over the one with the fewest."""
        return float(self.latency_ms[self.flops.argmax()] / self.latency_ms[self.flops.argmin()])


def frontier(rounds: int = ROUNDS) -> Frontier:
    """Train (once, cached) CNNs over a grid of widths and depths with one short recipe, and measure
    each; latencies are timed interleaved (:func:`effdl.bench.compare_latency`)."""
    grid = pick(fast=[(8, 1), (16, 2), (32, 2)], full=[(w, d) for w in (8, 16, 32, 64) for d in (1, 2, 3)])
    budget = pick(fast={"epochs": 1, "train_limit": 2000}, full={"epochs": 2, "train_limit": 20000},
                  gpu={"epochs": 5, "train_limit": None})  # fmt: skip
    variants = {f"w{w}d{d}": zoo.pretrained("cnn-fmnist", width=w, depth=d, **budget) for w, d in grid}
    for v in variants.values():
        v.model.to(device())
    x = zoo.example_input("cnn-fmnist", BATCH_LATENCY).to(device())
    seconds = measure_bench.compare_latency({k: v.model for k, v in variants.items()}, x, rounds=rounds)
    return Frontier(
        labels=list(variants),
        accuracy=np.array([v.metrics["test_accuracy"] for v in variants.values()]),
        latency_ms=np.array([seconds[k] * 1e3 for k in variants]),
        size=np.array([measure_bench.size_bytes(v.model) for v in variants.values()]),
        flops=np.array([measure_bench.flops(v.model, x) for v in variants.values()]),
    )


def check_flops_vs_latency(front: Frontier) -> float:
    """Claim: latency grows far slower than FLOPs at batch 1; the latency ratio of the largest to the
    smallest variant is at most a quarter of their FLOPs ratio (``sec-measuring-pitfalls``)."""
    share = front.latency_ratio / front.flops_ratio
    return claims.claim("CNN variants, latency ratio / FLOPs ratio (batch 1)", share, "<=", full=0.25, fast=0.5)


# --- decoding a language model (sec-measuring-decode) ---------------------------------------------


@dataclass(frozen=True)
class Decode:
    """SmolLM2's measured decode speed and what the read bandwidth allows (each weight is read, never written)."""

    model: Any
    tokenizer: Any
    prompt: torch.Tensor
    tokens_per_s: float
    load_seconds: float
    weight_bytes: int
    read_gbs: float

    @property
    def bound(self) -> float:
        """Tokens/s if every step did nothing but read every weight once at the measured read bandwidth."""
        return self.read_gbs * 1e9 / self.weight_bytes

    @property
    def share(self) -> float:
        return self.tokens_per_s / self.bound

    @property
    def overhead_ms(self) -> float:
        """Milliseconds per token beyond the weight reads: measured time per token minus the bound's."""
        return (1 / self.tokens_per_s - 1 / self.bound) * 1e3


def smollm2_decode() -> Decode:
    """Load SmolLM2-135M (fp32) from the cache, timed, and measure greedy decode tokens/s at batch 1."""
    start = time.perf_counter()
    model, tokenizer = models.smollm2()
    load_seconds = time.perf_counter() - start
    model.to(device())
    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids.to(device())
    tokens_per_s = measure_bench.decode_tokens_per_s(model, prompt, new_tokens=pick(fast=8, full=32))
    return Decode(model, tokenizer, prompt, tokens_per_s, load_seconds, measure_bench.size_bytes(model),
                  ceilings().read_gbs)  # fmt: skip


def greedy_answer(decode: Decode, new_tokens: int = 8) -> str:
    """The prompt and SmolLM2's greedy continuation."""
    out = decode.model.generate(decode.prompt, max_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=decode.model.config.eos_token_id)  # fmt: skip
    return decode.tokenizer.decode(out[0])


def check_decode(decode: Decode) -> float:
    """Claims: decoding never beats the read-bandwidth bound, and on a CPU gets within an order of magnitude
    of it. How close depends on the machine: the time per token outside the weight reads does not shrink
    with the bandwidth, so the share fell from 0.42 on a 2-core CPU reading 15 GB/s to 0.28 on one reading
    32 GB/s; a bound between the two would only describe one of them. A GPU reads so fast that the
    per-token overhead is nearly all of the time: there the share is recorded, not asserted
    (``sec-measuring-decode``)."""
    where = decode.model.device.type
    claims.claim(f"smollm2 decode / read-bandwidth bound on {where} (at most)", decode.share, "<=", full=1.0, fast=1.0)
    if where != "cpu":
        return claims.measure(f"smollm2 decode / read-bandwidth bound on {where}", decode.share)
    return claims.claim("smollm2 decode / read-bandwidth bound on cpu (at least)", decode.share, ">=",
                        full=0.1, fast=0.1)  # fmt: skip


# --- pitfalls (sec-measuring-pitfalls) --------------------------------------------------------------


def thread_pitfall(model: nn.Module, rounds: int = ROUNDS) -> tuple[list[float], list[float]]:
    """Seconds per batch under ``torch.utils.benchmark.Timer``'s default (one thread) and with all of
    torch's threads, the two timed alternately: one median per setting and round."""
    x = torch.randn(pick(fast=64, full=256), 1, 28, 28, device=device())
    stmt = {"stmt": "m(x)", "globals": {"m": model, "x": x}}
    run_time = pick(fast=0.1, full=0.3)
    one, every = [], []
    with torch.inference_mode():
        for _ in range(rounds):
            one.append(benchmark.Timer(**stmt).blocked_autorange(min_run_time=run_time).median)
            timer = benchmark.Timer(**stmt, num_threads=torch.get_num_threads())
            every.append(timer.blocked_autorange(min_run_time=run_time).median)
    return one, every


def unsynchronized(model: nn.Module) -> tuple[float, float] | None:
    """On CUDA: ``(seconds around one call without synchronizing, synchronized median)``; None elsewhere,
    where operators run synchronously."""
    if device().type != "cuda":
        return None
    x = torch.randn(1024, 1, 28, 28, device=device())
    with torch.inference_mode():
        model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        unsynced = time.perf_counter() - start
        torch.cuda.synchronize()
    return unsynced, measure_bench.latency(model, x).median


def tied_overcount(gpt: nn.Module) -> tuple[int, int, int]:
    """``(state_dict sum, distinct parameters, embedding matrix size)`` of the GPT, whose output layer
    is its token embedding."""
    naive = sum(t.numel() for t in gpt.state_dict().values())
    return naive, measure_bench.param_count(gpt), gpt.tok_emb.weight.numel()


def check_tied_overcount(naive: int, distinct: int, embedding: int) -> float:
    """Claim: summing a ``state_dict`` counts the tied embedding matrix exactly twice."""
    return claims.claim("gpt state_dict sum - distinct parameters - embedding", naive - distinct - embedding, "==",
                        full=0, fast=0)  # fmt: skip


# --- exercises' self-checks ------------------------------------------------------------------------


def self_check_cnn_flops(total: int, width: int = 32, depth: int = 2) -> bool:
    """Exercise 1: is ``total`` the forward FLOPs of one image through ``CNN(width, depth)``?"""
    counted = measure_bench.flops(models.CNN(width, depth).eval(), torch.randn(1, 1, 28, 28))
    problems = [f"your count {total:,d} is not FlopCounterMode's {counted:,d}"] if total != counted else []
    return claims.self_check(problems, f"{total:,d} FLOPs, exactly what FlopCounterMode counts")


def self_check_knee(n: int) -> bool:
    """Exercise 2: is ``n`` (within 10 %) the size at which an ``n x n`` fp32 matmul, ``2n^3`` FLOPs on
    ``12 n^2`` bytes, reaches this machine's knee?"""
    ceil = ceilings()
    knee_n = 6 * ceil.matmul_gflops["float32"] / ceil.bandwidth_gbs
    problems = [f"n = {n} is not within 10 % of the knee"] if abs(n - knee_n) > 0.1 * knee_n else []
    return claims.self_check(problems, f"the knee is at n = {knee_n:.0f}")


def self_check_beats_cnn(width: int, depth: int) -> bool:
    """Exercise 4: does ``CNN(width, depth)`` with the baseline's recipe reach 90 % test accuracy and a
    lower batch-1 latency than ``cnn-fmnist`` (timed interleaved, in this run)?"""
    base, mine = zoo.pretrained("cnn-fmnist"), zoo.pretrained("cnn-fmnist", width=width, depth=depth)
    times = measure_bench.compare_latency({"baseline": base.model, "yours": mine.model},
                                          zoo.example_input("cnn-fmnist", BATCH_LATENCY))  # fmt: skip
    acc, yours_ms, base_ms = mine.metrics["test_accuracy"], times["yours"] * 1e3, times["baseline"] * 1e3
    problems = [f"accuracy {acc:.2%} is below 90 %"] if acc < 0.90 else []
    problems += [f"{yours_ms:.3f} ms is not faster than the baseline's {base_ms:.3f} ms"] if yours_ms >= base_ms else []
    return claims.self_check(problems, f"accuracy {acc:.2%}, {yours_ms:.3f} ms vs the baseline's {base_ms:.3f} ms")


def self_check_decode_bound(model: nn.Module, tokens_per_s: float) -> bool:
    """Exercise 5: is ``tokens_per_s`` (within 5 %) the read-bandwidth bound ``beta_r / Q`` of ``model``, whose
    weights take ``Q`` bytes, on this device?"""
    bound = ceilings().read_gbs * 1e9 / measure_bench.size_bytes(model)
    off = abs(tokens_per_s / bound - 1) > 0.05
    problems = [f"{tokens_per_s:.1f} tokens/s is not within 5 % of the bound"] if off else []
    return claims.self_check(problems, f"the bound is {bound:.1f} tokens/s")


# --- make bench ----------------------------------------------------------------------------------


def machine_rows(ceil: measure_bench.Ceilings) -> None:
    claims.measure("memory bandwidth (copy)", ceil.bandwidth_gbs, "GB/s")
    claims.measure("memory bandwidth (read)", ceil.read_gbs, "GB/s")
    for dtype, gflops in ceil.matmul_gflops.items():
        claims.measure(f"matmul {dtype}", gflops, "GFLOP/s")


def baseline_rows(name: str, baseline: zoo.Baseline, size: Size, flops: int) -> None:
    """A baseline's targets (quality and training time, full mode) and its measured costs."""
    metric, value = quality(baseline)
    _, op, bound, seconds = TARGETS[name]
    claims.target(f"{name} {metric}", value, op, bound)
    claims.target(f"{name} train time", baseline.metrics["train_seconds"], "<=", seconds, unit="s")
    claims.measure(f"{name} parameters", size.parameters)
    claims.measure(f"{name} size", size.fp32_bytes, "bytes")
    claims.measure(f"{name} forward FLOPs (batch 1)", flops, "FLOP")
    one = zoo.example_input(name, BATCH_LATENCY)
    claims.measure(f"{name} latency (batch 1, median)", measure_bench.latency(baseline.model, one).median * 1e3, "ms")
    batch = zoo.example_input(name, BATCH_THROUGHPUT)
    claims.measure(f"{name} throughput (batch 256)", measure_bench.throughput(baseline.model, batch), "examples/s")


def decode_rows(decode: Decode) -> None:
    claims.measure("smollm2 weight bytes (fp32)", decode.weight_bytes, "bytes")
    claims.measure("smollm2 decode speed (fp32, batch 1)", decode.tokens_per_s, "tokens/s")
    claims.measure("smollm2 bandwidth bound (read bandwidth / bytes)", decode.bound, "tokens/s")
    claims.target("smollm2 share of bandwidth bound", decode.share, ">=", 0.50)
    claims.measure("smollm2 time per token beyond weight reads", decode.overhead_ms, "ms")
    claims.target("smollm2 load from cache", decode.load_seconds, "<=", 5.0, unit="s")


def bench() -> None:
    """The chapter's rows: the machine, the three baselines' targets and costs, and every claim of the
    notebook (bytes, FLOPs, memory, throughput, the frontier's FLOPs pitfall, SmolLM2's decode bound)."""
    machine_rows(ceilings())
    found = baselines()
    table, flops = sizes(found), forward_flops(found)
    for name in zoo.NAMES:
        baseline_rows(name, found[name], table[name], flops[name])
    check_bf16_halves_parameter_bytes(table)
    check_conv_flops(*first_conv_flops(found["cnn-fmnist"].model))
    check_tied_overcount(*tied_overcount(found["gpt-shakespeare"].model))
    check_peak_memory(peak_memory(found["resnet-fmnist"]))
    check_throughput(throughput_curves(found))
    check_flops_vs_latency(frontier())
    decode = smollm2_decode()
    decode_rows(decode)
    check_decode(decode)
