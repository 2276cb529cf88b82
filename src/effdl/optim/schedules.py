"""Learning-rate schedules, stepped once per batch (``sec-optim-schedules``).

Each is a factor of the peak learning rate per step: ``constant`` (after a linear warm-up), warm-up then
``cosine`` decay to zero, ``onecycle`` (``torch.optim.lr_scheduler.OneCycleLR``: a long warm-up from a
25th of the peak, then cosine annealing, the momentum cycling the other way where the optimizer has one),
and ``wsd``, warmup-stable-decay: constant until the last ``decay_fraction`` of the steps, then a linear
decay to zero, so any checkpoint of the stable phase can be decayed into a finished model at the cost of a
short decay.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "cosine", "onecycle", "wsd")


def _check(steps: int, warmup: int, decay_fraction: float) -> None:
    if steps <= 0 or not 0 <= warmup < steps:
        raise ValueError(f"steps must be > 0 and warmup in [0, steps), got {steps}, {warmup}")
    if not 0 < decay_fraction <= 1:
        raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")


def factor(name: str, step: int, steps: int, warmup: int, decay_fraction: float = 0.2) -> float:
    """The lambda of schedule ``name`` (not ``onecycle``): the factor of the peak learning rate that step
    ``step`` (0-based) trains with."""
    if name not in ("constant", "cosine", "wsd"):
        raise ValueError(f"name must be one of {SCHEDULES[:2] + SCHEDULES[3:]}, got {name!r}")
    if step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
    decay_steps = max(1, round(decay_fraction * steps))
    return min(1.0, (steps - step) / decay_steps)


def scheduler(name: str, optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0,
              decay_fraction: float = 0.2) -> torch.optim.lr_scheduler.LRScheduler:  # fmt: skip
    """Schedule ``name`` (one of :data:`SCHEDULES`) for ``steps`` optimizer steps with ``warmup`` warm-up steps;
    the optimizer's current learning rates are the peaks."""
    if name not in SCHEDULES:
        raise ValueError(f"name must be one of {SCHEDULES}, got {name!r}")
    _check(steps, warmup, decay_fraction)
    if name == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        # cycle the momentum where there is one: not plain SGD's (momentum 0), nor MuonAdamW's (two kinds)
        cycle = optimizer.defaults.get("momentum", 0) > 0 or "betas" in optimizer.defaults
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=steps,
                                                   cycle_momentum=cycle)  # fmt: skip
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(name, step, steps, warmup,
                                                                             decay_fraction))  # fmt: skip


def lr_factors(name: str, steps: int, warmup: int = 0, decay_fraction: float = 0.2) -> list[float]:
    """The factor of the peak learning rate at every step of schedule ``name``, read off the scheduler
    itself (on a throwaway AdamW, as one-cycle also cycles its momentum)."""
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = scheduler(name, opt, steps, warmup, decay_fraction)
    factors = []
    for _ in range(steps):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return factors
