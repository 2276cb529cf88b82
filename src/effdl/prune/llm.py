"""Pruning LLM linear layers without retraining: magnitude against Wanda's |W|·‖X‖ (``sec-prune-structured-llm``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from effdl.lm import InputStats, block_linears, input_stats
from effdl.prune.masks import Masks, Scores, apply_masks_, layer_masks, nm_masks, row_masks

METHODS = ("magnitude", "wanda")


def wanda_scores(model: nn.Module, stats: dict[str, InputStats]) -> Scores:
    """|W_ij|·‖X_j‖₂ (Sun et al., 2024): a weight matters as much as the inputs it multiplies are large.

    ``stats[name].mean_square`` is ‖X_j‖²/n, so its square root ranks weights as ‖X_j‖ does within a layer.
    """
    layers = block_linears(model)
    return {n: layers[n].weight.detach().abs() * stats[n].mean_square.sqrt() for n in stats}


def llm_scores(model: nn.Module, method: str, calibration: Iterable | None = None) -> Scores:
    """Scores of every linear layer in the transformer blocks: |W| for ``magnitude``, |W|·‖X‖ for ``wanda``
    with ‖X‖ from ``calibration`` batches."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    layers = block_linears(model)
    if method == "magnitude":
        return {n: m.weight.detach().abs() for n, m in layers.items()}
    if calibration is None:
        raise ValueError("calibration batches must be given for method='wanda'")
    return wanda_scores(model, input_stats(model, layers, calibration))


def score_masks(scores: Scores, method: str, sparsity: float = 0.5, nm: tuple[int, int] | None = None) -> Masks:
    """Masks from :func:`llm_scores`: ``magnitude`` removes the smallest scores of each layer, ``wanda`` those
    of each output row; ``nm=(2, 4)`` asks for N:M masks instead. One set of scores serves every pattern."""
    if nm is not None:
        return nm_masks(scores, *nm)
    return layer_masks(scores, sparsity) if method == "magnitude" else row_masks(scores, sparsity)


def llm_masks(model: nn.Module, method: str, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
              calibration: Iterable | None = None) -> Masks:  # fmt: skip
    """Masks for every linear layer in the transformer blocks (embeddings and head stay dense):
    :func:`score_masks` of :func:`llm_scores`."""
    return score_masks(llm_scores(model, method, calibration), method, sparsity, nm)


@torch.no_grad()
def prune_llm_(model: nn.Module, method: str, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
               calibration: Iterable | None = None) -> nn.Module:  # fmt: skip
    """Apply :func:`llm_masks` to ``model`` in place and return it."""
    return apply_masks_(model, llm_masks(model, method, sparsity, nm, calibration))
