"""The experiments of ``chap-optim`` (``notebooks/12_optimizers.ipynb``): optimizers and learning-rate schedules,
measured as steps (and seconds) to a target on the char-level GPT of the fast shape and on Fashion-MNIST.

Every optimizer's learning rate is chosen by the same sweep (the same factors around its customary value, the
same steps) on the validation split; the comparisons the prose calls wins rerun the chosen learning rate on
:data:`SEEDS`; test accuracy is measured once, at the end. Runs are cached in memory, so the notebook and
:func:`bench` share them within one process.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from collections.abc import Callable

import torch
from torch import nn

from effdl import bench as measure_bench
from effdl import claims, data, models, optim, stats, train
from effdl.config import pick, seed_everything
from effdl.experiments._shared import cache_runs
from effdl.models import GPT, GPTConfig
from effdl.optim.loop import Curve
from effdl.train import token_cross_entropy

NOTEBOOK = "12_optimizers"
SEEDS = pick(fast=(0, 1), full=(0, 1, 2))
SWEEP = pick(fast=(1 / 4, 1.0, 4.0), full=(1 / 4, 1 / 2, 1.0, 2.0, 4.0))  # factors around each customary lr
WEIGHT_DECAY = 0.1

# --- the GPT (sec-optim-gpt) ---------------------------------------------------------------------------------

GPT_STEPS = pick(fast=60, full=300)
GPT_BATCH = pick(fast=16, full=32)
GPT_EVAL_EVERY = pick(fast=10, full=20)
GPT_WARMUP = GPT_STEPS // 10
GPT_OPTIMIZERS = {"adamw": 1e-2, "lion": 3e-3, "muon": 2e-2, "schedulefree": 1e-2}  # customary lr: sweep centres


@functools.cache
def gpt_config() -> GPTConfig:
    """The fast shape of ``gpt-shakespeare`` (context 64, 2 layers, 4 heads, width 64) in both modes."""
    return GPTConfig(vocab_size=data.shakespeare().tokenizer.vocab_size, context=64, n_layer=2, n_head=4, n_embd=64)


@functools.cache
def gpt_val() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed slice of the validation split: 4 (fast) or 8 batches of 32 windows."""
    tokens = data.shakespeare().split("val")
    return list(data.LMBatches(tokens, 32, gpt_config().context, steps=pick(fast=4, full=8), random=False))


def gpt_eval(model: nn.Module) -> dict[str, float]:
    """Mean validation loss (nats per character) on :func:`gpt_val`."""
    batches = gpt_val()
    return {"loss": sum(token_cross_entropy(model(x), y).item() for x, y in batches) / len(batches)}


def gpt_batches(seed: int, steps: int = GPT_STEPS, batch_size: int = GPT_BATCH) -> data.LMBatches:
    return data.LMBatches(data.shakespeare().split("train"), batch_size, gpt_config().context, steps, seed=seed)


@dataclasses.dataclass
class Trained:
    """A model, its optimizer and the curve they left."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    curve: Curve


@cache_runs
def run_gpt(name: str, lr: float, seed: int = 0, schedule: str = "cosine", steps: int = GPT_STEPS,
            decay_fraction: float = 0.2) -> Trained:  # fmt: skip
    """Train a fresh GPT (initialized by ``seed``) with optimizer ``name`` at peak ``lr`` under ``schedule``
    (warm-up of :data:`GPT_WARMUP` steps; schedule-free takes the warm-up and no schedule), gradients clipped
    at 1, validated every :data:`GPT_EVAL_EVERY` steps."""
    seed_everything(seed)
    model = GPT(gpt_config())
    opt = optim.build(name, model, lr, weight_decay=WEIGHT_DECAY, warmup=GPT_WARMUP)
    sched = None if name == "schedulefree" else optim.scheduler(schedule, opt, steps, GPT_WARMUP, decay_fraction)
    curve = optim.train_steps(model, opt, gpt_batches(seed, steps), steps, gpt_eval, eval_every=GPT_EVAL_EVERY,
                              scheduler=sched, grad_clip=1.0)  # fmt: skip
    return Trained(model, opt, curve)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Final validation loss of each optimizer at each learning rate of the sweep (first seed). ``lower`` is
    the direction of the metric (loss: lower is better; accuracy: higher)."""

    lrs: dict[str, list[float]]
    finals: dict[str, list[float]]
    lower: bool = True

    def best(self, name: str) -> float:
        """The learning rate with the best final value (a diverged run counts as the worst)."""
        sign = 1 if self.lower else -1
        scores = [sign * v if math.isfinite(v) else math.inf for v in self.finals[name]]
        return self.lrs[name][scores.index(min(scores))]

    def chosen(self) -> dict[str, float]:
        return {name: self.best(name) for name in self.lrs}


