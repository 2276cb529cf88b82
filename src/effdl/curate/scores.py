"""How much an example teaches: scores computed on the training split only (``sec-data-select``).

* EL2N (Paul et al., 2021): the L2 norm of the error vector ``softmax(logits) - one_hot(label)`` early in
  training, averaged over a few short runs. Large for examples the network has not fitted yet.
* Forgetting events (Toneva et al., 2019): how often an example flips from correctly to wrongly classified
  between two presentations during training; never-learned examples score highest.
* Distance to the class mean (a proxy that needs no training): how far an example lies from the average
  example of its class, in whatever features it is given (pixels here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def el2n(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EL2N score of each example: ``|| softmax(logits) - one_hot(labels) ||_2`` (``sec-data-select``).

    ``logits`` is ``(N, C)``, ``labels`` ``(N,)``; the result is ``(N,)`` in ``[0, sqrt(2)]``.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)}, {tuple(labels.shape)}")
    error = logits.float().softmax(-1) - F.one_hot(labels, logits.shape[1]).float()
    return error.norm(dim=1)


class ForgettingCounter:
    """Counts forgetting events per example over a training run (``sec-data-select``).

    Call :meth:`update` with the indices of each minibatch and whether the network classified each correctly
    when it saw them; an event is a correct presentation followed by a wrong one. :meth:`scores` gives the count,
    and examples never classified correctly get one more than the largest count (the hardest of all).
    """

    def __init__(self, n: int) -> None:
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        self.last = torch.zeros(n, dtype=torch.bool)
        self.learned = torch.zeros(n, dtype=torch.bool)
        self.events = torch.zeros(n, dtype=torch.long)

    def update(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        if indices.shape != correct.shape or correct.dtype != torch.bool:
            raise ValueError("indices and correct must have the same shape, correct a bool tensor")
        self.events[indices] += (self.last[indices] & ~correct).long()
        self.last[indices] = correct
        self.learned[indices] |= correct

    def scores(self) -> torch.Tensor:
        never = self.events.max() + 1
        return torch.where(self.learned, self.events, never).float()


def class_mean_distance(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each example's ``features`` (flattened) to the mean of its class: a difficulty proxy
    that costs one pass over the data and no training (``sec-data-select``)."""
    if len(features) != len(labels):
        raise ValueError(f"features and labels must have the same length, got {len(features)}, {len(labels)}")
    flat = features.flatten(1).float()
    classes = int(labels.max()) + 1
    sums = torch.zeros(classes, flat.shape[1]).index_add_(0, labels, flat)
    means = sums / torch.bincount(labels, minlength=classes).clamp(min=1)[:, None]
    return (flat - means[labels]).norm(dim=1)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks from 0, ties sharing their average rank."""
    values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    return (first + (counts - 1) / 2).double()[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two score vectors: Pearson's correlation of their ranks."""
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"a and b must be 1-D of the same length >= 2, got {tuple(a.shape)}, {tuple(b.shape)}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))
