"""The experiments of Chapters 5 and 6, shared by the notebooks and ``make bench`` so both measure the same thing."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from effdl import data, zoo
from effdl.config import pick, seed_everything
from effdl.prune import llm as prune_llm
from effdl.prune import structured
from effdl.prune.masks import (
    MaskKeeper,
    Masks,
    Scores,
    apply_masks_,
    global_masks,
    layer_masks,
    magnitude_scores,
    masks_of,
    nm_compatible,
    nm_masks,
    obd_scores,
    polynomial_sparsity,
    prunable,
    random_scores,
    taylor_scores,
)
from effdl.quant.llm import perplexity, shakespeare_suite
from effdl.train import evaluate, finetune

METHODS = ("random", "magnitude", "taylor", "obd")


def accuracy(model: nn.Module, split: str = "test") -> float:
    """Fashion-MNIST accuracy of ``model`` on ``split`` (``val`` for choices, ``test`` for reporting);
    the whole split in full mode, its first 2,000 images in fast mode."""
    return evaluate(model, data.loader(data.fashion_mnist(split, limit=pick(fast=2000, full=None)), 1000))["accuracy"]


def score_batches(images: int | None = None, batch_size: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Train-split batches for gradient-based scores (Taylor, OBD): 512 images fast, 4,096 full."""
    subset = data.fashion_mnist("train", limit=images or pick(fast=512, full=4096))
    return list(data.loader(subset, batch_size, shuffle=True, seed=1))


def scores_for(model: nn.Module, method: str, batches: Iterable | None = None, seed: int = 0) -> Scores:
    """Importance of every prunable weight by ``method`` (one of :data:`METHODS`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in ("taylor", "obd") and batches is None:
        raise ValueError(f"batches must be given for method={method!r}")
    if method == "random":
        return random_scores(model, seed)
    if method == "magnitude":
        return magnitude_scores(model)
    return taylor_scores(model, batches) if method == "taylor" else obd_scores(model, batches)


def recalibrate_bn(model: nn.Module, batches: Iterable) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (``torch.optim.swa_utils.update_bn``).

    Pruning changes the mean and variance of each layer's output, and BN still normalizes with the
    old ones (a Chapter 5 pitfall); a forward pass over a few hundred training images fixes that.
    """
    torch.optim.swa_utils.update_bn(batches, model)
    return model.eval()


