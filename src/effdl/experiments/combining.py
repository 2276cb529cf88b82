"""The experiments of ``chap-combine`` (``notebooks/09_combining.ipynb``): Deep Compression from scratch on
LeNet-300-100 and ``cnn-fmnist`` (prune, share weights, Huffman-code, one file per stage), what the order
of pruning and quantization does, ensembles of int8 models against one larger int8 model, a distilled student
pruned and quantized, and the book's Pareto chart: every compression chapter's best model measured in one run.

Pruning is the iterative magnitude pruning with fine-tuning of ``sec-prune-unstructured-iterative``
(:func:`effdl.prune.recipes.prune_finetune`); the sparsity is chosen on the validation split, every reported
accuracy is on the test split, and the last stage's accuracy is measured on the model read back from its file.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import tempfile
from collections import Counter
from pathlib import Path

import torch
from dahuffman import HuffmanCodec
from safetensors.torch import save_model
from torch import nn

from effdl import claims, stats, train, zoo
from effdl.bench import pareto_front, size_bytes
from effdl.compress import Ensemble, coding, disagreement, packfile, sharing
from effdl.config import cache_dir, pick
from effdl.experiments import architecture, distillation, prune_structured, quant_cnn
from effdl.experiments._shared import (
    fmnist_accuracy,
    on_cpu,
    speed_comparison,  # noqa: F401 (the chapter's notebook calls it)
)
from effdl.prune import recipes
from effdl.prune.masks import magnitude_scores, prunable, sparsity
from effdl.quant.core import fake_quantize

NOTEBOOK = "09_combining"
LENET = "lenet-fmnist"
SCHEDULE = (0.5, 0.75, 0.9, 0.92, 0.95, 0.97)  # iterative pruning, a fine-tune after each step
ALLOWED_VAL_DROP = 0.75  # pt of validation accuracy the pruned model may lose (room is left for sharing)
BITS = 4  # codebook of 16 values per layer
FINETUNE = {  # per pruning step; the CNN's epochs cost about 20 times LeNet's, the small student's far less
    LENET: pick(fast={"epochs": 1, "train_limit": 4000}, full={"epochs": 4, "train_limit": None}),
    "cnn-fmnist": pick(fast={"epochs": 1, "train_limit": 2000}, full={"epochs": 1, "train_limit": None}),
    "student": pick(fast={"epochs": 1, "train_limit": 2000}, full={"epochs": 1, "train_limit": None}),
}
CNN_SCHEDULE = (0.5, 0.75, 0.9, 0.95)
STAGES = ("fp32", "pruned", "shared", "huffman")


def _finetune(name: str, lr: float = 0.01):
    cfg = FINETUNE[name]
    return functools.partial(train.finetune, epochs=cfg["epochs"], lr=lr, train_limit=cfg["train_limit"])


# --- pruning, chosen on validation (sec-combine-deep) ----------------------------------------------------


@functools.cache
def prune_path(name: str) -> dict[float, nn.Module]:
    """The baseline pruned step by step along the schedule, fine-tuned after each step: a CPU copy per sparsity."""
    model = copy.deepcopy(zoo.pretrained(name).model)
    snapshots = {}
    for target in SCHEDULE if name == LENET else CNN_SCHEDULE:
        recipes.prune_finetune(model, [target], _finetune(name))
        snapshots[target] = copy.deepcopy(model).cpu().eval()
    return snapshots


def baseline_val_accuracy(name: str) -> float:
    """Validation accuracy (%) of baseline ``name``, the reference of :func:`choose_sparsity`."""
    return 100 * fmnist_accuracy(zoo.pretrained(name).model, "val")


def choose_sparsity(name: str) -> tuple[float, dict[float, float]]:
    """The highest sparsity whose validation accuracy is within :data:`ALLOWED_VAL_DROP` of the baseline's,
    and the validation accuracy (%) of every step."""
    base = baseline_val_accuracy(name)
    val = {s: 100 * fmnist_accuracy(m, "val") for s, m in prune_path(name).items()}
    allowed = [s for s, acc in val.items() if base - acc <= ALLOWED_VAL_DROP]
    return (max(allowed) if allowed else min(val)), val


# --- sharing and the files (sec-combine-sharing, sec-combine-huffman) -----------------------------------


def shared_model(pruned: nn.Module, name: str, bits: int = BITS) -> nn.Module:
    """``pruned`` with its weights shared (``bits`` per index) and the centroids fine-tuned for one pass."""
    model = sharing.share_weights_(copy.deepcopy(pruned), bits)
    train.finetune(model, epochs=1, lr=0.001, train_limit=FINETUNE[name]["train_limit"])
    return sharing.bake_(model.cpu()).eval()


def stage_file(name: str, stage: str, model: nn.Module) -> tuple[int, dict[str, int]]:
    """Write ``model`` as ``stage`` (dense fp32 safetensors, or the packed file with or without weight sharing
    and Huffman codes) to the chapter's cache; its bytes on disk and the packed file's bytes by part."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    path = cache_dir("combining") / f"{name}-{stage}.{'safetensors' if stage == 'fp32' else 'bin'}"
    if stage == "fp32":
        save_model(model, str(path))
        return size_bytes(path), {}
    parts = packfile.save(model.state_dict(), path, share=stage != "pruned", huffman=stage == "huffman",
                          meta={"name": name, "arch": zoo.recipe(name).arch})  # fmt: skip
    return size_bytes(path), parts


