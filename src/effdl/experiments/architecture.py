"""The experiments of ``chap-arch`` (``notebooks/08_architecture.ipynb``): which shapes of a model buy accuracy
cheaply, measured on Fashion-MNIST CNNs and on the char-level GPT.

Every image model trains through :func:`effdl.zoo.pretrained` with the short recipe of ``sec-measuring-frontier``
(:data:`BUDGET`), so the full-resolution shapes that chapter trained are shared, not retrained; every latency is
measured on the CPU at batch 1 (and 256 where said), interleaved (:func:`effdl.bench.compare_latency`). The GPTs
with shared key/value heads train through the zoo as well, in the shape of ``chap-distill-lm``'s student.
"""

from __future__ import annotations

import dataclasses
import functools
import random

import numpy as np
import torch
from torch import nn

from effdl import bench as measure_bench
from effdl import claims, lm, zoo
from effdl.config import pick
from effdl.experiments._shared import fmnist_macs as macs
from effdl.experiments._shared import lm_suite, on_cpu
from effdl.models import InvertedResidual, Resize, depthwise_separable

NOTEBOOK = "08_architecture"
BASELINE = "cnn-fmnist"
# full size: the recipe of sec-measuring-frontier, so the variants it trained are reused; fast: enough images that
# the shapes learn something (that chapter's fast recipe leaves them near chance)
BUDGET = pick(fast={"epochs": 1, "train_limit": 6000}, full={"epochs": 2, "train_limit": 20000},
              gpu={"epochs": 5, "train_limit": None})  # fmt: skip
ROUNDS = pick(fast=2, full=5)  # interleaved timing rounds
Shape = tuple[int, int, int, bool]  # (width, depth, resolution, separable) of a CNN

# --- shapes, costs, training (sec-arch-scaling) -------------------------------------------------------


def label(shape: Shape) -> str:
    width, depth, resolution, separable = shape
    return f"w{width}d{depth}r{resolution}" + ("s" if separable else "")


def cnn(shape: Shape) -> zoo.Baseline:
    """The CNN of ``shape`` trained with :data:`BUDGET` (cached in the zoo)."""
    width, depth, resolution, separable = shape
    extra = {"resolution": resolution} if resolution != 28 else {}
    extra |= {"separable": True} if separable else {}
    return zoo.pretrained(BASELINE, width=width, depth=depth, **extra, **BUDGET)


def build(shape: Shape) -> nn.Module:
    """An untrained CNN of ``shape`` (for costs and latencies only)."""
    width, depth, resolution, separable = shape
    return zoo.build({"kind": "cnn", "width": width, "depth": depth, "resolution": resolution,
                      "separable": separable})  # fmt: skip


def latencies_ms(models: dict[str, nn.Module], batch: int = 1) -> dict[str, float]:
    """Milliseconds per forward pass of each model on the CPU at ``batch``, timed interleaved."""
    x = zoo.example_input(BASELINE, batch)
    seconds = measure_bench.compare_latency({k: on_cpu(m) for k, m in models.items()}, x, rounds=ROUNDS)
    return {k: 1e3 * s for k, s in seconds.items()}


BASE: Shape = (8, 1, 14, False)
SCALINGS = {  # each direction pushed alone, and all three together
    "width": [BASE, (16, 1, 14, False), (32, 1, 14, False)],
    "depth": [BASE, (8, 2, 14, False), (8, 3, 14, False)],
    "resolution": [BASE, (8, 1, 20, False), (8, 1, 28, False)],
    "compound": [BASE, (12, 2, 20, False), (16, 3, 28, False)],
}


@dataclasses.dataclass(frozen=True)
class Point:
    """One trained CNN: its shape, test accuracy (a fraction) and cost."""

    shape: Shape
    accuracy: float
    macs: int
    params: int


@functools.cache
def point(shape: Shape) -> Point:
    """Train (or load) the CNN of ``shape`` and measure it."""
    model = cnn(shape)
    return Point(shape, model.metrics["test_accuracy"], macs(model.model), measure_bench.param_count(model.model))


def scaling() -> dict[str, list[Point]]:
    """Accuracy and MACs along each direction of :data:`SCALINGS` (``sec-arch-scaling``)."""
    return {direction: [point(s) for s in shapes] for direction, shapes in SCALINGS.items()}


