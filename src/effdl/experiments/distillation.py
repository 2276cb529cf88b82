"""The experiments of ``chap-distill`` (``notebooks/07_distillation.ipynb``): a small CNN taught by the trained
ResNet on Fashion-MNIST, against the same CNN trained on the labels alone.

The teachers' logits on the training images are computed once per process (:func:`teacher_logits`); every
student then trains with :func:`effdl.train.fit` and one of the losses of :mod:`effdl.distill`, with the same
optimizer, schedule and images, no augmentation (a flipped image would need the teacher's logits of the
flipped image). Wins are measured over :data:`SEEDS` seeds (mean and standard error); the sweep uses one.
Models train on :func:`effdl.device`; the ``self_check_*`` functions check the exercises.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from effdl import bench as measure_bench
from effdl import claims, data, stats, train, zoo
from effdl.config import device, pick, seed_everything
from effdl.distill import Distiller, FeatureKDLoss, KDLoss, combine_teachers
from effdl.distill.features import FeatureTap, attention_loss
from effdl.distill.losses import soft_targets, teacher_labels
from effdl.experiments._shared import fmnist_accuracy, fmnist_batches, n_test_images
from effdl.experiments._shared import fmnist_macs as macs
from effdl.models import CNN

NOTEBOOK = "07_distillation"
TEACHERS = ("resnet-fmnist", "cnn-fmnist")  # the first is the teacher; both teach in the multi-teacher runs
CANDIDATES = ("CNN w4", "CNN w8", "CNN w16")  # the students to choose from (:func:`student`)
MIN_GAP = 2.0  # points of validation accuracy the chosen student must trail the teacher by
TRAIN_IMAGES = pick(fast=3000, full=None)  # None: the whole train split, 55,000 images
EPOCHS = pick(fast=2, full=3, gpu=10)
MIN_STEPS = pick(fast=40, full=400)  # a run on a few labelled images still takes this many optimizer steps
SEEDS = pick(fast=(0, 1), full=(0, 1, 2))
BATCH = 128
LABEL_FRACTIONS = pick(fast=(0.1, 1.0), full=(0.01, 0.1, 1.0))
SWEEP_TEMPERATURES = pick(fast=(1.0, 4.0), full=(1.0, 2.0, 4.0))
SWEEP_ALPHAS = (0.5, 0.9)
SWEEP_FRACTION = 0.1  # the sweep trains on this share of the images, one seed per cell
Setting = tuple[float, float]  # (temperature, alpha) of KD, chosen by the sweep on the validation split
HINT_PAIR = {"features.0": "stages.0"}  # student layer -> teacher layer, both 28x28 maps
HINT_WEIGHT = 1.0
KD_GAP_TARGET = 0.4  # the book's aim: KD closes at least 40 % of the teacher-student gap


# --- teachers, images, students --------------------------------------------------------------------


@functools.cache
def teachers() -> dict[str, nn.Module]:
    """The trained teachers of ``chap-measuring`` in eval mode on :func:`effdl.device`."""
    return {name: zoo.pretrained(name).model.eval().to(device()) for name in TEACHERS}


@functools.cache
def train_images() -> TensorDataset:
    """The training images every student sees (the whole train split; its first 3,000 in fast mode)."""
    return data.fashion_mnist("train", limit=TRAIN_IMAGES)


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """``model``'s logits for ``images``, computed in batches on its device and returned on the CPU."""
    dev = measure_bench.model_device(model)
    return torch.cat([model(chunk.to(dev)).float().cpu() for chunk in images.split(batch)])


@functools.cache
def teacher_logits() -> dict[str, torch.Tensor]:
    """Each teacher's logits on :func:`train_images`, computed once (``sec-distill-kd``)."""
    images = train_images().tensors[0]
    return {name: logits_of(model, images) for name, model in teachers().items()}


