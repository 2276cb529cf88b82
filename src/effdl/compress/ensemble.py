"""Ensembles of small models (``sec-combine-ensemble``): one module that averages its members' probabilities,
so an ensemble is scored, timed, saved and distilled like any model, and how often its members disagree."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from effdl.distill.ensemble import combine_teachers


class Ensemble(nn.Module):
    """Members run one after the other on the same batch; the output is the log of their mean probability
    (logits whose softmax is the ensemble's prediction, as :func:`~effdl.distill.combine_teachers` at
    temperature 1)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"members must hold at least 2 models, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine_teachers([member(x) for member in self.members], "probabilities", 1.0)


def disagreement(predictions: Sequence[torch.Tensor]) -> float:
    """Mean over pairs of members of the fraction of examples on which the two predict different classes:
    0 when the members are copies, the room an ensemble has to fix a member's mistakes."""
    if len(predictions) < 2 or len({tuple(p.shape) for p in predictions}) != 1:
        raise ValueError(f"predictions must be 2 or more tensors of one shape, got "
                         f"{[tuple(p.shape) for p in predictions]}")  # fmt: skip
    pairs = list(itertools.combinations(predictions, 2))
    return sum((a != b).float().mean().item() for a, b in pairs) / len(pairs)