def dead_inputs(layer: nn.Linear) -> float:
    """Fraction of a linear layer's inputs whose every weight is zero (pixels the pruned layer ignores)."""
    return (layer.weight == 0).all(dim=0).float().mean().item()


def load_stage(name: str, stage: str) -> nn.Module:
    """The model rebuilt from its packed ``stage`` file alone: the architecture from its header."""
    state, meta = packfile.load(cache_dir("combining") / f"{name}-{stage}.bin")
    model = zoo.build(meta["arch"])
    model.load_state_dict(state)
    return model.eval()


@dataclasses.dataclass
class DeepCompression:
    """One model through the three stages: test accuracy (%), bytes on disk and bytes by part, per stage."""

    name: str
    sparsity: float
    val_by_sparsity: dict[float, float]
    accuracy: dict[str, float]
    bytes: dict[str, int]
    parts: dict[str, dict[str, int]]
    untuned_accuracy: float  # shared, before the centroids are fine-tuned
    reloaded_accuracy: float
    layers: dict[str, dict[str, float]]
    pruned: nn.Module = dataclasses.field(repr=False)  # the pruned stage, in memory
    model: nn.Module = dataclasses.field(repr=False)  # the last stage, in memory

    def ratio(self, stage: str = "huffman") -> float:
        return self.bytes["fp32"] / self.bytes[stage]

    def drop(self, stage: str = "huffman") -> float:
        return self.accuracy["fp32"] - self.accuracy[stage]


def dahuffman_bits(symbols: list[int]) -> int:
    """Bits of ``symbols`` under the Huffman code the ``dahuffman`` library builds (it adds one end-of-file
    symbol, which it codes once)."""
    counts = Counter(symbols)
    table = HuffmanCodec.from_frequencies(counts).get_code_table()
    end_of_file = next(length for symbol, (length, _) in table.items() if symbol not in counts)
    return sum(count * table[symbol][0] for symbol, count in counts.items()) + end_of_file


def index_coding(model: nn.Module) -> dict[str, dict[str, float]]:
    """For each layer's codebook indices: how many, and their bits at a fixed width, at the entropy bound,
    with this book's Huffman code and with ``dahuffman``'s (one end-of-file symbol more)."""
    rows = {}
    for name, layer in prunable(model).items():
        weight = layer.weight.detach().flatten()
        values = weight[weight != 0]
        _, index = torch.unique(values, return_inverse=True)
        symbols = index.tolist()
        lengths = coding.huffman_lengths(symbols)
        rows[name] = {"symbols": len(symbols), "fixed": len(symbols) * coding.width_for(int(index.max())),
                      "entropy": coding.entropy_bits(symbols), "huffman": coding.coded_bits(symbols, lengths),
                      "dahuffman": dahuffman_bits(symbols)}  # fmt: skip
    return rows