def student(name: str) -> nn.Module:
    """A fresh, untrained student ``"CNN w<width>"``: one conv block of ``width`` channels and a linear head,
    without dropout (it trains 2x faster); :data:`CANDIDATES` are the widths the chapter chooses from."""
    match = re.fullmatch(r"CNN w([1-9][0-9]*)", name)
    if match is None:
        raise ValueError(f"name must be 'CNN w<width>' with a positive width, got {name!r}")
    return CNN(width=int(match[1]), depth=1, dropout=0.0)


class TargetBatches:
    """``(images, (labels, teacher logits))`` batches for :class:`~effdl.distill.losses.KDLoss`, shuffled with
    ``seed``: what :func:`effdl.train.fit` iterates over."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, seed: int) -> None:
        self.loader = data.loader(TensorDataset(images, labels, targets), BATCH, shuffle=True, seed=seed)

    def __iter__(self):
        for x, y, t in self.loader:
            yield x, (y, t)

    def __len__(self) -> int:
        return len(self.loader)


def subset(fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of a random ``fraction`` of :func:`train_images` (the same for every method at one seed)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = len(train_images())
    return torch.randperm(n, generator=torch.Generator().manual_seed(1000 + seed))[: max(BATCH, round(fraction * n))]


# --- one student, one method -------------------------------------------------------------------------


METHODS = ("alone", "teacher labels", "KD", "multi-teacher KD", "hints + KD")
COMPARED = METHODS[:-1]  # over seeds; the hint, which runs the teacher at every step, from seed 0 only


def _targets(method: str, logits: dict[str, torch.Tensor], how: str, temperature: float) -> torch.Tensor:
    if method == "teacher labels":
        return teacher_labels(logits[TEACHERS[0]])
    if method == "multi-teacher KD":
        return combine_teachers([logits[name] for name in TEACHERS], how, temperature)
    return logits[TEACHERS[0]]


def train_student(name: str, method: str, seed: int, fraction: float = 1.0, temperature: float = 4.0,
                  alpha: float = 0.9, how: str = "probabilities", scale: bool = True,
                  targets: torch.Tensor | None = None, initial: Callable[[nn.Module], None] | None = None,
                  ) -> nn.Module:  # fmt: skip
    """Student ``name`` trained from seed ``seed`` by ``method`` (:data:`METHODS`) on ``fraction`` of the training
    images: AdamW with a one-cycle schedule for :data:`EPOCHS` epochs, more on a small subset, so that every run
    takes at least :data:`MIN_STEPS` steps. ``targets`` replaces the teacher's cached
    logits (a pitfall), ``initial`` edits the fresh student before training (another); ``scale=False`` leaves
    out KD's ``T²``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    seed_everything(seed)
    model = student(name)
    if initial is not None:
        initial(model)
    index = subset(fraction, seed) if fraction < 1 else torch.arange(len(train_images()))
    images, labels = train_images().tensors[0][index], train_images().tensors[1][index]
    logits = {k: v[index] for k, v in teacher_logits().items()}
    if targets is not None:
        logits[TEACHERS[0]] = targets[index]
    if method == "alone" or method == "teacher labels":
        hard = labels if method == "alone" else _targets(method, logits, how, temperature)
        batches: Iterable = data.loader(TensorDataset(images, hard), BATCH, shuffle=True, seed=seed)
        loss: Callable = train.token_cross_entropy
    else:
        batches = TargetBatches(images, labels, _targets(method, logits, how, temperature), seed)
        loss = KDLoss(temperature, alpha, scale)
    fitted = model
    if method == "hints + KD":
        fitted = Distiller(model.to(device()), teachers()[TEACHERS[0]], HINT_PAIR, images[:8].to(device()))
        batches = data.loader(TensorDataset(images, labels), BATCH, shuffle=True, seed=seed)
        loss = FeatureKDLoss(HINT_WEIGHT, KDLoss(temperature, alpha, scale))
    epochs = max(EPOCHS, math.ceil(MIN_STEPS / len(batches)))
    learned = [p for p in fitted.parameters() if p.requires_grad]  # not a Distiller's teacher
    optimizer = torch.optim.AdamW(learned, lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * len(batches))
    train.fit(fitted, batches, epochs=epochs, loss=loss, optimizer=optimizer, scheduler=schedule, progress=False)
    return (fitted.release() if isinstance(fitted, Distiller) else fitted).eval()