def sweep_gpt() -> Sweep:
    """The same sweep for every optimizer of :data:`GPT_OPTIMIZERS` (``sec-optim-gpt``)."""
    lrs = {name: [centre * f for f in SWEEP] for name, centre in GPT_OPTIMIZERS.items()}
    return Sweep(lrs, {name: [run_gpt(name, lr, SEEDS[0]).curve.final() for lr in grid] for name, grid in lrs.items()})


def mean_curve(curves: list[Curve], metric: str = "loss") -> tuple[list[int], list[float]]:
    """Steps and the mean of ``metric`` over ``curves`` at each (their common evaluated steps)."""
    length = min(len(c.steps) for c in curves)
    return curves[0].steps[:length], [statistics.fmean(c[metric][i] for c in curves) for i in range(length)]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Each optimizer at its chosen learning rate, one curve per seed, its seconds per training step (timed
    interleaved), and the target: ``reference``'s final metric, averaged over the seeds."""

    lrs: dict[str, float]
    curves: dict[str, list[Curve]]
    step_seconds: dict[str, float]
    reference: str = "adamw"
    metric: str = "loss"
    target_value: float | None = None  # None: the reference's mean final value

    @property
    def lower(self) -> bool:
        return self.metric == "loss"

    @property
    def target(self) -> float:
        return self.target_value if self.target_value is not None else statistics.fmean(self.finals(self.reference))

    def finals(self, name: str) -> list[float]:
        return [c.final(self.metric) for c in self.curves[name]]

    def steps_to_target(self, name: str) -> float:
        """Steps at which the mean curve of ``name`` reaches :attr:`target` (``inf``: never)."""
        steps, values = mean_curve(self.curves[name], self.metric)
        return optim.steps_to_target(steps, values, self.target, higher_is_better=not self.lower)

    def step_ratio(self, name: str) -> float:
        """Steps to the target of ``name`` over the reference's."""
        return self.steps_to_target(name) / self.steps_to_target(self.reference)

    def seconds_to_target(self, name: str) -> float:
        return self.steps_to_target(name) * self.step_seconds[name]

    def difference(self, name: str) -> stats.Difference:
        """Final metric of ``name`` minus the reference's, over the seeds."""
        return stats.difference_of_means(self.finals(name), self.finals(self.reference))


def step_seconds(make: dict[str, tuple[nn.Module, torch.optim.Optimizer]], batch, rounds: int) -> dict[str, float]:
    """Seconds of one training step (forward, backward, update) of each ``(model, optimizer)``, timed
    interleaved on the same ``batch`` (:func:`effdl.bench.compare_calls`)."""
    x, y = batch
    for _, opt in make.values():
        if callable(getattr(opt, "train", None)):  # schedule-free steps only in training mode
            opt.train()

    def step(model: nn.Module, opt: torch.optim.Optimizer):
        def call() -> None:
            opt.zero_grad(set_to_none=True)
            token_cross_entropy(model(x), y).backward()
            opt.step()

        return call

    return measure_bench.compare_calls({k: step(m, o) for k, (m, o) in make.items()}, rounds=rounds)


def gpt_step_seconds(lrs: dict[str, float]) -> dict[str, float]:
    """Seconds per GPT training step of each optimizer at its learning rate."""
    made = {}
    for name, lr in lrs.items():
        model = GPT(gpt_config())
        made[name] = (model, optim.build(name, model, lr, weight_decay=WEIGHT_DECAY))
    return step_seconds(made, next(iter(gpt_batches(0))), rounds=pick(fast=10, full=30))


GPT_STEP_TARGET = 0.8  # the book's aim: Muon or Lion reaches AdamW's final val loss in at most this share of its steps


def compare_gpt(sweep: Sweep) -> Comparison:
    """Each optimizer at its chosen learning rate on every seed (``sec-optim-gpt``)."""
    lrs = sweep.chosen()
    curves = {name: [run_gpt(name, lr, seed).curve for seed in SEEDS] for name, lr in lrs.items()}
    return Comparison(lrs, curves, gpt_step_seconds(lrs))