@functools.cache
def deep_compression(name: str) -> DeepCompression:
    """Deep Compression of baseline ``name`` (``lenet-fmnist`` or ``cnn-fmnist``), stage by stage."""
    base = zoo.pretrained(name).model.cpu()
    chosen, val = choose_sparsity(name)
    pruned = prune_path(name)[chosen]
    shared = shared_model(pruned, name)
    models = {"fp32": base, "pruned": pruned, "shared": shared, "huffman": shared}
    files = {stage: stage_file(name, stage, m) for stage, m in models.items()}
    return DeepCompression(
        name=name, sparsity=sparsity(pruned), val_by_sparsity=val,
        accuracy={stage: 100 * fmnist_accuracy(m) for stage, m in models.items()},
        bytes={stage: f[0] for stage, f in files.items()}, parts={stage: f[1] for stage, f in files.items()},
        untuned_accuracy=100 * fmnist_accuracy(sharing.bake_(sharing.share_weights_(copy.deepcopy(pruned), BITS))),
        reloaded_accuracy=100 * fmnist_accuracy(load_stage(name, "huffman")), layers=index_coding(shared),
        pruned=pruned, model=shared,
    )  # fmt: skip


def check_deep_compression(lenet: DeepCompression) -> None:
    claims.target("LeNet-300-100 fp32 file / Deep Compression file", lenet.ratio(), ">=", 40, unit="x",
                  section="sec-combine-deep")  # fmt: skip
    claims.target("LeNet-300-100 test accuracy drop after Deep Compression", lenet.drop(), "<=", 1.0, unit="pt",
                  section="sec-combine-deep")  # fmt: skip
    claims.claim("LeNet-300-100 fp32 file / Deep Compression file", lenet.ratio(), ">=", full=40, fast=10, unit="x")
    claims.claim("LeNet-300-100 test accuracy drop after Deep Compression", lenet.drop(), "<=", full=1.0, fast=3.0,
                 unit="pt")  # fmt: skip
    claims.claim("test accuracy, model read back from its file minus in memory",
                 lenet.reloaded_accuracy - lenet.accuracy["huffman"], "==", full=0, fast=0, unit="pt")  # fmt: skip


def check_coding(layers: dict[str, dict[str, float]]) -> None:
    """Huffman lies between the entropy bound and one bit per symbol above it, matches ``dahuffman``, and saves
    bits against the fixed width."""
    symbols = sum(r["symbols"] for r in layers.values())
    huffman, entropy = sum(r["huffman"] for r in layers.values()), sum(r["entropy"] for r in layers.values())
    claims.claim("Huffman bits above the entropy bound, per index", (huffman - entropy) / symbols, "<", full=1, fast=1)
    claims.claim("Huffman / fixed-width index bits", huffman / sum(r["fixed"] for r in layers.values()), "<",
                 full=1, fast=1)  # fmt: skip


# --- order and interaction (sec-combine-order) ----------------------------------------------------------


def prune_then_share(model: nn.Module, target: float, bits: int) -> nn.Module:
    """Magnitude-prune to ``target``, then share the surviving weights: no fine-tuning."""
    pruned = recipes.prune_oneshot(model, magnitude_scores(model), target)
    return sharing.bake_(sharing.share_weights_(pruned, bits))


def share_then_prune(model: nn.Module, target: float, bits: int) -> nn.Module:
    """Share all the weights first (k-means over every weight), then magnitude-prune to ``target``: no fine-tuning."""
    shared = sharing.bake_(sharing.share_weights_(copy.deepcopy(model), bits))
    return recipes.prune_oneshot(shared, magnitude_scores(shared), target)


ORDER_BITS = (1, 2, 3, 4)
ORDER_SPARSITY = 0.9