def trained(name: str, method: str, seed: int, fraction: float = 1.0, **options) -> nn.Module:
    """:func:`train_student` with hashable arguments, trained once per process: the seed-0 student alone serves
    the choice of student, the comparison and the pitfalls alike. Do not modify the model it returns."""
    if method in ("alone", "teacher labels"):  # KD's options do not change these runs
        options = {k: v for k, v in options.items() if k not in ("temperature", "alpha", "how", "scale")}
    return _trained(name, method, seed, fraction, tuple(sorted(options.items())))


@functools.cache
def _trained(name: str, method: str, seed: int, fraction: float, options: tuple) -> nn.Module:
    return train_student(name, method, seed, fraction, **dict(options))


def example_soft_targets(temperatures: tuple[float, ...] = (1.0, 4.0), image: int = 0) -> dict[float, torch.Tensor]:
    """The teacher's class probabilities for test image ``image`` at each temperature (``sec-distill-kd``)."""
    x, _ = fmnist_batches()[0]
    logits = logits_of(teachers()[TEACHERS[0]], x[image : image + 1])[0]
    return {t: soft_targets(logits, t) for t in temperatures}


@torch.no_grad()
def attention_gaps(students: dict[str, nn.Module], pair: dict[str, str] = HINT_PAIR) -> dict[str, float]:
    """Attention-transfer distance (:func:`~effdl.distill.features.attention_loss`) between each student's layer
    and the teacher's layer of ``pair`` on the first 1,000 test images: how alike they look at an image
    (``sec-distill-features``)."""
    (s_layer, t_layer), = pair.items()
    x, _ = fmnist_batches()[0]
    teacher = teachers()[TEACHERS[0]]
    tap = FeatureTap(teacher, [t_layer])
    teacher(x.to(device()))
    target = tap.features[t_layer]
    tap.remove()
    gaps = {}
    for label, model in students.items():
        tap = FeatureTap(model, [s_layer])
        model(x.to(measure_bench.model_device(model)))
        gaps[label] = attention_loss(tap.features[s_layer], target).item()
        tap.remove()
    return gaps


def check_attention(gaps: dict[str, float]) -> float:
    """The claim of ``sec-distill-results`` on hints: the hint brings the student's attention closer to the
    teacher's than training alone does (the ratio of :func:`attention_gaps`)."""
    return claims.claim("attention distance to the teacher, hints + KD / alone", gaps["hints + KD"] / gaps["alone"],
                        "<", full=1.0, fast=1.0)  # fmt: skip


# --- choosing the student (sec-distill-setup) ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Choice:
    """Validation accuracy of the teacher and of each candidate trained alone (seed 0), and the chosen one."""

    teacher: float
    candidates: dict[str, float]
    macs: dict[str, float]
    chosen: str


def choose_student() -> Choice:
    """Train each candidate alone (seed 0) and keep the largest whose validation accuracy trails the teacher's by
    at least :data:`MIN_GAP` points: the test split chooses nothing (``sec-distill-setup``)."""
    teacher = fmnist_accuracy(teachers()[TEACHERS[0]], "val")
    scores = {name: fmnist_accuracy(trained(name, "alone", 0), "val") for name in CANDIDATES}
    sizes = {name: macs(student(name)) for name in CANDIDATES}
    wide_gap = [name for name in CANDIDATES if 100 * (teacher - scores[name]) >= MIN_GAP]
    chosen = max(wide_gap, key=sizes.get) if wide_gap else min(CANDIDATES, key=sizes.get)
    return Choice(teacher, scores, sizes, chosen)


