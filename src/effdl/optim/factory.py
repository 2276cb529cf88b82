"""Every optimizer of ``chap-optim`` by name, with its customary settings, so a sweep varies the learning rate
alone (``sec-optim-zoo``)."""

from __future__ import annotations

from collections.abc import Sequence

import schedulefree
import torch
from lion_pytorch import Lion
from torch import nn

from effdl.optim.hybrid import MuonAdamW, split_for_muon

NAMES = ("sgd", "momentum", "nesterov", "adam", "adamw", "lion", "muon", "muon-all", "schedulefree")
LION_DECAY = 10.0  # Lion's learning rate is about 10x smaller than AdamW's: its decay 10x larger keeps lr * wd


def build(name: str, model: nn.Module, lr: float, *, weight_decay: float = 0.0, betas=(0.9, 0.95), warmup: int = 0,
          output_layers: Sequence[nn.Module] = ()) -> torch.optim.Optimizer:  # fmt: skip
    """Optimizer ``name`` (one of :data:`NAMES`) over ``model``'s parameters at learning rate ``lr``.

    ``sgd``: plain; ``momentum`` and ``nesterov``: momentum 0.9 (heavy-ball or Nesterov's); the three with L2
    weight decay; ``adam``: Adam with L2 ``weight_decay`` (coupled);
    ``adamw``: decoupled decay; ``lion``: ``lion-pytorch``, decay x :data:`LION_DECAY`; ``muon``:
    :class:`MuonAdamW`, Muon on the hidden matrices (not embeddings or ``output_layers``); ``muon-all``: Muon on
    every matrix, embeddings included (a pitfall); ``schedulefree``: ``AdamWScheduleFree`` with ``warmup``
    steps of its own warm-up (it needs no schedule, but ``.train()``/``.eval()`` around evaluation).
    """
    if name not in NAMES:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    params = list(model.parameters())
    if name in ("sgd", "momentum", "nesterov"):
        momentum = 0.0 if name == "sgd" else 0.9
        return torch.optim.SGD(params, lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        adam = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return adam(params, lr, betas=betas, weight_decay=weight_decay)
    if name == "lion":
        return Lion(params, lr, betas=(0.9, 0.99), weight_decay=weight_decay * LION_DECAY)
    if name == "schedulefree":
        return schedulefree.AdamWScheduleFree(params, lr, betas=(0.9, betas[1]), weight_decay=weight_decay,
                                              warmup_steps=warmup)  # fmt: skip
    if name == "muon":
        hidden, rest = split_for_muon(model, output_layers)
    else:  # muon-all
        hidden, rest = [p for p in params if p.ndim == 2], [p for p in params if p.ndim != 2]
    return MuonAdamW(hidden, rest, lr=lr, weight_decay=weight_decay, betas=betas)
