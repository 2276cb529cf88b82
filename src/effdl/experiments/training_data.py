"""The experiments of ``chap-data`` (``notebooks/14_training_data.ipynb``): where preprocessing runs, which
augmentations pay at a fixed budget, which examples to keep, and what duplicated text does to a language model.

Images: Fashion-MNIST, small models trained from scratch for a fixed number of optimizer steps (every run is a few
seconds on a 2-core CPU, so every comparison that the prose calls a win runs three seeds in full mode). Choices are
made on the validation split, results reported on the test split. Text: the Shakespeare corpus, a scraped copy of
it with planted duplicates, and the book's GPT in its fast-mode shape (:data:`GPT_SHAPE`) in both modes; the leak
across the split is measured with a counting (n-gram) model, which memorizes in one pass what a small GPT needs
many steps to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import re
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from effdl import bench as measure_bench
from effdl import claims, data, lm, models, stats, train
from effdl.config import pick, seed_everything
from effdl.curate import augment, dedup, loading, scores, selection
from effdl.experiments._shared import cache_runs, fmnist_batches

NOTEBOOK = "14_training_data"
SEEDS = pick(fast=(0, 1), full=(0, 1, 2))
BATCH = 128


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (or the decorated function), as a DataLoader worker
    does. Every model of this chapter is tiny: a second thread buys it little, and on a busy machine (a shared CI
    runner, the other chapters' jobs) its kernels of a few hundred kilobytes wait for an idle core far longer than
    they compute, ten times slower in our measurements."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

# --- where preprocessing runs (sec-data-loading) ------------------------------------------------------

LOAD_IMAGES = pick(fast=2048, full=20000)
LOAD_BATCH = 256
LOAD_ROUNDS = pick(fast=2, full=3)
LOAD_SECONDS = pick(fast=0.1, full=0.5)  # timing budget of each variant in each round


def stored_images(split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as it is stored, ``uint8`` pixels ``(N, 28, 28)``, with its labels: the book's normalized
    images mapped back to bytes (exact: they were bytes divided by 255)."""
    images, labels = data.fashion_mnist(split, limit=limit).tensors
    pixels = (images.squeeze(1) * data.FMNIST_STD + data.FMNIST_MEAN) * 255
    return pixels.round().clamp(0, 255).to(torch.uint8), labels


def _consume(batches) -> int:
    return sum(len(y) for _, y in batches)


def loader_variants(raw: torch.Tensor, labels: torch.Tensor) -> dict[str, Callable[[], int]]:
    """One epoch of shuffled batches, each way of ``sec-data-loading``; each call returns the images it served."""
    mean, std = data.FMNIST_MEAN, data.FMNIST_STD
    per_example = loading.PerExampleImages(raw, labels, mean, std)
    ready = loading.normalize_images(raw, mean, std)
    per_batch = lambda: ((loading.normalize_images(x, mean, std), y)  # noqa: E731
                         for x, y in loading.slice_batches(raw, labels, LOAD_BATCH))  # fmt: skip
    return {
        "per example": lambda: _consume(DataLoader(per_example, LOAD_BATCH, shuffle=True)),
        "per batch": lambda: _consume(per_batch()),
        "once, then DataLoader": lambda: _consume(data.loader(data.TensorDataset(ready, labels), LOAD_BATCH, True)),
        "once, then slices": lambda: _consume(loading.slice_batches(ready, labels, LOAD_BATCH)),
        # last: its worker processes exit in the background after each epoch and would slow the next variant
        "per example, 2 workers": lambda: _consume(DataLoader(per_example, LOAD_BATCH, shuffle=True, num_workers=2)),
    }


@dataclasses.dataclass(frozen=True)
class Loading:
    """Images per second of each loader variant, the seconds of the one-time conversion, and how many images per
    second the augmentation chapter's CNN trains on (the rate a loader has to keep up with)."""

    images_per_s: dict[str, float]
    once_seconds: float
    train_images_per_s: float

    def speedup(self, fast: str = "once, then slices", slow: str = "per example") -> float:
        return self.images_per_s[fast] / self.images_per_s[slow]


@one_thread()
def loading_throughput() -> Loading:
    """Time every variant of :func:`loader_variants` over :data:`LOAD_IMAGES` images on one thread, interleaved
    over :data:`LOAD_ROUNDS` rounds (the median of each); and the training rate of :func:`train_images_per_s`."""
    raw, labels = stored_images(limit=LOAD_IMAGES)
    variants = loader_variants(raw, labels)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(LOAD_ROUNDS):  # interleaved; each variant timed by repeated calls (some take a few ms)
        for name, serve in variants.items():
            seconds[name].append(measure_bench.time_fn(serve, min_run_time=LOAD_SECONDS, warmup=1).median)
    start = time.perf_counter()
    loading.normalize_images(raw, data.FMNIST_MEAN, data.FMNIST_STD)
    once = time.perf_counter() - start
    return Loading({k: len(labels) / statistics.median(s) for k, s in seconds.items()}, once, train_images_per_s())


