"""How pruning is applied to a trained model: one-shot, iteratively with fine-tuning in between,
one layer at a time (sensitivity), and rewound to initialization (the lottery ticket).

Fine-tuning is passed in as a function ``finetune(model) -> model``, so these recipes work with
any data and training loop (``chap-prune-unstructured``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

from effdl.bench import model_device
from effdl.prune.masks import (
    MaskKeeper,
    Masks,
    Scores,
    apply_masks_,
    global_masks,
    layer_masks,
    magnitude_scores,
    masks_of,
    obd_scores,
    prunable,
    random_scores,
    taylor_scores,
)
from effdl.train import accuracy

METHODS = ("random", "magnitude", "taylor", "obd")
Finetune = Callable[[nn.Module], nn.Module]


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
    old ones (a pitfall of ``chap-prune-unstructured``); a forward pass over a few hundred training
    images fixes that.
    """
    torch.optim.swa_utils.update_bn(batches, model, device=model_device(model))
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


def finetune_masked(model: nn.Module, finetune: Finetune) -> nn.Module:
    """``finetune(model)`` with the current zeros kept at zero (:class:`~effdl.prune.masks.MaskKeeper`)."""
    with MaskKeeper(model, masks_of(model)):
        return finetune(model)


def prune_finetune(model: nn.Module, schedule: list[float], finetune: Finetune, method: str = "magnitude",
                   batches: Iterable | None = None) -> nn.Module:  # fmt: skip
    """Prune ``model`` in place to each sparsity of ``schedule`` in turn (global masks), calling
    ``finetune`` after each step with the masks kept: one-shot is a one-entry schedule
    (``sec-prune-unstructured-iterative``).

    Pruned weights score zero, so each step only adds to the previous mask.
    """
    for target in schedule:
        kept = masks_of(model)
        scores = {n: s * kept[n] for n, s in scores_for(model, method, batches).items()}
        apply_masks_(model, global_masks(scores, target))
        finetune_masked(model, finetune)
    return model


@torch.no_grad()
def sensitivity_scan(model: nn.Module, sparsities: list[float], batches: list) -> dict[str, list[float]]:
    """Accuracy on ``batches`` with one layer at a time pruned by magnitude to each sparsity
    (``sec-prune-unstructured-sensitivity``)."""
    result = {}
    for name in prunable(model):
        row = []
        for s in sparsities:
            pruned = copy.deepcopy(model)
            layer = prunable(pruned)[name]
            apply_masks_(pruned, {name: layer_masks({name: layer.weight.abs()}, s)[name]})
            row.append(accuracy(pruned, batches))
        result[name] = row
    return result


def rewind_(model: nn.Module, initial: dict[str, torch.Tensor], masks: Masks) -> nn.Module:
    """Lottery-ticket rewinding: every weight back to its value in ``initial``, then ``masks`` applied."""
    model.load_state_dict(initial)
    return apply_masks_(model, masks)