@functools.cache
def order(name: str = LENET, target: float = ORDER_SPARSITY, bits: tuple[int, ...] = ORDER_BITS) -> dict[str, dict]:
    """Test accuracy (%) of the dense baseline pruned to ``target`` then shared, and shared then pruned, at each
    bit width, with no fine-tuning; and of pruning alone and sharing alone, to see whether their losses add."""
    base = zoo.pretrained(name).model.cpu()
    alone = recipes.prune_oneshot(base, magnitude_scores(base), target)
    return {
        "base": 100 * fmnist_accuracy(base),
        "pruned": 100 * fmnist_accuracy(alone),
        "shared": {b: 100 * fmnist_accuracy(sharing.bake_(sharing.share_weights_(copy.deepcopy(base), b)))
                   for b in bits},
        "prune, then share": {b: 100 * fmnist_accuracy(prune_then_share(base, target, b)) for b in bits},
        "share, then prune": {b: 100 * fmnist_accuracy(share_then_prune(base, target, b)) for b in bits},
    }  # fmt: skip


def check_order(result: dict[str, dict], bits: int = 2) -> float:
    """Pruning first keeps the codebook for the weights that survive; sharing first spends it on weights that
    are then removed. Returns the accuracy gap at ``bits``."""
    gap = result["prune, then share"][bits] - result["share, then prune"][bits]
    return claims.claim(f"test accuracy at {bits} bits, prune then share minus share then prune", gap, ">=",
                        full=5, fast=5, unit="pt")  # fmt: skip


# --- ensembles of compressed models (sec-combine-ensemble) ---------------------------------------------

MEMBER = "CNN w8"  # a student of chap-distill: one conv block of 8 channels and a linear head
ENSEMBLE_SEEDS = (0, 1, 2)  # one member per seed
SINGLE_WIDTHS = (12, 16, 24, 32, 48, 64, 96, 128)  # the one larger model's candidates
ENSEMBLE_BATCH = 256  # equal latency where arithmetic dominates; at batch 1 one call's fixed cost does
LATENCY_BATCH = 1  # the Pareto chart's: one request at a time, as a server sees it


@dataclasses.dataclass(frozen=True)
class Compressed:
    """A model as the comparisons use it: what runs on the CPU, its bytes on disk, its class for each test
    image."""

    model: nn.Module = dataclasses.field(repr=False)
    bytes: int
    predictions: torch.Tensor = dataclasses.field(repr=False)

    @property
    def correct(self) -> torch.Tensor:
        return self.predictions == quant_cnn.labels()

    @property
    def accuracy(self) -> float:
        """Test accuracy (%)."""
        return 100 * self.correct.float().mean().item()


def int8(model: nn.Module) -> Compressed:
    """``model`` as a real int8 CPU model (``sec-quant-cnn-engine``): the engine runs and is scored; the bytes are
    those of its int8 safetensors file."""
    result = quant_cnn.int8_engine(on_cpu(model), quant_cnn.calibration())
    return Compressed(result.engine, quant_cnn.file_bytes(model, result.simulated)[1], result.engine_predictions)


def fp32(model: nn.Module) -> Compressed:
    """``model`` on the CPU in float32; its bytes are those of its safetensors file."""
    model = on_cpu(model).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fp32.safetensors"
        save_model(model, str(path))
        return Compressed(model, size_bytes(path), quant_cnn.predictions(model))


def closest(target: float, candidates: dict[int, float]) -> int:
    """The key whose value is nearest ``target`` as a ratio (the smallest ``|log(value / target)|``)."""
    if not target > 0 or not candidates or min(candidates.values()) <= 0:
        raise ValueError(f"target and candidates must be positive and candidates not empty, got {target}, "
                         f"{candidates}")  # fmt: skip
    return min(candidates, key=lambda key: abs(math.log(candidates[key] / target)))


