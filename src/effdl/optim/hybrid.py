"""Muon on a network's hidden 2-D weights, AdamW on everything else, as one optimizer (``sec-optim-zoo``).

``torch.optim.Muon`` accepts matrices only, and Muon is meant for hidden layers: embeddings, the output layer,
norms and biases train with AdamW. :class:`MuonAdamW` holds both and shares their parameter groups, so a
learning-rate scheduler (or anything else that edits ``param_groups``) drives both at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def split_for_muon(model: nn.Module, output_layers: Sequence[nn.Module] = ()) -> tuple[list, list]:
    """``(hidden matrices, the rest)``: the weights of ``model``'s ``nn.Linear`` layers, except those of
    ``output_layers`` and any weight an ``nn.Embedding`` shares (a tied output layer), and every other
    parameter."""
    excluded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    excluded |= {id(p) for layer in output_layers for p in layer.parameters()}
    hidden = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)} - excluded
    params = list(model.parameters())  # each shared (tied) parameter once
    return [p for p in params if id(p) in hidden], [p for p in params if id(p) not in hidden]


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on ``muon_params`` and ``torch.optim.AdamW`` on ``adamw_params``, with one learning
    rate: Muon's update is rescaled to AdamW's size (``adjust_lr_fn="match_rms_adamw"``, Moonshot's rule), so
    the same ``lr`` suits both. Its ``param_groups`` are the two optimizers' own group dicts."""

    def __init__(self, muon_params: Iterable[torch.Tensor], adamw_params: Iterable[torch.Tensor], *, lr: float,
                 weight_decay: float = 0.0, momentum: float = 0.95, betas: tuple[float, float] = (0.9, 0.95),
                 adjust_lr_fn: str = "match_rms_adamw") -> None:  # fmt: skip
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.muon = torch.optim.Muon(list(muon_params), lr=lr, weight_decay=weight_decay, momentum=momentum,
                                     adjust_lr_fn=adjust_lr_fn)  # fmt: skip
        self.adamw = torch.optim.AdamW(list(adamw_params), lr=lr, weight_decay=weight_decay, betas=betas)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        """Both optimizers' states and groups (the moments live in them, not in this wrapper)."""
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load what :meth:`state_dict` saved, and share the two optimizers' (new) groups again."""
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