def check_scaling(curves: dict[str, list[Point]]) -> float:
    """The claim of ``sec-arch-scaling``: every direction buys accuracy (its largest model beats the base), the
    least-rewarded one by the returned number of points."""
    least = min(100 * (points[-1].accuracy - points[0].accuracy) for points in curves.values())
    return claims.claim("accuracy gain of the weakest scaling direction, largest step minus base", least, ">",
                        full=0.0, fast=-10.0, unit="pt")  # fmt: skip


def on_front(curves: dict[str, list[Point]]) -> list[str]:
    """Labels of the scaled CNNs on the accuracy/MACs Pareto front (``sec-measuring-frontier``'s definition)."""
    points = list({p.shape: p for ps in curves.values() for p in ps}.values())
    front = measure_bench.pareto_front([p.macs for p in points], [p.accuracy for p in points])
    return [label(points[i].shape) for i in front]


# --- depthwise-separable convolutions (sec-arch-separable) --------------------------------------------


def separable_macs(c_in: int, c_out: int, kernel: int, side: int) -> tuple[int, int]:
    """Multiply-accumulates of a ``kernel x kernel`` convolution from ``c_in`` to ``c_out`` channels on a
    ``side x side`` map, standard and depthwise-separable, by formula."""
    return kernel**2 * c_in * c_out * side**2, (kernel**2 * c_in + c_in * c_out) * side**2


def counted_separable_macs(c_in: int, c_out: int, kernel: int, side: int) -> tuple[int, int]:
    """The same two costs counted by ``flop_counter`` on the two layers."""
    x = torch.zeros(1, c_in, side, side)
    standard = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
    return measure_bench.flops(standard, x) // 2, measure_bench.flops(depthwise_separable(c_in, c_out, kernel), x) // 2


def inverted_residual_macs(channels: int, expand: int, kernel: int, side: int) -> tuple[int, int]:
    """Multiply-accumulates of a stride-1 MobileNetV2 block on ``channels`` channels of a ``side x side`` map, by
    formula (expand, depthwise, project) and counted by ``flop_counter``."""
    hidden = channels * expand
    expansion = channels * hidden if expand > 1 else 0  # no expanding convolution when expand is 1
    formula = (expansion + kernel**2 * hidden + hidden * channels) * side**2
    block = InvertedResidual(channels, channels, expand, kernel)
    return formula, measure_bench.flops(block, torch.zeros(1, channels, side, side)) // 2


PLAIN: Shape = (32, 2, 28, False)  # cnn-fmnist's shape
SEPARABLE: Shape = (32, 2, 28, True)


@dataclasses.dataclass(frozen=True)
class SeparableResult:
    """``cnn-fmnist``'s shape with plain and separable blocks, trained alike: accuracy, MACs, latency (ms)."""

    accuracy: dict[str, float]
    macs: dict[str, int]
    latency_b1: dict[str, float]
    latency_b256: dict[str, float]

    def ratio(self, what: dict[str, float | int]) -> float:
        """Separable over plain."""
        return what["separable"] / what["plain"]


def separable_vs_plain() -> SeparableResult:
    """Train both shapes, count their MACs and time them at batch 1 and 256 (``sec-arch-separable``)."""
    models = {"plain": cnn(PLAIN), "separable": cnn(SEPARABLE)}
    nets = {k: b.model for k, b in models.items()}
    accuracy = {k: b.metrics["test_accuracy"] for k, b in models.items()}
    return SeparableResult(accuracy, {k: macs(m) for k, m in nets.items()}, latencies_ms(nets, 1),
                           latencies_ms(nets, 256))  # fmt: skip


def check_separable(result: SeparableResult) -> None:
    """The targets of ``sec-arch-separable`` (at most a third of the MACs, within a point of the plain CNN) and its
    claims: that MAC ratio, and a batch-1 time that falls by far less than the MACs do."""
    claims.target("separable / plain CNN MACs", result.ratio(result.macs), "<=", 1 / 3, section="sec-arch-separable")
    claims.target("separable minus plain CNN accuracy", 100 * (result.accuracy["separable"] - result.accuracy["plain"]),
                  ">=", -1.0, unit="pt", section="sec-arch-separable")  # fmt: skip
    claims.claim("separable / plain CNN MACs", result.ratio(result.macs), "<=", full=1 / 3, fast=1 / 3)
    claims.claim("separable / plain latency ratio at batch 1, over their MACs ratio",
                 result.ratio(result.latency_b1) / result.ratio(result.macs), ">", full=1.5, fast=1.0)  # fmt: skip


