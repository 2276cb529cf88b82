"""Which examples to keep, and a fixed step budget over any subset (``sec-data-select``).

Sorscher et al. (2022) predict that with much data one should keep the hardest examples, with little the
easiest; :func:`select` keeps either, or a random subset, and balances the classes when given labels so a
small subset does not lose the easy classes altogether.
"""

from __future__ import annotations

import math

import torch

KEEP = ("hard", "easy", "random")


def _pick(scores: torch.Tensor, count: int, keep: str, generator: torch.Generator) -> torch.Tensor:
    if keep == "random":
        return torch.randperm(len(scores), generator=generator)[:count]
    return torch.argsort(scores, descending=keep == "hard", stable=True)[:count]


def select(scores: torch.Tensor, fraction: float, keep: str = "hard", labels: torch.Tensor | None = None,
           seed: int = 0) -> torch.Tensor:  # fmt: skip
    """Sorted indices of the ``fraction`` of examples to keep: the highest ``scores`` (``keep="hard"``), the
    lowest (``"easy"``) or a random subset (``"random"``, seeded). With ``labels``, the same fraction of each
    class is kept (rounded up per class) (``sec-data-select``)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    if scores.ndim != 1 or (labels is not None and labels.shape != scores.shape):
        raise ValueError("scores must be 1-D and labels, if given, of the same shape")
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        return _pick(scores, math.ceil(fraction * len(scores)), keep, generator).sort().values
    kept = []
    for c in labels.unique():
        members = (labels == c).nonzero().squeeze(1)
        kept.append(members[_pick(scores[members], math.ceil(fraction * len(members)), keep, generator)])
    return torch.cat(kept).sort().values


def step_batches(indices: torch.Tensor, steps: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """``steps`` minibatches of ``batch_size`` indices drawn from ``indices`` in shuffled passes (epochs), so that
    every subset trains for the same number of optimizer steps: a 10 % subset is simply seen ten times as often."""
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    if len(indices) == 0:
        raise ValueError("indices must not be empty")
    generator = torch.Generator().manual_seed(seed)
    passes = math.ceil(steps * batch_size / len(indices))
    order = torch.cat([indices[torch.randperm(len(indices), generator=generator)] for _ in range(passes)])
    return list(order[: steps * batch_size].view(steps, batch_size))