@dataclasses.dataclass
class EnsembleStudy:
    """Int8 members, their ensemble, the one larger int8 model of equal bytes and of equal latency, and one
    member-sized student distilled from the ensemble (``sec-combine-ensemble``)."""

    members: list[Compressed]
    ensemble: Compressed
    candidate_bytes: dict[int, int]  # width -> int8 file bytes of an untrained candidate
    candidate_ms: dict[int, float]  # width -> milliseconds per batch of ENSEMBLE_BATCH, timed with the ensemble
    ensemble_ms: float
    slowdown_at_1: float  # the ensemble's latency over one member's at batch 1
    by_bytes: int
    by_latency: int
    singles: dict[int, Compressed]  # width -> the trained one larger model, int8
    distilled: Compressed
    distilled_fp32: nn.Module = dataclasses.field(repr=False)

    def disagreement(self) -> float:
        """How often two members predict different classes (:func:`~effdl.compress.disagreement`)."""
        return disagreement([m.predictions for m in self.members])

    def accuracies(self) -> distillation.StudentEnsemble:
        """The members', the ensemble's and the distilled student's test accuracies, as ``chap-distill`` keeps
        them (fractions), for its ensemble gain and claim."""
        return distillation.StudentEnsemble([m.accuracy / 100 for m in self.members], self.ensemble.accuracy / 100,
                                            [self.distilled.accuracy / 100])  # fmt: skip

    def latency_match(self, width: int) -> float:
        """How far the candidate ``width`` is from the ensemble's latency: the larger of the two ratios, >= 1."""
        ratio = self.candidate_ms[width] / self.ensemble_ms
        return max(ratio, 1 / ratio)

    def against(self, other: Compressed) -> stats.Paired:
        """McNemar's test of the ensemble against ``other`` on the same test images."""
        return stats.mcnemar(self.ensemble.correct, other.correct)

    def distilled_against_member(self) -> stats.Paired:
        """McNemar's test of the student distilled from the ensemble against the member trained alone from the
        same seed (both int8)."""
        return stats.mcnemar(self.distilled.correct, self.members[0].correct)


def kd_setting(name: str) -> distillation.Setting:
    """The (temperature, alpha) that ``chap-distill``'s sweep chooses on the validation split for student
    ``name``."""
    return distillation.best_setting(distillation.temperature_sweep(name))


@functools.cache
def ensemble_study() -> EnsembleStudy:
    """Train the members alone (one per seed), make each int8 and average them; pick the one larger model's width
    by the int8 bytes of untrained candidates and by their latency at :data:`ENSEMBLE_BATCH`, timed interleaved
    with the ensemble; train those; time the ensemble against one member at batch 1; distill the fp32 members'
    ensemble into one member-sized student at :func:`kd_setting` (a sweep of ``chap-distill`` run for this
    student)."""
    trained = [distillation.trained(MEMBER, "alone", seed) for seed in ENSEMBLE_SEEDS]
    members = [int8(model) for model in trained]
    together = Ensemble([m.model for m in members])
    ensemble = Compressed(together, sum(m.bytes for m in members), quant_cnn.predictions(together))
    # untrained: their bytes and latency do not depend on the weights' values; made int8 exactly as the members
    # are, test predictions included (on this CPU an engine that has run a large batch runs batch 1 slower)
    candidates = {w: int8(distillation.student(f"CNN w{w}")) for w in SINGLE_WIDTHS}
    timed = architecture.latencies_ms({"ensemble": together, **{f"w{w}": c.model for w, c in candidates.items()}},
                                      ENSEMBLE_BATCH)  # fmt: skip
    at_one = architecture.latencies_ms({"ensemble": together, "member": members[0].model}, 1)
    candidate_ms = {w: timed[f"w{w}"] for w in SINGLE_WIDTHS}
    candidate_bytes = {w: c.bytes for w, c in candidates.items()}
    by_bytes = closest(ensemble.bytes, candidate_bytes)
    by_latency = closest(timed["ensemble"], candidate_ms)
    singles = {w: int8(distillation.trained(f"CNN w{w}", "alone", 0)) for w in sorted({by_bytes, by_latency})}
    temperature, alpha = kd_setting(MEMBER)
    distilled = distillation.train_student(MEMBER, "KD", 0, temperature=temperature, alpha=alpha,
                                           targets=distillation.ensemble_targets(trained, temperature))  # fmt: skip
    return EnsembleStudy(members, ensemble, candidate_bytes, candidate_ms, timed["ensemble"],
                         at_one["ensemble"] / at_one["member"], by_bytes, by_latency, singles, int8(distilled),
                         distilled)  # fmt: skip


