"""Smith's learning-rate range test: one short run with the learning rate growing exponentially, loss against
learning rate (``sec-optim-range-test``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from effdl.train import backward_and_step, token_cross_entropy


@dataclass(frozen=True)
class RangeTest:
    """The learning rates tried, one per step, and the training loss at each (exponentially smoothed)."""

    lrs: list[float]
    losses: list[float]

    @property
    def minimum(self) -> float:
        """The learning rate of the lowest smoothed loss."""
        return self.lrs[min(range(len(self.losses)), key=self.losses.__getitem__)]

    @property
    def suggested(self) -> float:
        """Smith's rule of thumb: a tenth of :attr:`minimum`, safely below where the loss turns up."""
        return self.minimum / 10


def lr_range_test(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable, *, lr_min: float = 1e-6,
                  lr_max: float = 1.0, steps: int = 100, loss: Callable = token_cross_entropy, smoothing: float = 0.9,
                  stop_factor: float = 4.0) -> RangeTest:  # fmt: skip
    """Train ``model`` (in place: pass a throwaway copy) for up to ``steps`` batches of ``batches`` (cycled if
    shorter) with the learning rate rising geometrically from ``lr_min`` to ``lr_max``; stop once the smoothed
    loss exceeds ``stop_factor`` times its best (the run has diverged)."""
    if not 0 < lr_min < lr_max or steps < 2 or not 0 <= smoothing < 1:
        raise ValueError(f"need 0 < lr_min < lr_max, steps >= 2 and smoothing in [0, 1), got {lr_min}, {lr_max}, "
                         f"{steps}, {smoothing}")  # fmt: skip
    growth = (lr_max / lr_min) ** (1 / (steps - 1))
    lrs, losses, smoothed, source = [], [], 0.0, iter(batches)
    model.train()
    for step in range(steps):
        lr = lr_min * growth**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            x, y = next(source)
        except StopIteration:  # cycle batches shorter than the test
            source = iter(batches)
            x, y = next(source)
        batch_loss = loss(model(x), y)
        backward_and_step(model, optimizer, batch_loss)
        value = batch_loss.item()
        smoothed = smoothing * smoothed + (1 - smoothing) * value
        lrs.append(lr)
        losses.append(smoothed / (1 - smoothing ** (step + 1)))  # bias-corrected, as Adam's moments
        if not math.isfinite(value) or losses[-1] > stop_factor * min(losses):
            break
    return RangeTest(lrs, losses)