def prune_oneshot(model: nn.Module, scores: Scores, sparsity: float, scope: str = "global",
                  bn_batches: Iterable | None = None) -> nn.Module:  # fmt: skip
    """A pruned copy of ``model``: the lowest ``scores`` removed to ``sparsity``, across layers or per layer.

    ``bn_batches``, if given, re-estimate the BN statistics of the pruned copy (:func:`recalibrate_bn`).
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    pruned = apply_masks_(copy.deepcopy(model), (global_masks if scope == "global" else layer_masks)(scores, sparsity))
    return pruned if bn_batches is None else recalibrate_bn(pruned, bn_batches)


def finetune_masked(model: nn.Module, epochs: int, lr: float = 0.01, train_limit: int | None = None) -> nn.Module:
    """Fine-tune with the current zeros kept at zero (:class:`~effdl.prune.masks.MaskKeeper`)."""
    with MaskKeeper(model, masks_of(model)):
        return finetune(model, epochs, lr=lr, train_limit=train_limit)


def prune_finetune(
    model: nn.Module, schedule: list[float], method: str = "magnitude", epochs: int = 1, lr: float = 0.01,
    train_limit: int | None = None, batches: Iterable | None = None,
) -> nn.Module:  # fmt: skip
    """Prune ``model`` in place to each sparsity of ``schedule`` in turn (global masks), fine-tuning
    ``epochs`` after each step: one-shot is a one-entry schedule (section 5.4).

    Pruned weights score zero, so each step only adds to the previous mask.
    """
    for target in schedule:
        kept = masks_of(model)
        scores = {n: s * kept[n] for n, s in scores_for(model, method, batches).items()}
        apply_masks_(model, global_masks(scores, target))
        finetune_masked(model, epochs, lr=lr, train_limit=train_limit)
    return model


def iterative_vs_oneshot(model: nn.Module, final: float = 0.9, rounds: int | None = None, lr: float = 0.05,
                         train_limit: int | None = None) -> dict[str, nn.Module]:  # fmt: skip
    """Section 5.4's comparison at one budget: ``rounds`` epochs of fine-tuning either after one prune to
    ``final``, or spread over ``rounds`` prune/fine-tune steps along the cubic schedule."""
    rounds = rounds or pick(fast=2, full=6)
    schedule = [polynomial_sparsity(k, rounds, final) for k in range(1, rounds + 1)]
    budget = {"lr": lr, "train_limit": train_limit or pick(fast=2000, full=None)}
    return {
        "one-shot": prune_finetune(copy.deepcopy(model), [final], epochs=rounds, **budget),
        "iterative": prune_finetune(copy.deepcopy(model), schedule, epochs=1, **budget),
    }


@torch.no_grad()
def sensitivity_scan(model: nn.Module, sparsities: list[float], batches: list) -> dict[str, list[float]]:
    """Accuracy on ``batches`` with one layer at a time pruned by magnitude to each sparsity (section 5.5)."""
    result = {}
    for name in prunable(model):
        row = []
        for s in sparsities:
            pruned = copy.deepcopy(model)
            layer = prunable(pruned)[name]
            apply_masks_(pruned, {name: layer_masks({name: layer.weight.abs()}, s)[name]})
            row.append(evaluate(pruned, batches)["accuracy"])
        result[name] = row
    return result


def rewind_(model: nn.Module, initial: dict[str, torch.Tensor], masks: Masks) -> nn.Module:
    """Lottery-ticket rewinding: every weight back to its value in ``initial``, then ``masks`` applied."""
    model.load_state_dict(initial)
    return apply_masks_(model, masks)


def lottery_ticket(name: str, sparsity: float, epochs: int) -> dict[str, float]:
    """Frankle & Carbin's experiment (section 5.7) on baseline ``name`` trained for ``epochs``.

    The mask is global magnitude pruning of the trained dense model; the *winning ticket* trains the
    surviving weights from their original initial values, the *control* the same mask from a new
    random initialization, both with the dense model's own recipe. Returns test accuracies.
    """
    dense = zoo.pretrained(name, epochs=epochs)
    masks = global_masks(magnitude_scores(dense.model), sparsity)
    result = {"dense": accuracy(dense.model), "sparsity": sparsity}
    for label, seed in (("ticket", dense.recipe.train["seed"]), ("random reinit", dense.recipe.train["seed"] + 1)):
        seed_everything(seed)  # the dense run's own starting point for the ticket, a fresh draw for the control
        initial = zoo.build(dense.recipe.arch).state_dict()
        model = rewind_(zoo.build(dense.recipe.arch), initial, masks)
        seed_everything(dense.recipe.train["seed"])  # the same data order for both
        with MaskKeeper(model, masks):
            zoo.train_fmnist(model, dense.recipe.train)
        result[label] = accuracy(model.cpu().to(memory_format=torch.contiguous_format))
    return result


# --- Chapter 6 -----------------------------------------------------------------------------------


def finetune_structured(model: nn.Module) -> nn.Module:
    """Chapter 6's fine-tuning after pruning: 5 epochs at lr 0.02 (1 epoch on 2,000 images in fast mode)."""
    return finetune(model, pick(fast=1, full=5), lr=0.02, train_limit=pick(fast=2000, full=None))


def channel_pruned(model: nn.Module, ratio: float = 0.5, criterion: str = "l1", round_to: int = 8,
                   batches: Iterable | None = None) -> nn.Module:  # fmt: skip
    """A copy of ``model`` with ``ratio`` of every channel group removed, then fine-tuned (section 6.4)."""
    pruned = structured.prune_channels_(copy.deepcopy(model), ratio, criterion, batches, round_to)
    return finetune_structured(pruned)


def torch_pruning_pruned(model: nn.Module, ratio: float = 0.5, round_to: int = 8) -> nn.Module:
    """The same as :func:`channel_pruned` with Torch-Pruning choosing and removing the channels."""
    example = torch.randn(1, 1, 28, 28)
    return finetune_structured(structured.torch_pruning_channels(model, example, ratio, round_to))


def semi_structured(model: nn.Module, n: int = 2, m: int = 4) -> nn.Module:
    """A copy with N:M magnitude masks on every layer whose input size allows them (all but the
    9-input stem here), fine-tuned with the masks kept (section 6.5)."""
    pruned = copy.deepcopy(model)
    layers = prunable(pruned)
    masks = nm_masks({name: layers[name].weight.detach().abs() for name in nm_compatible(pruned, m)}, n, m)
    apply_masks_(pruned, masks)
    with MaskKeeper(pruned, masks):
        return finetune_structured(pruned)


def llm_pruning(name: str) -> dict[str, float]:
    """Held-out perplexity of ``gpt-shakespeare`` or ``smollm2`` dense and pruned by magnitude and Wanda,
    at 50 % unstructured and 2:4 (section 6.6); Wanda calibrates on train-split windows."""
    model, test, calibration = shakespeare_suite(name)
    result = {"dense": perplexity(model, test)}
    for method in prune_llm.METHODS:
        for pattern, nm in (("50%", None), ("2:4", (2, 4))):
            pruned = prune_llm.prune_llm_(copy.deepcopy(model), method, 0.5, nm, calibration)
            result[f"{method} {pattern}"] = perplexity(pruned, test)
    return result
