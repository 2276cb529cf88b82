"""A training loop counted in optimizer steps that records a validation curve (``sec-optim-gpt``).

The book's :func:`effdl.train.fit` validates once per epoch; comparing optimizers needs the whole curve, to
read off the step at which each reaches a target. :func:`train_steps` evaluates every ``eval_every`` steps,
switches a schedule-free optimizer between its training and evaluation points (``.train()``/``.eval()``), and
stops early when the loss is no longer finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from effdl.train import backward_and_step, token_cross_entropy


@dataclass
class Curve:
    """What :func:`train_steps` recorded: the evaluated steps and each metric there, the learning rate (of the
    first parameter group) at every step, and whether it diverged."""

    steps: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=list)
    diverged: bool = False

    def __getitem__(self, metric: str) -> list[float]:
        return self.metrics[metric]

    def final(self, metric: str = "loss") -> float:
        return self.metrics[metric][-1]


def _switch(optimizer: torch.optim.Optimizer, mode: str, enabled: bool) -> None:
    """Call a schedule-free optimizer's ``train()`` or ``eval()``; other optimizers have neither."""
    if enabled and callable(getattr(optimizer, mode, None)):
        getattr(optimizer, mode)()


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable, steps: int,
                evaluate: Callable[[nn.Module], dict[str, float]], *, eval_every: int,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, scheduler_every: int = 1,
                loss: Callable = token_cross_entropy, grad_clip: float | None = None,
                switch_modes: bool = True) -> Curve:  # fmt: skip
    """Train ``model`` in place for ``steps`` batches of ``batches`` (cycled if shorter) and return its
    :class:`Curve`, with ``evaluate(model)`` run at step 0, every ``eval_every`` steps and at the end.

    ``scheduler`` is stepped every ``scheduler_every`` optimizer steps: 1 is per batch, what every schedule of
    ``sec-optim-schedules`` is built for; the number of batches per epoch is a common mistake
    (``sec-optim-pitfalls``), as is ``switch_modes=False`` with a schedule-free optimizer.
    """
    if steps <= 0 or eval_every <= 0 or scheduler_every <= 0:
        raise ValueError(f"steps, eval_every and scheduler_every must be > 0, got {steps}, {eval_every}, "
                         f"{scheduler_every}")  # fmt: skip
    curve = Curve()

    def record(step: int) -> None:
        _switch(optimizer, "eval", switch_modes)
        model.eval()
        with torch.no_grad():
            for name, value in evaluate(model).items():
                curve.metrics.setdefault(name, []).append(value)
        curve.steps.append(step)

    record(0)
    source, step = iter(batches), 0
    while step < steps:
        model.train()
        _switch(optimizer, "train", switch_modes)
        for _ in range(min(eval_every, steps - step)):
            try:
                x, y = next(source)
            except StopIteration:
                source = iter(batches)
                x, y = next(source)
            curve.lrs.append(optimizer.param_groups[0]["lr"])
            batch_loss = loss(model(x), y)
            backward_and_step(model, optimizer, batch_loss, grad_clip)
            step += 1
            if scheduler is not None and step % scheduler_every == 0:
                scheduler.step()
            if not math.isfinite(batch_loss.item()):
                curve.diverged = True
                break
        record(step)
        if curve.diverged:
            break
    return curve


def steps_to_target(steps: list[int], values: list[float], target: float, higher_is_better: bool = False) -> float:
    """The first step at which ``values`` (measured at ``steps``) reach ``target``, linearly interpolated
    between the two evaluations around the crossing; ``inf`` if they never do."""
    if len(steps) != len(values) or not steps:
        raise ValueError(f"steps and values must be non-empty and of equal length, got {len(steps)}, {len(values)}")
    sign = -1.0 if higher_is_better else 1.0
    gaps = [sign * (v - target) for v in values]  # <= 0 once the target is reached
    for i, gap in enumerate(gaps):
        if gap <= 0:
            if i == 0:
                return float(steps[0])
            before = gaps[i - 1]
            return steps[i - 1] + (steps[i] - steps[i - 1]) * before / (before - gap)
    return math.inf