def train_images_per_s() -> float:
    """Images per second of one training step (forward, backward, update) of :func:`augment_model` at
    :data:`LOAD_BATCH`."""
    model = augment_model()
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.randn(LOAD_BATCH, 1, 28, 28), torch.randint(0, 10, (LOAD_BATCH,))

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return LOAD_BATCH / measure_bench.time_fn(step).median


def check_loading(result: Loading) -> float:
    """The claim of ``sec-data-loading``: converting once and slicing serves images several times faster than
    converting each one in ``__getitem__``."""
    return claims.claim("images/s, converted once and sliced / converted per example", result.speedup(), ">",
                        full=5.0, fast=3.0, unit="x")  # fmt: skip


# --- augmentation at a fixed budget (sec-data-augment) ------------------------------------------------

AUGMENT_IMAGES = pick(fast=1500, full=10000)
AUGMENT_EPOCHS = pick(fast=2, full=6)
AUGMENT_LR = 2e-3
POLICIES: dict[str, augment.Augment] = {
    "none": augment.compose(),
    "flip": augment.random_flip,
    "flip+crop": augment.compose(augment.random_flip, functools.partial(augment.random_crop, pad=2)),
    "flip+crop+erase": augment.compose(augment.random_flip, functools.partial(augment.random_crop, pad=2),
                                       augment.random_erasing),  # fmt: skip
}


COMPARED = pick(fast=("none", "flip+crop"), full=tuple(POLICIES))  # the policies trained


def augment_model() -> nn.Module:
    """The small CNN every augmentation run trains (width 8, two blocks)."""
    return models.CNN(width=8, depth=2)


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained image classifier: validation accuracy after each epoch (or at the end), test accuracy, and its
    per-image test correctness (for the pitfalls)."""

    val_accuracy: list[float]
    test_accuracy: float
    test_correct: torch.Tensor


def _finish(model: nn.Module, val_accuracy: list[float]) -> Run:
    correct = train.correct(model, fmnist_batches("test"))
    return Run(val_accuracy, correct.double().mean().item(), correct)


@functools.cache
@one_thread()
def augment_trained(policy: str, seed: int) -> tuple[nn.Module, list[float]]:
    """Train :func:`augment_model` for :data:`AUGMENT_EPOCHS` epochs of :data:`AUGMENT_IMAGES` training images with
    ``policy`` (AdamW, constant learning rate, so the curve at every epoch is a budget of its own); the model and
    its validation accuracy after each epoch."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {tuple(POLICIES)}, got {policy!r}")
    seed_everything(seed)
    model = augment_model()
    batches = data.loader(data.fashion_mnist("train", limit=AUGMENT_IMAGES), BATCH, shuffle=True, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=AUGMENT_LR)
    history = train.fit(model, batches, epochs=AUGMENT_EPOCHS, optimizer=optimizer, val=fmnist_batches("val"),
                        augment=POLICIES[policy], progress=False, device=torch.device("cpu"))  # fmt: skip
    return model.eval(), history.val_accuracy


@functools.cache
def augment_run(policy: str, seed: int) -> Run:
    """:func:`augment_trained`'s validation curve and test accuracy."""
    return _finish(*augment_trained(policy, seed))


def augmentation() -> dict[str, list[Run]]:
    """Every policy of :data:`COMPARED`, each over :data:`SEEDS`."""
    return {policy: [augment_run(policy, s) for s in SEEDS] for policy in COMPARED}


def augment_gain(runs: dict[str, list[Run]], policy: str, epoch: int | None = None) -> stats.Difference:
    """Accuracy of ``policy`` minus no augmentation, in points over seeds: on the test split after the last epoch,
    or on the validation split after ``epoch`` (1-based) when given."""
    pick_acc = (lambda r: r.test_accuracy) if epoch is None else (lambda r: r.val_accuracy[epoch - 1])
    return stats.difference_of_means([100 * pick_acc(r) for r in runs[policy]],
                                     [100 * pick_acc(r) for r in runs["none"]])  # fmt: skip


def best_policy(runs: dict[str, list[Run]]) -> str:
    """The augmentation (not ``none``) with the highest mean final validation accuracy: the choice, made on
    validation; the test split reports it."""
    return max((p for p in runs if p != "none"), key=lambda p: np.mean([r.val_accuracy[-1] for r in runs[p]]))