# --- methods over seeds (sec-distill-kd) ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Test accuracy (a fraction) of the teacher and of each method, one value per seed."""

    teacher: float
    accuracy: dict[str, list[float]]

    def mean(self, method: str) -> float:
        return sum(self.accuracy[method]) / len(self.accuracy[method])

    def gain(self, method: str, over: str = "alone") -> stats.Difference:
        """``method`` minus ``over`` in points, with its standard error over seeds."""
        diff = stats.difference_of_means(self.accuracy[method], self.accuracy[over])
        return stats.Difference(100 * diff.value, 100 * diff.se, diff.dof)

    def gap_closed(self, method: str = "KD") -> float:
        """(method − alone) / (teacher − alone): the share of the teacher-student gap the method closes."""
        return (self.mean(method) - self.mean("alone")) / (self.teacher - self.mean("alone"))


def _kd(setting: Setting) -> dict[str, float]:
    return {"temperature": setting[0], "alpha": setting[1]}


def compare_methods(name: str, setting: Setting, methods: tuple[str, ...] = COMPARED,
                    fraction: float = 1.0) -> Comparison:  # fmt: skip
    """Test accuracy of student ``name`` trained by each of ``methods`` from each of :data:`SEEDS`, KD at
    ``setting`` (``sec-distill-results``)."""
    accuracy = {m: [fmnist_accuracy(trained(name, m, s, fraction, **_kd(setting))) for s in SEEDS] for m in methods}
    return Comparison(fmnist_accuracy(teachers()[TEACHERS[0]]), accuracy)


def check_kd(result: Comparison) -> stats.Difference:
    """The claims of ``sec-distill-results`` with every label (KD costs the student nothing, nor does it fall below
    the teacher's argmax labels; fast mode's weak teacher, trained briefly on few images, leaves little to teach) and
    the book's
    targets: a gain over the student alone of more than two standard errors over seeds, and at least 40 % of the
    gap closed."""
    gain = result.gain("KD")
    claims.claim("KD minus student alone, all labels (mean of seeds)", gain.value, ">=", full=-0.5, fast=-2.0,
                 unit="pt")  # fmt: skip
    claims.claim("KD minus the teacher's argmax labels (mean of seeds)", result.gain("KD", "teacher labels").value,
                 ">=", full=0.0, fast=-2.0, unit="pt")  # fmt: skip
    claims.target("KD gain over the student alone, in standard errors", gain.value / gain.se if gain.se else math.inf,
                  ">", 2.0, section="sec-distill-results")  # fmt: skip
    claims.target("KD gap closed", result.gap_closed("KD"), ">=", KD_GAP_TARGET, section="sec-distill-results")
    return gain


def check_low_labels(curve: dict[float, Comparison]) -> stats.Difference:
    """The claims of ``sec-distill-results`` on fewer labels: with the fewest, KD gains at least a point over the
    student alone, and more than with every label (also the book's target)."""
    smallest = min(curve)
    gain = curve[smallest].gain("KD")
    claims.claim(f"KD minus student alone, {smallest:.0%} of the labels (mean of seeds)", gain.value, ">=",
                 full=1.0, fast=-2.0, unit="pt")  # fmt: skip
    more = gain.value - curve[1.0].gain("KD").value
    claims.claim(f"KD gain at {smallest:.0%} of the labels minus the gain at 100 %", more, ">", full=0.5, fast=-2.0,
                 unit="pt")  # fmt: skip
    claims.target(f"KD gain at {smallest:.0%} of the labels exceeds the gain at 100 %", more, ">", 0.0, unit="pt",
                  section="sec-distill-results")  # fmt: skip
    return gain


def low_label_curve(name: str, setting: Setting) -> dict[float, Comparison]:
    """Student alone against KD when only a fraction of the labelled images is seen (``sec-distill-results``): the
    student trains on that subset only, so any gain comes from the soft targets on the same images."""
    return {f: compare_methods(name, setting, ("alone", "KD"), f) for f in LABEL_FRACTIONS}