# --- grouped-query attention (sec-arch-gqa) -----------------------------------------------------------


GQA_HEADS = (4, 2, 1)  # key/value heads for the GPT's 4 query heads: multi-head, grouped, multi-query
GQA_SHAPE = {"n_layer": 2, "n_embd": 128}
GQA_STEPS = pick(fast=60, full=600)


def gqa_recipe(kv_heads: int) -> dict:
    return {**GQA_SHAPE, "n_kv_head": kv_heads, "steps": GQA_STEPS, "warmup": pick(fast=6, full=60)}


@functools.cache
def gqa_models() -> dict[int, nn.Module]:
    """The GPT of :data:`GQA_SHAPE` with each number of key/value heads, trained through the zoo."""
    return {h: zoo.pretrained("gpt-shakespeare", **gqa_recipe(h)).model for h in GQA_HEADS}


@dataclasses.dataclass(frozen=True)
class GQAResult:
    """Per key/value-head count: KV-cache bytes for one full context (fp16, by formula), weights, test
    perplexity."""

    cache_bytes: dict[int, int]
    weights: dict[int, int]
    perplexity: dict[int, float]


def gqa() -> GQAResult:
    """KV-cache bytes and perplexity of each :func:`gqa_models` model (``sec-arch-gqa``)."""
    test = lm_suite("gpt-shakespeare")[1]
    found = gqa_models()
    return GQAResult({h: lm.kv_cache_bytes(m.cfg, m.cfg.context) for h, m in found.items()},
                     {h: measure_bench.param_count(m) for h, m in found.items()},
                     {h: lm.perplexity(m, test) for h, m in found.items()})  # fmt: skip


def check_gqa(result: GQAResult) -> None:
    """The claims of ``sec-arch-gqa`` (multi-query attention caches 4x fewer bytes, and trains to a perplexity
    within 10 % of four key/value heads) and the book's target (within 3 %)."""
    mha, mqa = max(GQA_HEADS), min(GQA_HEADS)
    claims.claim("KV-cache bytes, multi-head / multi-query", result.cache_bytes[mha] / result.cache_bytes[mqa], "==",
                 full=4.0, fast=4.0)  # fmt: skip
    claims.claim("perplexity, multi-query / multi-head", result.perplexity[mqa] / result.perplexity[mha], "<=",
                 full=1.1, fast=1.1)  # fmt: skip
    claims.target("perplexity, multi-query / multi-head", result.perplexity[mqa] / result.perplexity[mha], "<=", 1.03,
                  section="sec-arch-gqa")  # fmt: skip


# --- a search under a latency budget (sec-arch-search) ------------------------------------------------


SPACE = {"width": (4, 8, 12, 16, 24, 32), "depth": (1, 2, 3), "resolution": (14, 20, 28), "separable": (False, True)}
PROBES = pick(fast=8, full=24)  # untrained shapes timed to fit the latency model
CANDIDATES = pick(fast=3, full=8)  # shapes trained by the search
HAND = [(w, d, 28, False) for w in (8, 16, 32) for d in (1, 2)]  # hand-designed: widths and depths at full size


def all_shapes() -> list[Shape]:
    """Every shape of :data:`SPACE`; separable only from depth 2 (the first block is never separable)."""
    return [(w, d, r, s) for w in SPACE["width"] for d in SPACE["depth"] for r in SPACE["resolution"]
            for s in SPACE["separable"] if d > 1 or not s]  # fmt: skip