def check_ensemble(study: EnsembleStudy) -> None:
    """The int8 ensemble beats its average member (``chap-distill``'s claim), costs at batch 1 at least two
    members' time, and the candidate chosen for equal latency is within 1.5 times the ensemble's."""
    distillation.check_ensemble(study.accuracies())
    claims.claim("int8 ensemble latency / one member's, batch 1", study.slowdown_at_1, ">=", full=2, fast=2,
                 unit="x")  # fmt: skip
    claims.claim(f"equal-latency model vs ensemble at batch {ENSEMBLE_BATCH}, larger latency ratio",
                 study.latency_match(study.by_latency), "<=", full=1.5, fast=2, unit="x")  # fmt: skip


# --- distill, prune, quantize (sec-combine-pipeline) ----------------------------------------------------

PIPELINE_SCHEDULE = (0.5, 0.75)  # the student's iterative pruning, a fine-tune after each step
PIPELINE = ("fp32", "pruned", "pruned + 8-bit")


def round_weights_8bit_(model: nn.Module) -> nn.Module:
    """Every prunable weight rounded to 8 bits, symmetric, one scale per tensor (``sec-quant-basics-affine``): at
    most 255 levels and zero stays zero, so the packed file stores one 8-bit index per surviving weight. The
    model still computes in float32: the rounding buys bytes on disk, not time."""
    with torch.no_grad():
        for layer in prunable(model).values():
            layer.weight.copy_(fake_quantize(layer.weight, 8))
    return model


def packed_bytes(model: nn.Module, share: bool) -> int:
    """Bytes of ``model``'s packed file (:mod:`effdl.compress.packfile`, no Huffman codes): its sparse weights'
    positions as gaps and their values as float32, or (``share``) as indices into each weight's distinct
    values; everything else raw."""
    with tempfile.TemporaryDirectory() as folder:
        packfile.save(model.state_dict(), Path(folder) / "model.bin", share=share, huffman=False)
        return size_bytes(Path(folder) / "model.bin")


def compress_student(model: nn.Module) -> dict[str, Compressed]:
    """``model`` (a student of ``chap-distill``) pruned along :data:`PIPELINE_SCHEDULE` with fine-tuning, then its
    weights rounded to 8 bits: each stage's test predictions and bytes on disk."""
    pruned = recipes.prune_finetune(on_cpu(copy.deepcopy(model)), list(PIPELINE_SCHEDULE), _finetune("student"))
    pruned = on_cpu(pruned).eval()
    rounded = round_weights_8bit_(copy.deepcopy(pruned))
    return {"fp32": fp32(model),
            "pruned": Compressed(pruned, packed_bytes(pruned, share=False), quant_cnn.predictions(pruned)),
            "pruned + 8-bit": Compressed(rounded, packed_bytes(rounded, share=True),
                                         quant_cnn.predictions(rounded))}  # fmt: skip


@functools.cache
def pipeline() -> dict[str, dict[str, Compressed]]:
    """The seed-0 member trained alone and the student distilled from the ensemble (same shape, same seed), each
    through :func:`compress_student`: does what distillation bought survive pruning and quantization?"""
    return {"alone": compress_student(distillation.trained(MEMBER, "alone", 0)),
            "distilled": compress_student(ensemble_study().distilled_fp32)}  # fmt: skip


def kd_gains(result: dict[str, dict[str, Compressed]]) -> dict[str, stats.Paired]:
    """McNemar's test of the distilled student against the one trained alone, at each stage."""
    return {stage: stats.mcnemar(result["distilled"][stage].correct, result["alone"][stage].correct)
            for stage in PIPELINE}  # fmt: skip


def check_pipeline(result: dict[str, dict[str, Compressed]]) -> float:
    """Pruning and 8-bit weights shrink the distilled student's file at least five times."""
    stages = result["distilled"]
    ratio = stages["fp32"].bytes / stages["pruned + 8-bit"].bytes
    return claims.claim("distilled student, fp32 file / pruned + 8-bit file", ratio, ">=", full=5, fast=5, unit="x")


# --- the book's Pareto chart (sec-combine-pareto) -------------------------------------------------------

SOURCES = {  # each point of the chart and the chapter whose code builds it
    "cnn-fmnist": "chap-measuring", "resnet-fmnist": "chap-measuring", "int8 engine": "chap-quant-cnn",
    "pruned": "chap-prune-unstructured", "channels pruned": "chap-prune-structured", "KD student": "chap-distill",
    "separable": "chap-arch", "Deep Compression": "chap-combine", "int8 ensemble": "chap-combine",
    "distilled, pruned, 8-bit": "chap-combine",
}  # fmt: skip


