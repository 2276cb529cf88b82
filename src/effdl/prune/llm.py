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

    ``stats[name].hessian`` is XᵀX/n, so its diagonal is ‖X_j‖²/n, the same ranking within a layer.
    """
    layers = block_linears(model)
    return {n: layers[n].weight.detach().abs() * stats[n].hessian.diagonal().sqrt() for n in stats}


def llm_masks(model: nn.Module, method: str, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
              calibration: Iterable | None = None) -> Masks:  # fmt: skip
    """Masks for every linear layer in the transformer blocks (embeddings and head stay dense).

    ``magnitude`` removes the smallest |W| of each layer; ``wanda`` the smallest |W|·‖X‖ of each
    output row, with ‖X‖ from ``calibration`` batches. ``nm=(2, 4)`` asks for N:M masks instead.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    layers = block_linears(model)
    if method == "magnitude":
        scores = {n: m.weight.detach().abs() for n, m in layers.items()}
    else:
        if calibration is None:
            raise ValueError("calibration batches must be given for method='wanda'")
        scores = wanda_scores(model, input_stats(model, layers, calibration))
    if nm is not None:
        return nm_masks(scores, *nm)
    return layer_masks(scores, sparsity) if method == "magnitude" else row_masks(scores, sparsity)


@torch.no_grad()
def prune_llm_(model: nn.Module, method: str, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
               calibration: Iterable | None = None) -> nn.Module:  # fmt: skip
    """Apply :func:`llm_masks` to ``model`` in place and return it."""
    return apply_masks_(model, llm_masks(model, method, sparsity, nm, calibration))