def fit_gap(name: str) -> dict[float, dict[str, float]]:
    """Accuracy of the seed-0 student alone on the training images it saw and on the test images, at each fraction
    of the labels (``sec-distill-results``): a student that cannot fit even its training images is limited by its
    size and schedule, not by what its targets teach it; one that fits them far better than the test images is
    where soft targets help."""
    gaps = {}
    for fraction in LABEL_FRACTIONS:
        index = subset(fraction) if fraction < 1 else torch.arange(len(train_images()))
        images, labels = train_images().tensors[0][index], train_images().tensors[1][index]
        model = trained(name, "alone", 0, fraction)
        seen = list(zip(images.split(1000), labels.split(1000), strict=True))
        gaps[fraction] = {"train": train.accuracy(model, seen), "test": fmnist_accuracy(model)}
    return gaps


def check_fit_gap(fit: dict[float, dict[str, float]]) -> float:
    """The claim of ``sec-distill-results`` behind the low-label gain: the student alone fits its training images
    far better than the test images when it has few labels, and hardly better with all of them."""
    overfit = {f: 100 * (row["train"] - row["test"]) for f, row in fit.items()}
    return claims.claim(f"student alone, train minus test accuracy at {min(fit):.0%} minus at 100 % of the labels",
                        overfit[min(fit)] - overfit[1.0], ">=", full=5.0, fast=0.0, unit="pt")  # fmt: skip


def temperature_sweep(name: str) -> dict[Setting, float]:
    """Validation accuracy of KD at each temperature and alpha, one seed on :data:`SWEEP_FRACTION` of the images
    (``sec-distill-sweep``), and of the student alone on the same images under key ``(0.0, 0.0)``."""
    sweep = {(t, a): fmnist_accuracy(trained(name, "KD", 0, SWEEP_FRACTION, temperature=t, alpha=a), "val")
             for t in SWEEP_TEMPERATURES for a in SWEEP_ALPHAS}  # fmt: skip
    return sweep | {(0.0, 0.0): fmnist_accuracy(trained(name, "alone", 0, SWEEP_FRACTION), "val")}


def best_setting(sweep: dict[Setting, float]) -> Setting:
    """The (temperature, alpha) of :func:`temperature_sweep` with the best validation accuracy."""
    return max((key for key in sweep if key != (0.0, 0.0)), key=sweep.get)


def multi_teacher_rows(name: str, setting: Setting, result: Comparison) -> dict[str, list[float]]:
    """Test accuracy of KD at ``setting`` from each teacher alone and from both combined by probabilities
    (``result``'s runs) or by logits, over :data:`SEEDS` (``sec-distill-multi``)."""
    second = teacher_logits()[TEACHERS[1]]
    from_second = [fmnist_accuracy(train_student(name, "KD", s, targets=second, **_kd(setting))) for s in SEEDS]
    by_logits = [fmnist_accuracy(trained(name, "multi-teacher KD", s, how="logits", **_kd(setting))) for s in SEEDS]
    return {f"from {TEACHERS[0]}": result.accuracy["KD"], f"from {TEACHERS[1]}": from_second,
            "both, probabilities": result.accuracy["multi-teacher KD"], "both, logits": by_logits}  # fmt: skip


def multi_vs_single(rows: dict[str, list[float]]) -> tuple[str, str, stats.Difference]:
    """From :func:`multi_teacher_rows`: the better single teacher, the better way of combining both, and the
    combination minus that teacher in points over seeds (``sec-distill-multi``)."""
    single = max((k for k in rows if k.startswith("from ")), key=lambda k: sum(rows[k]))
    both = max((k for k in rows if k.startswith("both, ")), key=lambda k: sum(rows[k]))
    diff = stats.difference_of_means(rows[both], rows[single])
    return single.removeprefix("from "), both.removeprefix("both, "), stats.Difference(
        100 * diff.value, 100 * diff.se, diff.dof)


