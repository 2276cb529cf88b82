"""Augmentations of a whole image batch at once, each image with its own random draw (``sec-data-augment``).

Every function maps a batch ``(N, C, H, W)`` to a batch of the same shape and draws from ``torch``'s global
generator (seed it for repeatable runs). torchvision's ``v2`` transforms do the same on single images, and on a
batch tensor they draw *one* set of parameters for the whole batch; these draw one per image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor], torch.Tensor]


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must be a batch (N, C, H, W), got shape {tuple(x.shape)}")


def random_flip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check_batch(x)
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    flip = torch.rand(len(x), device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Pad each image by ``pad`` pixels (replicating its border) and cut a random window of the original size:
    a shift of up to ``pad`` pixels in each direction."""
    _check_batch(x)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = (torch.randint(0, 2 * pad + 1, (n,), device=x.device) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                  rows, cols]  # fmt: skip


def random_erasing(x: torch.Tensor, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.2),
                   value: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Random erasing (Zhong et al., 2020): with probability ``p``, set a random rectangle covering a ``scale``
    fraction of each image's area (aspect ratio between 1/3 and 3) to ``value`` (0 is the mean of normalized
    images)."""
    _check_batch(x)
    if not 0 <= p <= 1 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"p must be in [0, 1] and scale an interval in (0, 1], got {p}, {scale}")
    n, _, h, w = x.shape
    area = torch.empty(n, device=x.device).uniform_(*scale) * h * w
    aspect = torch.exp(torch.empty(n, device=x.device).uniform_(-1.0986, 1.0986))  # log(1/3) .. log(3)
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (torch.rand(n, device=x.device) * (h - eh + 1)).floor()
    left = (torch.rand(n, device=x.device) * (w - ew + 1)).floor()
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inside_y = (ys[None] >= top[:, None]) & (ys[None] < (top + eh)[:, None])
    inside_x = (xs[None] >= left[:, None]) & (xs[None] < (left + ew)[:, None])
    box = inside_y[:, :, None] & inside_x[:, None, :] & (torch.rand(n, device=x.device) < p)[:, None, None]
    return x.masked_fill(box[:, None], value)


def compose(*steps: Augment) -> Augment:
    """One augmentation that applies ``steps`` in order (none: the identity)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return apply