def check_augmentation(runs: dict[str, list[Run]]) -> stats.Difference:
    """The claims of ``sec-data-augment``: the policy chosen on validation costs at most two points of test accuracy
    against none, and flips with crops, at this short budget, cost accuracy."""
    gain = augment_gain(runs, best_policy(runs))
    claims.claim("test accuracy, validation-chosen augmentation minus none", gain.value, ">", full=-2.0, fast=-10.0,
                 unit="pt")  # fmt: skip
    crops = augment_gain(runs, "flip+crop").value
    claims.claim("test accuracy, flips and crops minus none, at this short budget", crops, "<", full=0.0, fast=3.0,
                 unit="pt")  # fmt: skip
    return gain


# --- scoring and selecting examples (sec-data-select) -------------------------------------------------

SELECT_IMAGES = pick(fast=3000, full=20000)
SCORE_RUNS = pick(fast=2, full=3)  # short runs whose EL2N is averaged and whose forgetting events are summed
SCORE_EPOCHS = pick(fast=1, full=3)
SELECT_STEPS = pick(fast=40, full=500)  # optimizer steps of every subset, whatever its size
SELECT_LR = 1e-3
FRACTIONS = (0.1, 0.3, 0.5, 1.0)
SCORES = ("EL2N", "forgetting", "class-mean distance")
CLASSES = data.FMNIST_CLASSES


def select_model() -> nn.Module:
    """The classifier of the data-selection runs: an MLP with one hidden layer of 256 (fast to train)."""
    return models.MLP((256,))


@functools.cache
def select_pool() -> tuple[torch.Tensor, torch.Tensor]:
    """The training images the selection experiments score and subsample (train split only)."""
    return data.fashion_mnist("train", limit=SELECT_IMAGES).tensors


def _labels_loss(logits: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, target[0])


def _train_steps(model: nn.Module, index_batches: list[torch.Tensor], loss: train.Loss = _labels_loss,
                 epochs: int = 1) -> None:  # fmt: skip
    """Train on the pool images of ``index_batches``; each batch's target is ``(labels, indices)`` for ``loss``."""
    images, labels = select_pool()
    batches = [(images[i], (labels[i], i)) for i in index_batches]
    optimizer = torch.optim.AdamW(model.parameters(), lr=SELECT_LR)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(batches))
    train.fit(model, batches, epochs=epochs, loss=loss, optimizer=optimizer, scheduler=scheduler, progress=False,
              device=torch.device("cpu"))  # fmt: skip


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.eval()(x) for x in images.split(1000)])