@dataclasses.dataclass(frozen=True)
class StudentEnsemble:
    """Test accuracy of the students trained alone (one per seed), of their ensemble (probabilities averaged), and of
    one student of the same size distilled from that ensemble, per seed (``sec-distill-multi``)."""

    members: list[float]
    ensemble: float
    distilled: list[float]

    @property
    def member_mean(self) -> float:
        """The members' mean test accuracy."""
        return sum(self.members) / len(self.members)

    def ensemble_gain(self) -> float:
        """The ensemble minus its average member, in points."""
        return 100 * (self.ensemble - self.member_mean)

    def distilled_gain(self) -> stats.Difference:
        """The distilled students minus the members, in points over seeds."""
        diff = stats.difference_of_means(self.distilled, self.members)
        return stats.Difference(100 * diff.value, 100 * diff.se, diff.dof)


def ensemble_targets(members: list[nn.Module], temperature: float) -> torch.Tensor:
    """The members' probabilities at ``temperature`` averaged on :func:`train_images`: the targets that distil an
    ensemble into one student (``sec-distill-multi``)."""
    images = train_images().tensors[0]
    return combine_teachers([logits_of(m, images) for m in members], "probabilities", temperature)


def ensemble_of_students(name: str, setting: Setting) -> StudentEnsemble:
    """The :data:`SEEDS` students ``name`` trained alone, averaged into an ensemble, then distilled at ``setting``
    into one student of the same size from each seed: the ensemble's soft targets on the training images
    replace the teacher's (``sec-distill-multi``)."""
    members = [trained(name, "alone", s) for s in SEEDS]
    x, y = (torch.cat(part) for part in zip(*fmnist_batches(), strict=True))
    test_logits = [logits_of(m, x) for m in members]
    ensemble = combine_teachers(test_logits, "probabilities", 1.0).argmax(1).eq(y).float().mean().item()
    targets = ensemble_targets(members, setting[0])
    distilled = [fmnist_accuracy(train_student(name, "KD", s, targets=targets, **_kd(setting))) for s in SEEDS]
    return StudentEnsemble([fmnist_accuracy(m) for m in members], ensemble, distilled)


def check_ensemble(result: StudentEnsemble) -> float:
    """The claim of ``sec-distill-multi`` on students: their ensemble beats its average member."""
    return claims.claim("ensemble of students minus their mean", result.ensemble_gain(), ">=", full=0.2, fast=-1.0,
                        unit="pt")  # fmt: skip


# --- pitfalls (sec-distill-pitfalls) ---------------------------------------------------------------


@torch.no_grad()
def train_mode_logits() -> torch.Tensor:
    """The teacher's logits on :func:`train_images` with the teacher left in train mode: BatchNorm normalizes
    each batch by its own statistics (and updates its running ones) instead of the trained ones."""
    teacher = copy.deepcopy(teachers()[TEACHERS[0]]).train()
    return logits_of(teacher, train_images().tensors[0], batch=BATCH)


def copy_teacher_weights(model: nn.Module) -> None:
    """"Parameter distillation": copy the teacher's stem filters into the student's first convolution, as
    many as fit (a common mistake: the student computes different features, so the copied ones fit nothing)."""
    teacher_conv = teachers()[TEACHERS[0]].stem[0].weight.detach().cpu()
    conv = model.features[0][0]
    with torch.no_grad():
        n = min(conv.out_channels, teacher_conv.shape[0])
        conv.weight[:n] = teacher_conv[:n]


PITFALL_TEMPERATURE = 8.0  # forgetting T² is measured where it matters: at a high temperature


def pitfalls(name: str, setting: Setting, seed: int = 0) -> dict[str, float]:
    """Test accuracy of KD at ``setting`` done right and of each pitfall, seed ``seed``: no ``T²`` (both at
    :data:`PITFALL_TEMPERATURE`), a teacher in train mode, the teacher's weights copied into the student (then
    trained alone), beside the student alone."""
    kd, hot = _kd(setting), {"temperature": PITFALL_TEMPERATURE, "alpha": setting[1]}
    return {
        "KD": fmnist_accuracy(trained(name, "KD", seed, **kd)),
        "KD, high T": fmnist_accuracy(trained(name, "KD", seed, **hot)),
        "KD, high T, without T²": fmnist_accuracy(trained(name, "KD", seed, scale=False, **hot)),
        "teacher in train mode": fmnist_accuracy(train_student(name, "KD", seed, targets=train_mode_logits(), **kd)),
        "teacher weights copied": fmnist_accuracy(train_student(name, "alone", seed, initial=copy_teacher_weights)),
        "alone": fmnist_accuracy(trained(name, "alone", seed)),
    }