@functools.cache
def features(shape: Shape) -> tuple[float, float, float]:
    """What the latency model reads: a constant, MACs (millions), and the number of layers that launch their own
    kernels (convolutions, the linear head, the resize)."""
    model = build(shape)
    layers = sum(isinstance(m, nn.Conv2d | nn.Linear | Resize) for m in model.modules())
    return 1.0, macs(model) / 1e6, float(layers)


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Batch-1 latency (ms) ≈ coefficients · :func:`features`, fitted by least squares to timed probes."""

    coefficients: np.ndarray
    probes: dict[Shape, float]  # measured ms
    r2: float

    def predict(self, shape: Shape) -> float:
        return float(np.dot(self.coefficients, features(shape)))


def fit_latency_model(seed: int = 0) -> LatencyModel:
    """Time :data:`PROBES` random untrained shapes and fit :class:`LatencyModel` (``sec-arch-search``)."""
    shapes = random.Random(seed).sample(all_shapes(), PROBES)
    measured = latencies_ms({label(s): build(s) for s in shapes})
    x = np.array([features(s) for s in shapes])
    y = np.array([measured[label(s)] for s in shapes])
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ coefficients
    return LatencyModel(coefficients, {s: measured[label(s)] for s in shapes},
                        1 - float(residual @ residual) / float(((y - y.mean()) ** 2).sum()))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Search:
    """The shapes the search trained (with measured latency and accuracy) and the hand-designed ones."""

    budget_ms: float
    found: dict[Shape, tuple[float, float]]  # shape -> (measured ms, test accuracy)
    hand: dict[Shape, tuple[float, float]]

    def best(self) -> tuple[Shape, tuple[float, float]]:
        """The most accurate found shape whose measured latency is within the budget."""
        return self._best_within(self.found, "found")

    def hand_within(self) -> tuple[Shape, tuple[float, float]]:
        """The most accurate hand-designed shape within the budget."""
        return self._best_within(self.hand, "hand")

    def _best_within(self, rows: dict[Shape, tuple[float, float]], name: str) -> tuple[Shape, tuple[float, float]]:
        within = {s: v for s, v in rows.items() if v[0] <= self.budget_ms}
        if not within:
            raise ValueError(f"no {name} shape measured within the budget of {self.budget_ms:.3f} ms")
        return max(within.items(), key=lambda item: item[1][1])


def search(latency_model: LatencyModel, budget_shape: Shape = (16, 2, 28, False), seed: int = 0) -> Search:
    """Random search: among the shapes the latency model puts within the batch-1 latency of ``budget_shape``
    (measured here), train :data:`CANDIDATES` at random and keep the best, against the hand-designed
    :data:`HAND` shapes; every latency measured in one interleaved run (``sec-arch-search``)."""
    pool = [s for s in all_shapes() if s not in HAND]
    rng = random.Random(seed)
    budget_guess = latency_model.predict(budget_shape)
    fitting = [s for s in pool if latency_model.predict(s) <= budget_guess]
    if not fitting:
        raise ValueError(f"no shape is predicted within the latency of {label(budget_shape)}")
    picked = rng.sample(fitting, min(CANDIDATES, len(fitting)))
    shapes = [*picked, *HAND, budget_shape]
    measured = latencies_ms({label(s): cnn(s).model for s in shapes})
    row = lambda s: (measured[label(s)], point(s).accuracy)  # noqa: E731
    return Search(measured[label(budget_shape)], {s: row(s) for s in picked}, {s: row(s) for s in HAND})


def check_search(result: Search) -> float:
    """The target of ``sec-arch-search``: the search's best shape within the budget is at least as accurate as the
    best hand-designed one within it."""
    gain = 100 * (result.best()[1][1] - result.hand_within()[1][1])
    return claims.target("searched minus hand-designed accuracy at the latency budget", gain, ">=", 0.0, unit="pt",
                         section="sec-arch-search")  # fmt: skip


# --- pitfalls (sec-arch-pitfalls) ---------------------------------------------------------------------


def misordered(costs: list[float], latency: list[float]) -> float:
    """The share of pairs of models that ``costs`` orders the other way round from their measured ``latency``."""
    pairs = [(i, j) for i in range(len(costs)) for j in range(i + 1, len(costs))]
    wrong = sum((costs[i] - costs[j]) * (latency[i] - latency[j]) < 0 for i, j in pairs)
    return wrong / len(pairs)


def proxies(latency_model: LatencyModel) -> dict[str, float]:
    """The share of the probes' pairs that parameter count, MACs and the fitted latency model (in sample) order
    the other way round from their measured batch-1 latency (``sec-arch-pitfalls``)."""
    shapes = list(latency_model.probes)
    measured = [latency_model.probes[s] for s in shapes]
    models = [build(s) for s in shapes]
    return {"parameters": misordered([measure_bench.param_count(m) for m in models], measured),
            "MACs": misordered([macs(m) for m in models], measured),
            "latency model": misordered([latency_model.predict(s) for s in shapes], measured)}  # fmt: skip


def check_proxies(shares: dict[str, float]) -> float:
    """The claim of ``sec-arch-pitfalls``: parameter count misorders a tenth of the pairs or more."""
    return claims.claim("pairs of models parameter count orders against their latency", shares["parameters"], ">=",
                        full=0.1, fast=0.1)  # fmt: skip


def per_image_ms(shapes: list[Shape] = HAND) -> dict[int, dict[str, float]]:
    """Milliseconds per image of each hand-designed shape at batch 1 and at batch 256, on the CPU."""
    nets = {label(s): build(s) for s in shapes}
    return {batch: {k: v / batch for k, v in latencies_ms(nets, batch).items()} for batch in (1, 256)}


def swapped_pairs(times: dict[int, dict[str, float]]) -> int:
    """How many pairs of shapes are ordered differently by their per-image time at batch 1 and at batch 256."""
    names = list(times[1])
    order = lambda batch, a, b: times[batch][a] - times[batch][b]  # noqa: E731
    return sum(order(1, a, b) * order(256, a, b) < 0 for i, a in enumerate(names) for b in names[i + 1 :])


def check_batching(times: dict[int, dict[str, float]]) -> float:
    """The claim of ``sec-arch-pitfalls``: batching speeds the shapes up by very different factors (the largest
    speed-up per image at least 1.5 times the smallest), so a ranking at one batch size need not hold at another."""
    speedup = [times[1][k] / times[256][k] for k in times[1]]
    return claims.claim("batching speed-up per image, largest / smallest over the shapes", max(speedup) / min(speedup),
                        ">=", full=1.5, fast=1.2)  # fmt: skip


# --- self-checks for the exercises -------------------------------------------------------------------


def self_check_separable_ratio(answer: float, c_in: int = 16, c_out: int = 48, kernel: int = 5) -> bool:
    """Exercise 1: is ``answer`` the separable/standard MAC ratio of that convolution, as ``flop_counter`` counts?"""
    standard, separable = counted_separable_macs(c_in, c_out, kernel, 8)
    right = separable / standard
    problems = [] if abs(answer - right) <= 1e-6 else [f"{answer:.6f} is not {right:.6f} (1/C_out + 1/k²)"]
    return claims.self_check(problems, f"separable/standard = {right:.6f}")


def self_check_beats_budget(shape: Shape, budget_shape: Shape = (16, 2, 28, False)) -> bool:
    """Exercise 2: is ``shape`` (trained with :data:`BUDGET`) more accurate than ``budget_shape`` and faster at
    batch 1, timed interleaved?"""
    if shape not in all_shapes():
        return claims.self_check([f"{shape} is not in ex.all_shapes()"], "")
    ms = latencies_ms({"yours": cnn(shape).model, "budget": cnn(budget_shape).model})
    accuracy = {"yours": point(shape).accuracy, "budget": point(budget_shape).accuracy}
    problems = [f"{ms['yours']:.3f} ms is slower than {ms['budget']:.3f} ms"] if ms["yours"] >= ms["budget"] else []
    if accuracy["yours"] <= accuracy["budget"]:
        problems.append(f"{accuracy['yours']:.2%} is not above {accuracy['budget']:.2%}")
    return claims.self_check(problems, f"{label(shape)}: {ms['yours']:.3f} ms, {accuracy['yours']:.2%}")


def self_check_kv_bytes(answer: int, kv_heads: int = 1) -> bool:
    """Exercise 3: is ``answer`` the fp16 KV-cache bytes of the chapter's GPT with ``kv_heads`` key/value heads for
    one sequence of its full context?"""
    cfg = zoo.build(zoo.recipe("gpt-shakespeare", **gqa_recipe(kv_heads)).arch).cfg
    right = lm.kv_cache_bytes(cfg, cfg.context)
    problems = [] if answer == right else [f"{answer:,} is not 2 · layers · kv heads · head size · tokens · 2 bytes"]
    return claims.self_check(problems, f"{right:,} bytes")


def bench() -> None:
    """The chapter's rows: scaling, separable convolutions, grouped-query attention, the search."""
    check_scaling(scaling())
    result = separable_vs_plain()
    check_separable(result)
    claims.measure("separable / plain latency ratio, batch 1", result.ratio(result.latency_b1), "x")
    check_gqa(gqa())
    check_search(search(fit_latency_model()))
    claims.measure("search pool (shapes)", len(all_shapes()))