def _counting_loss(counter: scores.ForgettingCounter) -> train.Loss:
    """Cross-entropy on ``(labels, indices)`` targets that tells ``counter`` which examples the batch got right."""

    def loss(logits: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        y, index = target
        counter.update(index, logits.argmax(-1) == y)
        return nn.functional.cross_entropy(logits, y)

    return loss


@functools.cache
@one_thread()
def example_scores() -> dict[str, torch.Tensor]:
    """:data:`SCORES` of every pool image: EL2N after :data:`SCORE_EPOCHS` epochs averaged over
    :data:`SCORE_RUNS` runs, forgetting events counted within each run and summed over them (a fresh model's
    first mistakes forget nothing), and the training-free distance of each image to its class's mean image
    (``sec-data-select``)."""
    images, labels = select_pool()
    el2n, forgetting = torch.zeros(len(labels)), torch.zeros(len(labels))
    for run in range(SCORE_RUNS):
        counter = scores.ForgettingCounter(len(labels))
        seed_everything(100 + run)
        model = select_model()
        epoch = selection.step_batches(torch.arange(len(labels)), len(labels) // BATCH, BATCH, seed=100 + run)
        _train_steps(model, epoch, _counting_loss(counter), epochs=SCORE_EPOCHS)
        el2n += scores.el2n(_logits(model, images), labels) / SCORE_RUNS
        forgetting += counter.scores()
    distance = scores.class_mean_distance(images, labels)
    return {"EL2N": el2n, "forgetting": forgetting, "class-mean distance": distance}


def score_correlations(found: dict[str, torch.Tensor]) -> dict[tuple[str, str], float]:
    """Spearman's rank correlation of every pair of scores."""
    names = list(found)
    return {(a, b): scores.spearman(found[a], found[b]) for i, a in enumerate(names) for b in names[i + 1 :]}


def check_scores(found: dict[str, torch.Tensor]) -> dict[tuple[str, str], float]:
    """The claim of ``sec-data-select``: the two scores learned from training runs rank the images alike; returns
    every pair's correlation."""
    rho = score_correlations(found)
    claims.claim("Spearman correlation of EL2N and forgetting events", rho["EL2N", "forgetting"], ">", full=0.3,
                 fast=0.2)  # fmt: skip
    return rho


def class_shares(found: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Share of each class among the ``fraction`` highest-scored pool images, chosen without balancing."""
    kept = selection.select(found, fraction, "hard")
    return torch.bincount(select_pool()[1][kept], minlength=10).double() / len(kept)


@cache_runs
@one_thread()
def subset_run(fraction: float, keep: str, seed: int, score: str = "EL2N") -> Run:
    """Train :func:`select_model` for :data:`SELECT_STEPS` steps on the class-balanced ``fraction`` of the pool
    that ``keep`` selects by ``score`` (random subsets draw with ``seed``); validation accuracy at the end."""
    _, labels = select_pool()
    kept = selection.select(example_scores()[score], fraction, keep, labels=labels, seed=seed)
    seed_everything(seed)
    model = select_model()
    _train_steps(model, selection.step_batches(kept, SELECT_STEPS, BATCH, seed=seed))
    return _finish(model.eval(), [train.accuracy(model, fmnist_batches("val"))])


@dataclasses.dataclass(frozen=True)
class Curve:
    """Runs per ``(fraction, keep)``; the full pool appears once, as ``(1.0, "random")``."""

    runs: dict[tuple[float, str], list[Run]]

    def test_correct(self) -> torch.Tensor:
        """Per-image test correctness of every trained model, ``(models, test images)``."""
        return torch.stack([run.test_correct for seeds in self.runs.values() for run in seeds])

    def mean(self, fraction: float, keep: str, split: str = "test") -> float:
        runs = self.runs[fraction, keep]
        return float(np.mean([r.test_accuracy if split == "test" else r.val_accuracy[-1] for r in runs]))

    def chosen(self, fraction: float) -> str:
        """``hard`` or ``easy``, whichever has the higher mean validation accuracy at ``fraction``."""
        return max(("hard", "easy"), key=lambda keep: self.mean(fraction, keep, "val"))

    def gain(self, fraction: float, keep: str | None = None) -> stats.Difference:
        """Test accuracy (points) of the ``keep`` subset (default: the validation-chosen one) minus random."""
        keep = keep or self.chosen(fraction)
        return stats.difference_of_means([100 * r.test_accuracy for r in self.runs[fraction, keep]],
                                         [100 * r.test_accuracy for r in self.runs[fraction, "random"]])  # fmt: skip

    def pays_from(self) -> float | None:
        """The smallest fraction below 1 where the chosen selection beats random measurably, if any."""
        return next((f for f in FRACTIONS[:-1] if self.gain(f).verdict() == "higher"), None)


def data_fraction_curve() -> Curve:
    """The data-fraction curve of ``sec-data-select``: every fraction of :data:`FRACTIONS` kept hardest-first,
    easiest-first and at random by EL2N, each over :data:`SEEDS`, at the same number of optimizer steps."""
    runs = {(f, keep): [subset_run(f, keep, s) for s in SEEDS] for f in FRACTIONS[:-1] for keep in selection.KEEP}
    return Curve(runs | {(1.0, "random"): [subset_run(1.0, "random", s) for s in SEEDS]})


def score_comparison(fraction: float = 0.5) -> dict[str, list[Run]]:
    """Hardest ``fraction`` by each of :data:`SCORES` (and random), over :data:`SEEDS`."""
    runs = {score: [subset_run(fraction, "hard", s, score) for s in SEEDS] for score in SCORES}
    return runs | {"random": [subset_run(fraction, "random", s) for s in SEEDS]}


def check_selection(curve: Curve) -> stats.Difference:
    """The target of ``sec-data-select`` (a selected half beats a random half by more than two standard errors) and
    the claims of what this budget shows instead: the validation-chosen half does worse than a random half, and
    keeping only the hardest tenth loses to random (Sorscher et al.'s small-data regime)."""
    half = curve.gain(0.5)
    claims.target("selected minus random half of the data, in standard errors of the difference",
                  half.value / max(half.se, 1e-9), ">", 2.0, section="sec-data-select")  # fmt: skip
    claims.claim("test accuracy, selected minus random half", half.value, "<", full=0.0, fast=0.0, unit="pt")
    claims.claim("test accuracy, hardest minus random tenth", curve.gain(0.1, "hard").value, "<", full=0.0, fast=0.0,
                 unit="pt")  # fmt: skip
    return half


# --- duplicated text (sec-data-dedup) -----------------------------------------------------------------

MIN_CHARS = 64  # passages shorter than this (stage directions, "Exit.") repeat naturally and are kept
SHINGLE = 5
NUM_PERM = 64
BANDS = 16
THRESHOLD = 0.7  # estimated Jaccard similarity above which two passages count as near-duplicates
TEXT_CHARS = pick(fast=600_000, full=None)  # how much of the train split is deduplicated and trained on
DUP_SHARE = 0.3  # the share of the scraped corpus's characters that are planted copies
POPULAR = 0.01  # the share of passages that get copied
POPULAR_CHARS = 200  # ... chosen among passages at least this long (boilerplate, a quoted speech)
GPT_SHAPE = {"context": 64, "n_layer": 2, "n_embd": 64}
GPT_STEPS = pick(fast=60, full=600)
GPT_LR = 2e-3
EVAL_WINDOWS = pick(fast=64, full=512)  # windows of the val (and test) split the GPTs are measured on
LEAK_COPIES = 1  # copies of each evaluated val passage put into the training text
LEAK_CHARS = 20_000  # how much val (and test) text the leak is measured on
NGRAM_ORDER = 5


def passages(text: str) -> list[str]:
    """A text cut at blank lines (a speech, a stage direction, a stanza)."""
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def split_text(split: str, chars: int | None = None) -> str:
    """The characters of a Shakespeare split (the first ``chars`` of it, if given)."""
    return data.shakespeare().text(split)[:chars]


@dataclasses.dataclass(frozen=True)
class Duplicates:
    """What exact and near-duplicate detection find among ``passages`` (indices dropped, keeping first copies)."""

    passages: list[str]
    exact: list[int]
    near: list[int]

    @property
    def dropped(self) -> list[int]:
        return sorted(set(self.exact) | set(self.near))

    def kept_text(self) -> str:
        drop = set(self.dropped)
        return "\n\n".join(p for i, p in enumerate(self.passages) if i not in drop)

    def dropped_chars(self) -> int:
        return sum(len(self.passages[i]) for i in self.dropped)


def find_duplicates(texts: list[str]) -> Duplicates:
    """Exact duplicates, then MinHash near-duplicates at :data:`THRESHOLD` among the rest, of the passages of at
    least :data:`MIN_CHARS` characters (``sec-data-dedup``)."""
    long = [i for i, p in enumerate(texts) if len(p) >= MIN_CHARS]
    exact = [long[i] for i in dedup.exact_duplicates([texts[i] for i in long])]
    rest = sorted(set(long) - set(exact))
    signatures = dedup.minhash([texts[i] for i in rest], SHINGLE, NUM_PERM)
    near = sorted({rest[j] for _, j, _ in dedup.near_duplicates(signatures, THRESHOLD, BANDS)})
    return Duplicates(texts, exact, near)


def near_copy(passage: str, rng: random.Random) -> str:
    """A near-duplicate of ``passage``: one word dropped and one word upper-cased (what a scrape of another edition
    or a quoting page looks like; :func:`effdl.curate.dedup.normalize` does not make it exact)."""
    words = passage.split(" ")
    del words[rng.randrange(len(words))]
    i = rng.randrange(len(words))
    words[i] = words[i].upper()
    return " ".join(words)


@dataclasses.dataclass(frozen=True)
class Scraped:
    """A training text with planted copies: its passages and, for each, the index of the popular passage it copies
    or is (``None`` for every other passage), and whether it is a near copy."""

    passages: list[str]
    source: list[int | None]
    near: list[bool]

    def text(self) -> str:
        return "\n\n".join(self.passages)

    def groups(self) -> dict[int, list[int]]:
        """Positions of each popular passage and of its copies."""
        found: dict[int, list[int]] = {}
        for position, source in enumerate(self.source):
            if source is not None:
                found.setdefault(source, []).append(position)
        return found


def scraped(text: str, share: float = DUP_SHARE, seed: int = 0) -> Scraped:
    """``text`` with :data:`POPULAR` of its passages (among those of :data:`POPULAR_CHARS` or more) copied, half
    verbatim and half as :func:`near_copy`, at random places, until the copies hold ``share`` of the characters:
    the duplication of a web scrape, built on purpose because the corpus holds almost none (``sec-data-dedup``)."""
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    rng = random.Random(seed)
    originals = passages(text)
    long = [i for i, p in enumerate(originals) if len(p) >= POPULAR_CHARS]
    popular = rng.sample(long, max(1, int(POPULAR * len(originals))))
    items = [(float(i), p, i if i in set(popular) else None, False) for i, p in enumerate(originals)]
    budget, chars = share / (1 - share) * sum(map(len, originals)), 0
    while chars < budget:
        source, near = rng.choice(popular), rng.random() < 0.5
        copy = near_copy(originals[source], rng) if near else originals[source]
        items.append((rng.uniform(-1, len(originals)), copy, source, near))
        chars += len(copy)
    items.sort(key=lambda item: item[0])
    return Scraped([p for _, p, _, _ in items], [s for _, _, s, _ in items], [n for *_, n in items])


@dataclasses.dataclass(frozen=True)
class Detection:
    """How deduplication did on a :class:`Scraped` text: copies planted and removed (by the exact and the near
    pass), popular passages lost altogether, and other passages dropped (the corpus's own near-duplicates, or
    false positives)."""

    planted: int
    removed_exact: int
    removed_near: int
    lost: int
    others_dropped: int

    @property
    def recall(self) -> float:
        return (self.removed_exact + self.removed_near) / self.planted


def detection(corpus: Scraped, found: Duplicates) -> Detection:
    """Compare what :func:`find_duplicates` dropped with what :func:`scraped` planted. Within a popular passage's
    group (itself and its copies) it does not matter which one stays: every drop but the last counts as a removed
    copy."""
    exact, near = set(found.exact), set(found.near)
    planted = removed_exact = removed_near = lost = 0
    grouped: set[int] = set()
    for members in corpus.groups().values():
        grouped |= set(members)
        planted += len(members) - 1
        by_exact, by_near = len(exact.intersection(members)), len(near.intersection(members))
        lost += by_exact + by_near == len(members)
        removed_exact += min(by_exact, len(members) - 1)
        removed_near += min(by_near, len(members) - 1 - min(by_exact, len(members) - 1))
    return Detection(planted, removed_exact, removed_near, lost, len((exact | near) - grouped))


@functools.cache
def natural_duplicates() -> Duplicates:
    """Duplicates among the passages of the real training text (:data:`TEXT_CHARS` of the train split)."""
    return find_duplicates(passages(split_text("train", TEXT_CHARS)))


@functools.cache
def scraped_corpus() -> tuple[Scraped, Duplicates]:
    """The training text with planted copies (:func:`scraped`) and what deduplication finds in it."""
    corpus = scraped(split_text("train", TEXT_CHARS))
    return corpus, find_duplicates(corpus.passages)


def train_gpt(model: nn.Module, stream: torch.Tensor, seed: int) -> None:
    """:data:`GPT_STEPS` steps of 32 random windows of ``stream``: AdamW with the zoo's settings for the GPT, a
    one-cycle schedule (warm-up, then cosine decay), gradients clipped."""
    batches = data.LMBatches(stream, 32, model.cfg.context, steps=GPT_STEPS, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=GPT_LR, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, GPT_LR, total_steps=GPT_STEPS, pct_start=0.05)
    train.fit(model, batches, optimizer=optimizer, scheduler=schedule, grad_clip=1.0, progress=False,
              device=torch.device("cpu"))  # fmt: skip


def encode(text: str) -> torch.Tensor:
    return data.shakespeare().tokenizer.encode(text)


def eval_windows(split: str) -> list[lm.Batch]:
    """:data:`EVAL_WINDOWS` consecutive windows of ``split`` from its start, in batches of 32."""
    return lm.token_windows(data.shakespeare().split(split), GPT_SHAPE["context"], EVAL_WINDOWS, batch_size=32)


@functools.cache
@one_thread()
def gpt_run(stream: str, seed: int) -> dict[str, float]:
    """Train the GPT on the named token ``stream`` (:func:`streams`) and measure its loss (nats per character) on
    :func:`eval_windows` of val and test."""
    seed_everything(seed)
    model = models.GPT(models.GPTConfig(vocab_size=data.shakespeare().tokenizer.vocab_size, **GPT_SHAPE))
    train_gpt(model, streams()[stream], seed)
    model.eval()
    return {split: train.evaluate(model, eval_windows(split))["loss"] for split in ("val", "test")}


def leaked_text() -> str:
    """The clean training text with :data:`LEAK_COPIES` copies of the evaluated val text (:data:`LEAK_CHARS`
    characters, cut into passages of four GPT contexts) inserted at random places: a leak built on purpose
    (``sec-data-pitfalls``)."""
    rng = random.Random(0)
    piece = 4 * GPT_SHAPE["context"]
    leaked = split_text("val", LEAK_CHARS)
    clean = passages(split_text("train", TEXT_CHARS))
    for start in list(range(0, len(leaked), piece)) * LEAK_COPIES:
        clean.insert(rng.randrange(len(clean) + 1), leaked[start : start + piece])
    return "\n\n".join(clean)


def ngram_loss(train_ids: torch.Tensor, eval_ids: torch.Tensor, order: int = NGRAM_ORDER, k: float = 0.01) -> float:
    """Nats per character of a character ``order``-gram model counted on ``train_ids`` (add-``k`` smoothing), on
    ``eval_ids``: a model that learns by counting, so it memorizes whatever it has seen, in one pass."""
    if order < 1 or k <= 0:
        raise ValueError(f"order must be >= 1 and k positive, got {order}, {k}")
    vocab = data.shakespeare().tokenizer.vocab_size

    def codes(ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = ids.numpy().astype(np.int64)
        context = np.zeros(len(x) - order + 1, dtype=np.int64)
        for j in range(order - 1):
            context = context * vocab + x[j : j + len(context)]
        return context, context * vocab + x[order - 1 :]

    train_context, train_full = codes(train_ids)
    context_keys, context_counts = np.unique(train_context, return_counts=True)
    full_keys, full_counts = np.unique(train_full, return_counts=True)

    def lookup(keys: np.ndarray, counts: np.ndarray, queries: np.ndarray) -> np.ndarray:
        at = np.searchsorted(keys, queries).clip(max=len(keys) - 1)
        return np.where(keys[at] == queries, counts[at], 0)

    eval_context, eval_full = codes(eval_ids)
    seen = lookup(full_keys, full_counts, eval_full)
    p = (seen + k) / (lookup(context_keys, context_counts, eval_context) + k * vocab)
    return float(-np.log(p).mean())


def leak_effect() -> dict[str, dict[str, float]]:
    """Loss (nats per character) of the counting model on the evaluated val text and on as much test text, trained
    on the clean training text and on :func:`leaked_text`."""
    evaluated = {split: encode(split_text(split, LEAK_CHARS)) for split in ("val", "test")}
    trained = {"clean": encode("\n\n".join(passages(split_text("train", TEXT_CHARS)))), "leaked": encode(leaked_text())}
    return {name: {split: ngram_loss(ids, evaluated[split]) for split in evaluated} for name, ids in trained.items()}


@functools.cache
def streams() -> dict[str, torch.Tensor]:
    """The token streams the GPTs train on: the scraped text as it is, and deduplicated."""
    corpus, found = scraped_corpus()
    return {"scraped": encode(corpus.text()), "deduplicated": encode(found.kept_text())}


def dedup_effect() -> dict[str, list[dict[str, float]]]:
    """Val and test loss of GPTs trained on the scraped and the deduplicated text, over :data:`SEEDS`."""
    return {name: [gpt_run(name, s) for s in SEEDS] for name in ("scraped", "deduplicated")}


def dedup_gain(runs: dict[str, list[dict[str, float]]], split: str = "val") -> stats.Difference:
    """Loss of the scraped-text GPTs minus the deduplicated ones (positive: deduplication helps)."""
    return stats.difference_of_means([r[split] for r in runs["scraped"]], [r[split] for r in runs["deduplicated"]])


def check_dedup(found: Detection, runs: dict[str, list[dict[str, float]]]) -> stats.Difference:
    """The claims of ``sec-data-dedup``: deduplication finds nearly every planted copy, and training on the
    deduplicated text is not worse on val than on the scraped text."""
    claims.claim("share of the planted copies deduplication finds", found.recall, ">=", full=0.95, fast=0.95)
    gain = dedup_gain(runs)
    claims.claim("val loss, scraped minus deduplicated text", gain.value, ">", full=-0.02, fast=-0.1, unit="nats")
    return gain


# --- pitfalls (sec-data-pitfalls) ---------------------------------------------------------------------


def test_selection_optimism(correct: torch.Tensor, splits: int = 200, seed: int = 0) -> tuple[float, float]:
    """The cost of choosing with the test set: ``correct`` holds ``(models, images)`` test correctness. For random
    halves A/B of the test images, the model best on A is reported with its accuracy on A; its accuracy on the
    untouched half B is what it really does. Returns the mean of both over ``splits`` halvings (fractions)."""
    if correct.ndim != 2 or len(correct) < 2:
        raise ValueError(f"correct must be (models >= 2, images), got {tuple(correct.shape)}")
    generator = torch.Generator().manual_seed(seed)
    reported, fresh = [], []
    for _ in range(splits):
        order = torch.randperm(correct.shape[1], generator=generator)
        a, b = order[: len(order) // 2], order[len(order) // 2 :]
        on_a = correct[:, a].double().mean(1)
        best = int(on_a.argmax())
        reported.append(float(on_a[best]))
        fresh.append(float(correct[best, b].double().mean()))
    return float(np.mean(reported)), float(np.mean(fresh))


def check_test_selection(reported: float, fresh: float) -> float:
    """The claim of ``sec-data-pitfalls``: the test-chosen model's reported accuracy is optimistic."""
    return claims.claim("test accuracy of the test-chosen model, reported minus fresh half", 100 * (reported - fresh),
                        ">", full=0.0, fast=0.0, unit="pt")  # fmt: skip


EVAL_AUGMENT = POLICIES["flip+crop+erase"]


@one_thread()
def augmented_test_accuracy(policy: str = "none", seed: int = 0, draws: int = 3) -> float:
    """Test accuracy of the ``policy`` model of ``seed`` when the *test* images are augmented with
    :data:`EVAL_AUGMENT` (mean of ``draws`` random draws): a common mistake."""
    seed_everything(seed)
    model = augment_trained(policy, seed)[0]
    return float(np.mean([train.accuracy(model, [(EVAL_AUGMENT(x), y) for x, y in fmnist_batches("test")])
                          for _ in range(draws)]))  # fmt: skip


def check_eval_augment(clean: float, augmented: float) -> float:
    """The claim of ``sec-data-pitfalls``: augmenting the test images lowers the measured accuracy; returns the
    drop in points."""
    return claims.claim("test accuracy, clean minus augmented test images", 100 * (clean - augmented), ">",
                        full=1.0, fast=1.0, unit="pt")  # fmt: skip


def check_leak(losses: dict[str, dict[str, float]]) -> float:
    """The claim of ``sec-data-pitfalls``: val passages leaked into training lower the measured val loss (by the
    returned nats per character), far more than they change the loss on test text."""
    drop = losses["clean"]["val"] - losses["leaked"]["val"]
    test_change = abs(losses["clean"]["test"] - losses["leaked"]["test"])
    claims.claim("val loss, clean minus leaked training text", drop, ">", full=0.15, fast=0.3, unit="nats")
    claims.claim("val loss drop from the leak over the test loss change", drop / max(test_change, 1e-6), ">",
                 full=10.0, fast=10.0)  # fmt: skip
    return drop


# --- self-checks for the exercises -------------------------------------------------------------------


def self_check_el2n(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """Exercise 1: does ``fn(logits, labels)`` compute the EL2N score of every example, as the library does?"""
    generator = torch.Generator().manual_seed(7)
    logits, labels = 3 * torch.randn(64, 10, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    right, got = scores.el2n(logits, labels), torch.as_tensor(fn(logits, labels)).float()
    if got.shape != right.shape:
        return claims.self_check([f"shape {tuple(got.shape)} is not one score per example {tuple(right.shape)}"], "")
    gap = float((got - right).abs().max())
    problems = [] if gap <= 1e-5 else [f"off by up to {gap:.3g} from || softmax(logits) - one_hot(labels) ||_2"]
    return claims.self_check(problems, "EL2N matches for 64 random examples")


def self_check_threshold(threshold: float, corpus: Scraped | None = None) -> bool:
    """Exercise 2: at ``threshold``, does MinHash alone (no exact pass) remove every copy planted in a small scraped
    text, dropping no other passage?"""
    corpus = corpus or scraped(split_text("train", 60_000), share=0.2, seed=3)
    long = [i for i, p in enumerate(corpus.passages) if len(p) >= MIN_CHARS]
    signatures = dedup.minhash([corpus.passages[i] for i in long], SHINGLE, NUM_PERM)
    near = [long[j] for _, j, _ in dedup.near_duplicates(signatures, threshold, BANDS)]
    result = detection(corpus, Duplicates(corpus.passages, [], sorted(set(near))))
    problems = [f"{result.planted - result.removed_near} of {result.planted} planted copies missed"] if (
        result.recall < 1) else []  # fmt: skip
    problems += [f"{result.others_dropped} other passages dropped"] if result.others_dropped else []
    return claims.self_check(problems, f"all {result.planted} copies found, no other passage dropped")


def self_check_pays_from(answer: float | None, curve: Curve) -> bool:
    """Exercise 3: is ``answer`` the smallest fraction where the validation-chosen selection beats random
    measurably (its :class:`~effdl.stats.Difference` verdict is "higher") in ``curve`` (``None`` if at none)?"""
    right = curve.pays_from()
    problems = [] if answer == right else [f"{answer} is not it: read curve.gain(f).verdict() at each fraction"]
    return claims.self_check(problems, f"selection pays from {right}")


def bench() -> None:
    """The chapter's rows: loader speed-up, augmentation, the scores' agreement, the data-fraction curve and its
    target, deduplication, and the pitfalls (choosing on the test set, augmenting it, the leak)."""
    check_loading(loading_throughput())
    check_augmentation(augmentation())
    check_scores(example_scores())
    curve = data_fraction_curve()
    check_selection(curve)
    corpus, found = scraped_corpus()
    check_dedup(detection(corpus, found), dedup_effect())
    check_test_selection(*test_selection_optimism(curve.test_correct()))
    check_eval_augment(augment_run("none", 0).test_accuracy, augmented_test_accuracy("none", 0))
    check_leak(leak_effect())
