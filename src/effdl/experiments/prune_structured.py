"""Chapter 6's experiments (``notebooks/06_prune_structured.ipynb``): channel pruning against Torch-Pruning,
2:4 masks, and Wanda against magnitude on the language models."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from effdl import bench as measure_bench
from effdl import claims, lm, train, zoo
from effdl.config import pick
from effdl.experiments._shared import fmnist_accuracy, lm_suite
from effdl.prune import llm as prune_llm
from effdl.prune import structured
from effdl.prune.masks import MaskKeeper, apply_masks_, nm_compatible, nm_masks, prunable

NOTEBOOK = "06_prune_structured"
BATCH_THROUGHPUT = 256


def finetune_structured(model: nn.Module) -> nn.Module:
    """The chapter's fine-tuning after pruning: 5 epochs at lr 0.02 (1 epoch on 2,000 images in fast mode)."""
    return train.finetune(model, pick(fast=1, full=5), lr=0.02, train_limit=pick(fast=2000, full=None))


def channel_pruned(model: nn.Module, ratio: float = 0.5, criterion: str = "l1", round_to: int = 8,
                   batches: Iterable | None = None) -> nn.Module:  # fmt: skip
    """A copy of ``model`` with ``ratio`` of every channel group removed, then fine-tuned
    (``sec-prune-structured-headline``)."""
    pruned = structured.prune_channels_(copy.deepcopy(model), ratio, criterion, batches, round_to)
    return finetune_structured(pruned)


def torch_pruning_pruned(model: nn.Module, ratio: float = 0.5, round_to: int = 8) -> nn.Module:
    """The same as :func:`channel_pruned` with Torch-Pruning choosing and removing the channels."""
    example = torch.randn(1, 1, 28, 28)
    return finetune_structured(structured.torch_pruning_channels(model, example, ratio, round_to))


def semi_structured(model: nn.Module, n: int = 2, m: int = 4) -> nn.Module:
    """A copy with N:M magnitude masks on every layer whose input size allows them (all but the
    9-input stem here), fine-tuned with the masks kept (``sec-prune-structured-nm``)."""
    pruned = copy.deepcopy(model)
    layers = prunable(pruned)
    masks = nm_masks({name: layers[name].weight.detach().abs() for name in nm_compatible(pruned, m)}, n, m)
    apply_masks_(pruned, masks)
    with MaskKeeper(pruned, masks):
        return finetune_structured(pruned)


def llm_pruning(name: str) -> dict[str, float]:
    """Held-out perplexity of ``gpt-shakespeare`` or ``smollm2`` dense and pruned by magnitude and Wanda,
    at 50 % unstructured and 2:4 (``sec-prune-structured-llm``); Wanda calibrates on train-split windows."""
    model, test, calibration = lm_suite(name)
    result = {"dense": lm.perplexity(model, test)}
    for method in prune_llm.METHODS:
        for pattern, nm in (("50%", None), ("2:4", (2, 4))):
            pruned = prune_llm.prune_llm_(copy.deepcopy(model), method, 0.5, nm, calibration)
            result[f"{method} {pattern}"] = lm.perplexity(pruned, test)
    return result


def _speedup(dense: nn.Module, pruned: nn.Module, x: torch.Tensor) -> float:
    times = measure_bench.compare_latency({"dense": dense, "pruned": pruned}, x)
    return times["dense"] / times["pruned"]


def bench() -> None:
    """The chapter's headline rows: channel pruning's speed and accuracy, Torch-Pruning at equal MACs, Wanda."""
    resnet = zoo.pretrained("resnet-fmnist").model.eval().cpu()
    ours, theirs = channel_pruned(resnet), torch_pruning_pruned(resnet)
    one, batch = zoo.example_input("resnet-fmnist"), zoo.example_input("resnet-fmnist", BATCH_THROUGHPUT)
    dense, ours_acc = fmnist_accuracy(resnet), fmnist_accuracy(ours)
    flops = {"ours": measure_bench.flops(ours, one), "theirs": measure_bench.flops(theirs, one)}
    claims.measure("structured MACs / dense", flops["ours"] / measure_bench.flops(resnet, one))
    claims.target("structured speed-up (batch 256)", _speedup(resnet, ours, batch), ">=", 1.8, unit="x")
    claims.measure("structured speed-up (batch 1)", _speedup(resnet, ours, one), "x")
    claims.target("structured accuracy drop", 100 * (dense - ours_acc), "<=", 1.5, unit="pt")
    claims.target("ours minus Torch-Pruning accuracy", 100 * (ours_acc - fmnist_accuracy(theirs)), ">=", -0.5,
                  unit="pt")  # fmt: skip
    claims.target("Torch-Pruning MACs / ours", flops["theirs"] / flops["ours"], "<=", 1.0)
    for name in ("gpt-shakespeare", "smollm2"):
        result = llm_pruning(name)
        for label, ppl in result.items():
            claims.measure(f"{name} {label} perplexity", ppl)
        for pattern in ("50%", "2:4"):
            gap = result[f"wanda {pattern}"] - result[f"magnitude {pattern}"]
            claims.target(f"{name} Wanda - magnitude perplexity, {pattern}", gap, "<", 0.0)