def check_gpt(result: Comparison) -> float:
    """The book's target (Muon or Lion reaches AdamW's final validation loss in at most :data:`GPT_STEP_TARGET` of
    its steps) and the claim of ``sec-optim-gpt``: the better of the two meets it in full mode and takes fewer
    steps than AdamW in fast mode; returns that ratio."""
    best = min(("muon", "lion"), key=result.step_ratio)
    ratio = result.step_ratio(best)
    claims.target("steps to AdamW's final val loss, best of Muon and Lion / AdamW", ratio, "<=", GPT_STEP_TARGET,
                  section="sec-optim-gpt")  # fmt: skip
    claims.claim(f"steps to AdamW's final val loss, {best} / AdamW", ratio, "<", full=GPT_STEP_TARGET, fast=1.0)
    return ratio


# --- from scratch (sec-optim-zoo) -------------------------------------------------------------------------------


def adamw_from_scratch_gap(steps: int = 5, seed: int = 0) -> float:
    """Largest absolute difference between the GPT's parameters after ``steps`` steps of ``torch.optim.AdamW`` and
    copies of them updated by :func:`effdl.optim.adamw_step` with the same gradients (the update rule alone:
    Adam's division by ``sqrt(v)`` would amplify the rounding of two separately computed gradients)."""
    seed_everything(seed)
    model = GPT(gpt_config())
    ours = [p.detach().clone() for p in model.parameters()]
    settings = {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": WEIGHT_DECAY}
    reference = torch.optim.AdamW(model.parameters(), eps=1e-8, **settings)
    states = [{} for _ in ours]
    for x, y in gpt_batches(seed, steps):
        model.zero_grad(set_to_none=True)
        token_cross_entropy(model(x), y).backward()
        for p, state, theirs in zip(ours, states, model.parameters(), strict=True):
            optim.adamw_step(p, theirs.grad, state, **settings)
        reference.step()
    return max((a - b).abs().max().item() for a, b in zip(ours, model.parameters(), strict=True))


@dataclasses.dataclass(frozen=True)
class Orthogonalized:
    """Singular values of a gradient matrix, of :func:`effdl.optim.newton_schulz` of it (fp32), and of torch's
    internal Newton-Schulz (bf16); and the largest entry gap between the two results."""

    before: torch.Tensor
    ours: torch.Tensor
    torch_: torch.Tensor
    gap: float

    @staticmethod
    def in_band(singular: torch.Tensor, low: float = 0.5, high: float = 1.5) -> float:
        """The share of ``singular`` within Muon's band (Newton-Schulz's output lands near 0.7 to 1.2)."""
        return ((singular >= low) & (singular <= high)).float().mean().item()


def newton_schulz_check(seed: int = 0) -> Orthogonalized:
    """Newton-Schulz on a real gradient: the first MLP matrix of a fresh GPT after one batch."""
    from torch.optim._muon import DEFAULT_NS_STEPS, EPS, _zeropower_via_newtonschulz

    seed_everything(seed)
    model = GPT(gpt_config())
    x, y = next(iter(gpt_batches(seed, 1)))
    token_cross_entropy(model(x), y).backward()
    g = model.blocks[0].mlp[0].weight.grad
    ours = optim.newton_schulz(g, DEFAULT_NS_STEPS)
    theirs = _zeropower_via_newtonschulz(g, optim.updates.NS_COEFFICIENTS, DEFAULT_NS_STEPS, EPS).float()
    singular = torch.linalg.svdvals
    return Orthogonalized(singular(g), singular(ours), singular(theirs), (ours - theirs).abs().max().item())


def check_from_scratch(adamw_gap: float, ns: Orthogonalized) -> None:
    """The claims of ``sec-optim-zoo``: the from-scratch AdamW matches torch's, and nine in ten of the Newton-Schulz
    output's singular values lie in Muon's band (a gradient's null directions stay at zero), its entries within
    bf16 rounding of torch's."""
    claims.claim("from-scratch AdamW vs torch.optim.AdamW after 5 steps, max |difference|", adamw_gap, "<=",
                 full=1e-6, fast=1e-6)  # fmt: skip
    claims.claim("share of Newton-Schulz singular values in [0.5, 1.5]", ns.in_band(ns.ours), ">=", full=0.9,
                 fast=0.9)  # fmt: skip
    claims.claim("Newton-Schulz fp32 (ours) vs torch's bf16, max |difference|", ns.gap, "<=", full=0.05, fast=0.05)


# --- the learning-rate range test (sec-optim-range-test) ----------------------------------------------------


def range_test_gpt(name: str = "adamw", seed: int = 0) -> optim.RangeTest:
    """Smith's range test of optimizer ``name`` on a fresh GPT: 1e-5 to 1 over 100 (fast: 50) steps."""
    seed_everything(seed)
    model = GPT(gpt_config())
    opt = optim.build(name, model, 1e-5, weight_decay=WEIGHT_DECAY)
    steps = pick(fast=50, full=100)
    return optim.lr_range_test(model, opt, gpt_batches(seed, steps), lr_min=1e-5, lr_max=1.0, steps=steps)


# --- schedules (sec-optim-schedules) ------------------------------------------------------------------------


WSD_BRANCH = 0.5  # the stable-phase checkpoint (a fraction of the run) that a short decay finishes
WSD_DECAY = 0.1  # ... and that decay's length, a fraction of the full run


def wsd_branch_steps() -> tuple[int, float]:
    """Steps of a run that leaves the WSD schedule's stable phase at :data:`WSD_BRANCH` of the run and decays over
    :data:`WSD_DECAY` of it, and its decay fraction. It trains exactly as the full WSD run does until the branch
    point (same seed, batches and learning rates), so it is what branching from a checkpoint gives."""
    branch, decay = round(WSD_BRANCH * GPT_STEPS), round(WSD_DECAY * GPT_STEPS)
    return branch + decay, decay / (branch + decay)


@dataclasses.dataclass(frozen=True)
class Schedules:
    """One optimizer at its chosen learning rate under each schedule, one curve per seed, and the WSD branches."""

    optimizer: str
    lr: float
    curves: dict[str, list[Curve]]
    branches: list[Curve]

    def finals(self, name: str) -> list[float]:
        return [c.final() for c in self.curves[name]]

    def versus_constant(self, name: str) -> stats.Difference:
        """Final validation loss of ``name`` minus the constant learning rate's, over the seeds."""
        return stats.difference_of_means(self.finals(name), self.finals("constant"))

    def constant_at(self, step: int) -> list[float]:
        """The constant-learning-rate runs' validation loss at ``step`` (interpolated between evaluations)."""
        return [_interpolate(c.steps, c["loss"], step) for c in self.curves["constant"]]


def _interpolate(steps: list[int], values: list[float], at: float) -> float:
    for i in range(1, len(steps)):
        if steps[i - 1] <= at <= steps[i]:
            return values[i - 1] + (values[i] - values[i - 1]) * (at - steps[i - 1]) / (steps[i] - steps[i - 1])
    raise ValueError(f"at must lie within the evaluated steps [{steps[0]}, {steps[-1]}], got {at}")


def schedules(name: str, lr: float) -> Schedules:
    """Optimizer ``name`` at peak ``lr`` under every schedule of :data:`effdl.optim.SCHEDULES` on :data:`SEEDS`, and
    the WSD branch on each seed (``sec-optim-schedules``)."""
    curves = {sched: [run_gpt(name, lr, seed, sched).curve for seed in SEEDS] for sched in optim.SCHEDULES}
    steps, fraction = wsd_branch_steps()
    branches = [run_gpt(name, lr, seed, "wsd", steps, fraction).curve for seed in SEEDS]
    return Schedules(name, lr, curves, branches)


def check_schedules(result: Schedules) -> stats.Difference:
    """The claim of ``sec-optim-schedules``: the better of cosine and WSD ends below the constant learning rate
    (full mode: by more than 0.03 nats; the notebook states whether that exceeds the seeds' noise)."""
    best = min(("cosine", "wsd"), key=lambda name: statistics.fmean(result.finals(name)))
    diff = result.versus_constant(best)
    claims.claim(f"final val loss, {result.optimizer} {best} - constant lr", diff.value, "<",
                 full=-0.03, fast=0.0, unit="nats")  # fmt: skip
    return diff


# --- Fashion-MNIST (sec-optim-fmnist) -----------------------------------------------------------------------


FM_STEPS = pick(fast=150, full=800)
FM_BATCH = 128
FM_EVAL_EVERY = pick(fast=15, full=40)
FM_HIDDEN = (300, 100)  # LeNet-300-100: every weight a matrix, so Muon trains all but the output layer
FM_OPTIMIZERS = {"sgd": 0.4, "momentum": 0.04, "nesterov": 0.04, "adamw": 4e-3, "lion": 4e-4, "muon": 4e-3,
                 "schedulefree": 4e-3}  # fmt: skip
FM_TARGET = pick(fast=0.78, full=0.85)  # validation accuracy to reach


@functools.cache
def fmnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a Fashion-MNIST split: a training subset (fast: 10,000 images), the first 1,000
    (fast) or all validation images, and the test split (fast: its first 1,000)."""
    limit = pick(fast=10000 if split == "train" else 1000, full=None)
    return data.fashion_mnist(split, limit=limit).tensors


class Shuffled:
    """Batches of images and labels in a seeded random order, reshuffled on every pass (an epoch): what
    ``data.loader(..., shuffle=True)`` gives, by indexing the tensors instead of collating image by image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.labels), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            yield self.images[batch], self.labels[batch]