@dataclasses.dataclass
class Pareto:
    """Each compression chapter's best model of Fashion-MNIST, and the baselines: test predictions and bytes on
    disk, and milliseconds per forward pass at :data:`LATENCY_BATCH`, all timed in one interleaved run."""

    points: dict[str, Compressed]
    latency_ms: dict[str, float]

    def accuracy(self, label: str) -> float:
        return self.points[label].accuracy

    def smallest_within(self, points: float, of: str = "cnn-fmnist") -> str:
        """The point with the smallest file whose test accuracy is within ``points`` of ``of``'s."""
        if of not in self.points:
            raise ValueError(f"of must be one of {list(self.points)}, got {of!r}")
        close = [k for k, p in self.points.items() if self.accuracy(of) - p.accuracy <= points]
        return min(close, key=lambda k: self.points[k].bytes)

    def latency_front(self) -> list[str]:
        """The points on the accuracy/latency frontier, fastest first (:func:`effdl.bench.pareto_front`)."""
        labels = list(self.points)
        return [labels[i] for i in pareto_front([self.latency_ms[k] for k in labels],
                                                 [self.accuracy(k) for k in labels])]  # fmt: skip


def kd_student() -> nn.Module:
    """``chap-distill``'s KD student as that chapter picks it: the student
    :func:`effdl.experiments.distillation.choose_student` chooses, taught by its teacher at :func:`kd_setting`,
    seed 0."""
    name = distillation.choose_student().chosen
    temperature, alpha = kd_setting(name)
    return distillation.trained(name, "KD", 0, temperature=temperature, alpha=alpha)


def book_models() -> dict[str, Compressed]:
    """The points of :data:`SOURCES`, each built through its chapter's experiments module (the baselines come from
    the zoo). Two differ from their chapter's own headline: the channels are pruned from ``cnn-fmnist`` by
    Torch-Pruning (that chapter's headline prunes the ResNet), and the separable CNN is trained on its chapter's
    shorter budget."""
    base = zoo.pretrained("cnn-fmnist").model
    cnn = deep_compression("cnn-fmnist")
    return {
        "cnn-fmnist": fp32(base),
        "resnet-fmnist": fp32(zoo.pretrained("resnet-fmnist").model),
        "int8 engine": int8(base),
        "pruned": Compressed(cnn.pruned, cnn.bytes["pruned"], quant_cnn.predictions(cnn.pruned)),
        "channels pruned": fp32(prune_structured.torch_pruning_pruned(on_cpu(base), 0.5)),
        "KD student": fp32(kd_student()),
        "separable": fp32(architecture.cnn(architecture.SEPARABLE).model),
        "Deep Compression": Compressed(cnn.model, cnn.bytes["huffman"], quant_cnn.predictions(cnn.model)),
        "int8 ensemble": ensemble_study().ensemble,
        "distilled, pruned, 8-bit": pipeline()["distilled"]["pruned + 8-bit"],
    }


@functools.cache
def pareto() -> Pareto:
    """:func:`book_models`, measured: accuracy and bytes as built, latency in one interleaved run."""
    points = book_models()
    return Pareto(points, architecture.latencies_ms({label: p.model for label, p in points.items()}, LATENCY_BATCH))


def check_pareto(result: Pareto) -> float:
    """The smallest file within a point of ``cnn-fmnist``'s accuracy is far smaller than its fp32 file; returns
    that ratio."""
    ratio = result.points["cnn-fmnist"].bytes / result.points[result.smallest_within(1.0)].bytes
    return claims.claim("cnn-fmnist fp32 file / smallest file within 1 pt of it", ratio, ">=", full=10, fast=5,
                        unit="x")  # fmt: skip


# --- pitfalls (sec-combine-pitfalls) ---------------------------------------------------------------------


