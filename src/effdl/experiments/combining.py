"""The experiments of ``chap-combine`` (``notebooks/09_combining.ipynb``): Deep Compression from scratch on
LeNet-300-100 and ``cnn-fmnist`` (prune, share weights, Huffman-code, one file per stage), and what the order
of pruning and quantization does.

Pruning is the iterative magnitude pruning with fine-tuning of ``sec-prune-unstructured-iterative``
(:func:`effdl.prune.recipes.prune_finetune`); the sparsity is chosen on the validation split, every reported
accuracy is on the test split, and the last stage's accuracy is measured on the model read back from its file.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections import Counter

import torch
from dahuffman import HuffmanCodec
from safetensors.torch import save_model
from torch import nn

from effdl import claims, train, zoo
from effdl.bench import size_bytes
from effdl.compress import coding, packfile, sharing
from effdl.config import cache_dir, pick
from effdl.experiments._shared import fmnist_accuracy
from effdl.prune import recipes
from effdl.prune.masks import magnitude_scores, prunable, sparsity

NOTEBOOK = "09_combining"
LENET = "lenet-fmnist"
SCHEDULE = (0.5, 0.75, 0.9, 0.92, 0.95, 0.97)  # iterative pruning, a fine-tune after each step
ALLOWED_VAL_DROP = 0.75  # pt of validation accuracy the pruned model may lose (room is left for sharing)
BITS = 4  # codebook of 16 values per layer
FINETUNE = {  # per pruning step; the CNN's epochs cost about 20 times LeNet's
    LENET: pick(fast={"epochs": 1, "train_limit": 4000}, full={"epochs": 4, "train_limit": None}),
    "cnn-fmnist": pick(fast={"epochs": 1, "train_limit": 2000}, full={"epochs": 1, "train_limit": None}),
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
        model=shared,
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


def bench() -> None:
    """The chapter's rows: Deep Compression of LeNet-300-100 (targets and claims) and of ``cnn-fmnist``
    (reported), the Huffman coding checks, the order of pruning and sharing, the bit-counting pitfall."""
    lenet = deep_compression(LENET)
    check_deep_compression(lenet)
    check_coding(lenet.layers)
    check_naive_ratio(lenet)
    cnn = deep_compression("cnn-fmnist")
    claims.measure("cnn-fmnist fp32 file / Deep Compression file", cnn.ratio(), "x")
    claims.measure("cnn-fmnist test accuracy drop after Deep Compression", cnn.drop(), "pt")
    check_order(order())