def fmnist_batches(seed: int, batch_size: int = FM_BATCH, limit: int | None = None) -> Shuffled:
    """The training subset, or its first ``limit`` images, in shuffled batches; the loop starts a new epoch when
    one ends."""
    images, labels = fmnist("train")
    return Shuffled(images[:limit], labels[:limit], batch_size, seed)


def fmnist_eval(split: str = "val") -> Callable[[nn.Module], dict[str, float]]:
    """Loss and accuracy of a model on the whole ``split`` (:func:`effdl.train.evaluate`)."""
    return lambda model: train.evaluate(model, [fmnist(split)])


def mlp(seed: int) -> nn.Module:
    seed_everything(seed)
    return models.MLP(FM_HIDDEN)


@cache_runs
def run_fmnist(name: str, lr: float, seed: int = 0, steps: int = FM_STEPS, batch_size: int = FM_BATCH,
               schedule: str = "cosine", scheduler_every: int = 1, warmup: int | None = None,
               train_limit: int | None = None) -> Trained:  # fmt: skip
    """Train a fresh MLP with optimizer ``name`` at peak ``lr`` for ``steps`` batches of ``batch_size`` (from the
    first ``train_limit`` training images) under ``schedule`` with ``warmup`` steps (default: a twentieth of
    the steps), stepped every ``scheduler_every`` batches."""
    model = mlp(seed)
    warmup = max(1, steps // 20) if warmup is None else warmup
    opt = optim.build(name, model, lr, weight_decay=0.0, warmup=warmup, output_layers=(model.net[-1],))
    sched = None if name == "schedulefree" else optim.scheduler(schedule, opt, steps, warmup)
    curve = optim.train_steps(model, opt, fmnist_batches(seed, batch_size, train_limit), steps, fmnist_eval("val"),
                              eval_every=max(1, min(FM_EVAL_EVERY, steps // 5)), scheduler=sched,
                              scheduler_every=scheduler_every)  # fmt: skip
    return Trained(model, opt, curve)


def sweep_fmnist() -> Sweep:
    """The same sweep as the GPT's, on validation accuracy, for every optimizer of :data:`FM_OPTIMIZERS`."""
    lrs = {name: [centre * f for f in SWEEP] for name, centre in FM_OPTIMIZERS.items()}
    final = lambda name, lr: run_fmnist(name, lr, SEEDS[0]).curve.final("accuracy")  # noqa: E731
    return Sweep(lrs, {name: [final(name, lr) for lr in grid] for name, grid in lrs.items()}, lower=False)


def fmnist_step_seconds(lrs: dict[str, float]) -> dict[str, float]:
    made = {}
    for name, lr in lrs.items():
        model = mlp(0)
        made[name] = (model, optim.build(name, model, lr, output_layers=(model.net[-1],)))
    return step_seconds(made, next(iter(fmnist_batches(0))), rounds=pick(fast=10, full=30))


def compare_fmnist(sweep: Sweep) -> Comparison:
    """Each optimizer at its chosen learning rate on every seed, steps to :data:`FM_TARGET` validation accuracy
    (``sec-optim-fmnist``)."""
    lrs = sweep.chosen()
    curves = {name: [run_fmnist(name, lr, seed).curve for seed in SEEDS] for name, lr in lrs.items()}
    return Comparison(lrs, curves, fmnist_step_seconds(lrs), metric="accuracy", target_value=FM_TARGET)


def test_accuracy(lrs: dict[str, float]) -> dict[str, list[float]]:
    """Test accuracy of every seed's final model of each optimizer: the one look at the test split."""
    evaluate = fmnist_eval("test")
    return {name: [evaluate(run_fmnist(name, lr, seed).model.eval())["accuracy"] for seed in SEEDS]
            for name, lr in lrs.items()}  # fmt: skip


def check_fmnist(result: Comparison) -> float:
    """The claim of ``sec-optim-fmnist``: the fastest optimizer reaches the target accuracy in fewer steps than
    plain SGD (which, at the same step budget, may not reach it at all)."""
    fastest = min(result.lrs, key=result.steps_to_target)
    ratio = result.steps_to_target(fastest) / result.steps_to_target("sgd")
    return claims.claim(f"steps to {FM_TARGET:.0%} val accuracy, {fastest} / plain SGD", ratio, "<", full=0.5,
                        fast=1.0)  # fmt: skip


# --- batch size and learning rate (sec-optim-batch) ---------------------------------------------------------


BATCHES = pick(fast=(32, 128, 512, 2048), full=(32, 128, 512, 2048, 8192))
SCALINGS = {"fixed": lambda b: 1.0, "sqrt": lambda b: math.sqrt(b / FM_BATCH), "linear": lambda b: b / FM_BATCH}


@dataclasses.dataclass(frozen=True)
class BatchScaling:
    """Final validation accuracy (per seed of :data:`SEEDS`) of momentum SGD at each batch size under each
    rule for the learning rate, with the same number of training examples; ``base_lr`` is the swept learning rate
    at batch 128."""

    base_lr: float
    accuracy: dict[str, dict[int, list[float]]]

    def mean(self, rule: str, batch: int) -> float:
        return statistics.fmean(self.accuracy[rule][batch])

    def difference(self, rule: str, other: str, batch: int) -> stats.Difference:
        """Accuracy (points) under ``rule`` minus under ``other`` at ``batch``, over the seeds."""
        return stats.difference_of_means([100 * a for a in self.accuracy[rule][batch]],
                                         [100 * a for a in self.accuracy[other][batch]])  # fmt: skip


def batch_scaling(base_lr: float, name: str = "momentum") -> BatchScaling:
    """Train at every batch size of :data:`BATCHES` for the examples of :data:`FM_STEPS` batches of 128, with
    the learning rate fixed, scaled by the square root of the batch ratio, or linearly (``sec-optim-batch``)."""
    examples = FM_STEPS * FM_BATCH
    accuracy: dict[str, dict[int, list[float]]] = {rule: {} for rule in SCALINGS}
    for rule, scale in SCALINGS.items():
        for b in BATCHES:
            lr = base_lr * scale(b)
            accuracy[rule][b] = [run_fmnist(name, lr, seed, max(1, examples // b), b).curve.final("accuracy")
                                 for seed in SEEDS]  # fmt: skip
    return BatchScaling(base_lr, accuracy)


def check_batch_scaling(result: BatchScaling) -> tuple[float, float]:
    """The claims of ``sec-optim-batch``: with the learning rate kept fixed, the largest batch loses accuracy
    against batch 128 (the same examples in far fewer steps), and there the linearly scaled rate is too large:
    the square-root rule beats it. Returns the two gaps (points)."""
    largest = BATCHES[-1]
    fixed_loss = 100 * (result.mean("fixed", FM_BATCH) - result.mean("fixed", largest))
    breaks = 100 * (result.mean("sqrt", largest) - result.mean("linear", largest))
    claims.claim(f"val accuracy with a fixed lr, batch {FM_BATCH} - batch {largest}", fixed_loss, ">", full=10.0,
                 fast=5.0, unit="pt")  # fmt: skip
    claims.claim(f"val accuracy at batch {largest}, sqrt lr - linear lr", breaks, ">", full=1.0, fast=0.0, unit="pt")
    return fixed_loss, breaks


# --- pitfalls (sec-optim-pitfalls) --------------------------------------------------------------------------


EPOCH_IMAGES = pick(fast=1280, full=6400)  # a small training subset, so that the run spans many epochs


@dataclasses.dataclass(frozen=True)
class PerEpoch:
    """A cosine schedule built for every batch, stepped per batch (right) and once per epoch (the mistake):
    the curves per seed."""

    per_batch: list[Curve]
    per_epoch: list[Curve]

    def difference(self, metric: str = "loss") -> stats.Difference:
        """Final ``metric`` stepped per epoch minus per batch, over the seeds."""
        return stats.difference_of_means([c.final(metric) for c in self.per_epoch],
                                         [c.final(metric) for c in self.per_batch])  # fmt: skip


def per_epoch_pitfall(lr: float, name: str = "momentum") -> PerEpoch:
    """Optimizer ``name`` at ``lr`` on the MLP, cosine decay without warm-up over :data:`FM_STEPS` batches of the
    first :data:`EPOCH_IMAGES` images, its scheduler stepped per batch and per epoch (``sec-optim-pitfalls``)."""
    per_epoch = math.ceil(EPOCH_IMAGES / FM_BATCH)
    run = lambda seed, every: run_fmnist(name, lr, seed, warmup=0, scheduler_every=every,  # noqa: E731
                                         train_limit=EPOCH_IMAGES).curve  # fmt: skip
    return PerEpoch([run(s, 1) for s in SEEDS], [run(s, per_epoch) for s in SEEDS])


def check_per_epoch(result: PerEpoch) -> stats.Difference:
    """The claim of ``sec-optim-pitfalls``: stepping the schedule per epoch ends at a higher validation loss (full
    mode: by more than 0.03 nats; the notebook states whether that exceeds the seeds' noise)."""
    diff = result.difference()
    claims.claim("final val loss, schedule stepped per epoch - per batch", diff.value, ">", full=0.03, fast=0.0,
                 unit="nats")  # fmt: skip
    return diff


def effective_decay(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, float]:
    """Per weight matrix of ``model``, trained by Adam with L2 ``weight_decay``: how many times faster than AdamW's
    ``lr * weight_decay`` the decay term shrinks the weights, the median of ``1 / (sqrt(v_hat) + eps)`` over
    the matrix (Adam divides the decay's gradient ``wd * w`` by the same ``sqrt(v_hat)`` as the loss's)."""
    group = optimizer.param_groups[0]
    beta2, eps = group["betas"][1], group["eps"]
    ratios = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p, {})
        if p.ndim == 2 and "exp_avg_sq" in state:
            v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
            ratios[name] = (1 / (v_hat.sqrt() + eps)).median().item()
    return ratios


@dataclasses.dataclass(frozen=True)
class L2VersusDecoupled:
    """Adam with L2 weight decay against AdamW, same learning rate and decay: the first seed's effective decay per
    matrix and every seed's final validation loss."""

    decay: dict[str, float]
    adam: list[float]
    adamw: list[float]

    @property
    def spread(self) -> float:
        """Largest over smallest effective decay among the matrices (AdamW's: exactly 1)."""
        return max(self.decay.values()) / min(self.decay.values())


def l2_versus_decoupled(lr: float) -> L2VersusDecoupled:
    """Adam (L2 decay) against AdamW at the same ``lr`` and :data:`WEIGHT_DECAY` on the GPT (``sec-optim-pitfalls``)."""
    first = run_gpt("adam", lr, SEEDS[0])
    return L2VersusDecoupled(effective_decay(first.optimizer, first.model),
                             [run_gpt("adam", lr, s).curve.final() for s in SEEDS],
                             [run_gpt("adamw", lr, s).curve.final() for s in SEEDS])  # fmt: skip


def schedule_free_gap(lr: float) -> stats.Difference:
    """Validation loss of the schedule-free GPT evaluated at its training point ``y`` (``.eval()`` forgotten)
    minus at its averaged point ``x`` (``.eval()`` called), paired per seed: the mean gap, its standard error."""
    gaps = []
    for seed in SEEDS:
        trained = run_gpt("schedulefree", lr, seed)
        at_x = gpt_eval(trained.model)["loss"]  # the loop leaves the optimizer in eval mode
        trained.optimizer.train()
        at_y = gpt_eval(trained.model)["loss"]
        trained.optimizer.eval()
        gaps.append(at_y - at_x)
    spread = stats.spread(gaps)
    return stats.Difference(spread.mean, spread.se, spread.n - 1)


def muon_on_embeddings(lr: float) -> stats.Difference:
    """Final validation loss with Muon on every matrix (the embedding, tied to the output layer, included) minus
    with Muon on the hidden matrices only, at Muon's chosen ``lr``, over the seeds."""
    every = [run_gpt("muon-all", lr, s).curve.final() for s in SEEDS]
    return stats.difference_of_means(every, [run_gpt("muon", lr, s).curve.final() for s in SEEDS])


def check_pitfalls(decoupled: L2VersusDecoupled, muon_all: stats.Difference) -> None:
    """The claims of ``sec-optim-pitfalls``: Adam's L2 decay acts on the GPT's matrices at rates orders of
    magnitude apart (AdamW's: all equal) and all faster than AdamW's, and Muon on the embedding costs validation
    loss."""
    claims.claim("Adam-L2 effective decay, most / least decayed matrix", decoupled.spread, ">=", full=50.0, fast=5.0)
    claims.claim("Adam-L2 effective decay of the least decayed matrix / AdamW's", min(decoupled.decay.values()), ">",
                 full=1.0, fast=1.0)  # fmt: skip
    claims.claim("val loss, Muon on every matrix - on hidden matrices only", muon_all.value, ">", full=0.01,
                 fast=0.0, unit="nats")  # fmt: skip


# --- self-checks for the exercises --------------------------------------------------------------------------


def self_check_nesterov(step) -> bool:
    """Exercise 1: does ``step(param, grad, buf, lr, momentum)`` (updating ``param`` and the momentum buffer
    ``buf`` in place) follow ``torch.optim.SGD(nesterov=True)`` for 5 steps on a quadratic, to 1e-6?"""
    torch.manual_seed(0)
    target, start = torch.randn(20), torch.randn(20)
    ours, theirs = start.clone(), start.clone().requires_grad_()
    buf = torch.zeros(20)
    reference = torch.optim.SGD([theirs], lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(5):
        step(ours, ours - target, buf, 0.1, 0.9)  # the gradient of |p - target|^2 / 2
        reference.zero_grad()
        (0.5 * (theirs - target).pow(2).sum()).backward()
        reference.step()
    gap = (ours - theirs.detach()).abs().max().item()
    problems = [] if gap <= 1e-6 else [f"parameters differ from torch's by up to {gap:.3g} after 5 steps"]
    return claims.self_check(problems, f"matches torch.optim.SGD(nesterov=True) to {gap:.1e}")


@functools.cache
def range_test_fmnist(name: str = "momentum", seed: int = 0) -> optim.RangeTest:
    """Smith's range test of optimizer ``name`` on the MLP: 1e-4 to 10 over 100 batches."""
    model = mlp(seed)
    opt = optim.build(name, model, 1e-4, output_layers=(model.net[-1],))
    return optim.lr_range_test(model, opt, fmnist_batches(seed), lr_min=1e-4, lr_max=10.0, steps=100)


def self_check_range_test(answer: float, name: str = "momentum") -> bool:
    """Exercise 2: is ``answer`` within a factor of 2 of the learning rate the range test suggests for ``name``
    on the MLP (a tenth of the learning rate of the lowest smoothed loss)?"""
    right = range_test_fmnist(name).suggested
    ok = right / 2 <= answer <= 2 * right
    problems = [] if ok else [f"{answer:.3g} is not within a factor of 2 of the suggestion"]
    return claims.self_check(problems, f"the range test suggests {right:.3g}")


def self_check_wsd(schedule) -> bool:
    """Exercise 3: does ``schedule(step, steps, warmup, decay_fraction)`` give the factor of the peak learning rate
    of :func:`effdl.optim.schedules.factor`'s ``wsd`` at every step of a few settings?"""
    settings = [(100, 10, 0.2), (300, 30, 0.1), (50, 0, 0.5)]
    wrong = [(steps, warmup, fraction, step) for steps, warmup, fraction in settings for step in range(steps)
             if abs(schedule(step, steps, warmup, fraction)
                    - optim.schedules.factor("wsd", step, steps, warmup, fraction)) > 1e-9]  # fmt: skip
    problems = [f"{len(wrong)} steps differ, the first at step {wrong[0][3]} of {wrong[0][:3]}"] if wrong else []
    return claims.self_check(problems, "warm-up, stable and decay at every step")


def bench() -> None:
    """The chapter's rows: from-scratch updates, the GPT comparison and its target, schedules, Fashion-MNIST,
    batch-size scaling, the pitfalls."""
    check_from_scratch(adamw_from_scratch_gap(), newton_schulz_check())
    gpt = compare_gpt(sweep_gpt())
    check_gpt(gpt)
    for name in gpt.lrs:
        claims.measure(f"GPT seconds to AdamW's final val loss, {name}", gpt.seconds_to_target(name), "s")
    check_schedules(schedules("muon", gpt.lrs["muon"]))
    fm = compare_fmnist(sweep_fmnist())
    check_fmnist(fm)
    check_batch_scaling(batch_scaling(fm.lrs["momentum"]))
    check_per_epoch(per_epoch_pitfall(fm.lrs["momentum"]))
    check_pitfalls(l2_versus_decoupled(gpt.lrs["adamw"]), muon_on_embeddings(gpt.lrs["muon"]))
    claims.measure("schedule-free val loss, at y - at x", schedule_free_gap(gpt.lrs["schedulefree"]).value, "nats")
