"""Several teachers, one target (``sec-distill-multi``).

Teachers can be combined by averaging their softened *probabilities* (the ensemble's prediction, as in
Hinton et al., 2015) or their *logits* (a geometric mean of the distributions, renormalized), each with
optional weights. Either way the result is returned as logits whose ``softmax(· / T)`` is the combined
target, so :class:`~effdl.distill.losses.KDLoss` consumes it at the same temperature ``T`` as one teacher's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

COMBINE = ("probabilities", "logits")


def _weights(count: int, weights: Sequence[float] | None, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.full((count,), 1 / count, device=like.device)
    w = torch.as_tensor(weights, dtype=torch.float32, device=like.device)
    if w.shape != (count,) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"weights must be {count} non-negative numbers with a positive sum, got {list(weights)}")
    return w / w.sum()


def combine_teachers(teacher_logits: Sequence[torch.Tensor], how: str = "probabilities", temperature: float = 4.0,
                     weights: Sequence[float] | None = None) -> torch.Tensor:  # fmt: skip
    """One target from several teachers' logits (each ``(..., classes)``, the same shape), as logits ``z`` with
    ``softmax(z / temperature)`` equal to: the weighted mean of the teachers' ``softmax(z_k / temperature)``
    (``how="probabilities"``), or the softmax of the weighted mean of their logits (``how="logits"``)."""
    if how not in COMBINE:
        raise ValueError(f"how must be one of {COMBINE}, got {how!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(teacher_logits) == 0 or len({tuple(t.shape) for t in teacher_logits}) != 1:
        raise ValueError(f"teacher_logits must be one or more tensors of one shape, got "
                         f"{[tuple(t.shape) for t in teacher_logits]}")  # fmt: skip
    stacked = torch.stack([t.detach().float() for t in teacher_logits])
    w = _weights(len(teacher_logits), weights, stacked).view(-1, *[1] * (stacked.dim() - 1))
    if how == "logits":
        return (w * stacked).sum(0)
    probabilities = (w * torch.softmax(stacked / temperature, dim=-1)).sum(0)
    return temperature * probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()