def naive_ratio(result: DeepCompression, bits: int = BITS) -> float:
    """The ratio claimed by counting bits alone, ``32 / bits / (1 - sparsity)``: no positions, no codebooks,
    no biases, no header."""
    return 32 / bits / (1 - result.sparsity)


def check_naive_ratio(result: DeepCompression) -> float:
    overstated = naive_ratio(result) / result.ratio("shared")
    return claims.claim("bit-counting ratio / measured file ratio, pruned and shared", overstated, ">=",
                        full=1.5, fast=1.5, unit="x")  # fmt: skip


# --- exercises ---------------------------------------------------------------------------------------------


def self_check_entropy(answer: float, layer: str = "net.1") -> bool:
    """Exercise 1: is ``answer`` the entropy bound, in bits, of the codebook indices of LeNet's ``layer`` after
    Deep Compression (within one bit)?"""
    right = deep_compression(LENET).layers[layer]["entropy"]
    problems = [] if abs(answer - right) <= 1 else [f"{answer:,.1f} is not n · H of the index counts"]
    return claims.self_check(problems, f"{right:,.1f} bits")


def self_check_fewest_bits(answer: int) -> bool:
    """Exercise 2: is ``answer`` the fewest bits (of :data:`ORDER_BITS`) at which pruning then sharing, without
    fine-tuning, stays within one point of pruning alone?"""
    result = order()
    fits = [b for b in ORDER_BITS if result["pruned"] - result["prune, then share"][b] <= 1]
    right = min(fits) if fits else None
    problems = [] if answer == right else [f"{answer} bits is not the fewest that stays within 1 pt"]
    return claims.self_check(problems, f"{right} bits")


def self_check_shared_bytes(answer: int) -> bool:
    """Exercise 3: is ``answer`` within 5 % of the bytes of LeNet's ``shared`` file (fixed-width indices and
    gaps)?"""
    right = deep_compression(LENET).bytes["shared"]
    problems = [] if abs(answer - right) <= 0.05 * right else [f"{answer:,} is more than 5 % from the file"]
    return claims.self_check(problems, f"{right:,} bytes on disk")


def self_check_latency_frontier(answer: set[str]) -> bool:
    """Exercise 4: is ``answer`` the set of the chart's points on the accuracy/latency frontier (no other point is
    both as fast and more accurate)?"""
    right = set(pareto().latency_front())
    problems = []
    if right - answer:
        problems.append(f"missing {sorted(right - answer)}")
    if answer - right:
        problems.append(f"not on the frontier: {sorted(answer - right)}")
    return claims.self_check(problems, f"{len(right)} points: {', '.join(sorted(right))}")


def bench() -> None:
    """The chapter's rows: Deep Compression of LeNet-300-100 (targets and claims) and of ``cnn-fmnist``
    (reported), the Huffman coding checks, the order of pruning and sharing, the bit-counting pitfall, the int8
    ensemble, the distilled student pruned and quantized, and the Pareto chart's claims."""
    lenet = deep_compression(LENET)
    check_deep_compression(lenet)
    check_coding(lenet.layers)
    check_naive_ratio(lenet)
    cnn = deep_compression("cnn-fmnist")
    claims.measure("cnn-fmnist fp32 file / Deep Compression file", cnn.ratio(), "x")
    claims.measure("cnn-fmnist test accuracy drop after Deep Compression", cnn.drop(), "pt")
    check_order(order())
    study = ensemble_study()
    check_ensemble(study)
    for match, width in (("bytes", study.by_bytes), ("latency", study.by_latency)):
        claims.measure(f"int8 ensemble minus the one int8 model of equal {match}",
                       100 * study.against(study.singles[width]).difference, "pt")  # fmt: skip
    claims.measure("int8 student distilled from the ensemble minus member 0",
                   100 * study.distilled_against_member().difference, "pt")
    students = pipeline()
    check_pipeline(students)
    for stage, test in kd_gains(students).items():
        claims.measure(f"distilled minus alone, {stage}", 100 * test.difference, "pt")
    result = pareto()
    check_pareto(result)
    claims.measure("Deep Compression latency / cnn-fmnist fp32 latency, batch 1",
                   result.latency_ms["Deep Compression"] / result.latency_ms["cnn-fmnist"], "x")