def teacher_train_mode_accuracy() -> float:
    """The teacher's test accuracy when it is run in train mode, batch by batch, as :func:`train_mode_logits`."""
    teacher = copy.deepcopy(teachers()[TEACHERS[0]]).train()
    hits = [(logits_of(teacher, x, BATCH).argmax(1) == y).float() for x, y in fmnist_batches()]
    return torch.cat(hits).mean().item()


# --- self-checks for the exercises -------------------------------------------------------------------


def self_check_gap_closed(answer: float, result: Comparison, tolerance: float = 0.01) -> bool:
    """Exercise 1: is ``answer`` the share of the teacher-student gap that KD closed in ``result``?"""
    right = result.gap_closed("KD")
    problems = [] if abs(answer - right) <= tolerance else [
        f"{answer:.3f} is not (KD − alone) / (teacher − alone) of the means over seeds"]  # fmt: skip
    return claims.self_check(problems, f"KD closed {right:.1%} of the gap")


def self_check_kd_loss(kd_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                       temperature: float = 4.0, alpha: float = 0.9) -> bool:  # fmt: skip
    """Exercise 2: does ``kd_loss(student_logits, teacher_logits, labels)`` equal the KD loss at ``temperature``
    and ``alpha`` (``T²``-scaled batch-mean KL plus the hard-label term) on random logits?"""
    gen = torch.Generator().manual_seed(0)
    student_logits, teacher = 3 * torch.randn(32, 10, generator=gen), 3 * torch.randn(32, 10, generator=gen)
    labels = torch.randint(0, 10, (32,), generator=gen)
    expected = KDLoss(temperature, alpha)(student_logits, (labels, teacher)).item()
    yours = float(kd_loss(student_logits, teacher, labels))
    problems = []
    if abs(yours - expected) > 1e-4 * max(1.0, abs(expected)):
        unscaled = KDLoss(temperature, alpha, scale=False)(student_logits, (labels, teacher)).item()
        hint = " (the T² is missing)" if abs(yours - unscaled) < 1e-4 else ""
        problems.append(f"{yours:.5f} instead of {expected:.5f}{hint}")
    return claims.self_check(problems, f"{yours:.5f}, the KD loss at T={temperature:g}, alpha={alpha:g}")


def self_check_student(model: nn.Module, max_macs: float, min_accuracy: float) -> bool:
    """Exercise 4: at most ``max_macs`` multiply-accumulates and at least ``min_accuracy`` test accuracy?"""
    model_macs, accuracy = macs(model.eval()), fmnist_accuracy(model)
    problems = [f"{model_macs:,.0f} MACs, more than {max_macs:,.0f}"] if model_macs > max_macs else []
    if accuracy < min_accuracy:
        problems.append(f"test accuracy {accuracy:.2%} is below {min_accuracy:.2%}")
    return claims.self_check(problems, f"{model_macs:,.0f} MACs, test accuracy {accuracy:.2%}")


def bench() -> None:
    """The chapter's headline rows: the student chosen, KD and the other methods over seeds, KD's share of the
    gap, the low-label gain, the ensemble of students."""
    choice = choose_student()
    claims.measure("teacher validation accuracy", 100 * choice.teacher, "%")
    setting = best_setting(temperature_sweep(choice.chosen))
    claims.measure("KD temperature chosen on validation", setting[0])
    claims.measure("KD alpha chosen on validation", setting[1])
    result = compare_methods(choice.chosen, setting)
    check_kd(result)
    for method in result.accuracy:
        claims.measure(f"{method} test accuracy (mean of seeds)", 100 * result.mean(method), "%")
    check_low_labels(low_label_curve(choice.chosen, setting))
    check_ensemble(ensemble_of_students(choice.chosen, setting))
    claims.measure("test images", n_test_images())

