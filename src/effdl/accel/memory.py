"""Activation checkpointing (``sec-hw-checkpoint``): keep only a block's input in the forward pass and recompute
its inside during the backward pass, trading about one more forward pass for the block's activations
(Chen et al., 2016).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Checkpointed(nn.Module):
    """``module`` whose forward activations are recomputed in backward (``use_reentrant=False``: the
    implementation PyTorch recommends, which works with inputs that need no gradient and with ``torch.compile``).
    Without gradients (evaluation) it is the plain module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any) -> Any:
        if not torch.is_grad_enabled():
            return self.module(*args)
        return checkpoint(self.module, *args, use_reentrant=False)


def checkpoint_blocks(blocks: nn.Sequential, count: int) -> nn.Sequential:
    """A new ``nn.Sequential`` of the same block modules (shared, not copied) with the first ``count`` wrapped in
    :class:`Checkpointed`."""
    if not isinstance(blocks, nn.Sequential):
        raise ValueError(f"blocks must be an nn.Sequential, got {type(blocks).__name__}")
    if not 0 <= count <= len(blocks):
        raise ValueError(f"count must be in [0, {len(blocks)}], got {count}")
    plain = [b.module if isinstance(b, Checkpointed) else b for b in blocks]
    return nn.Sequential(*[Checkpointed(b) if i < count else b for i, b in enumerate(plain)])
