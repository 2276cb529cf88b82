"""Three places to turn stored bytes into a training batch (``sec-data-loading``).

Images are often stored as bytes (``uint8``) and trained on as normalized floats. The conversion can run per
example inside a ``Dataset.__getitem__`` (every epoch, once per image, then collated), on a whole batch at once
(every epoch, vectorized), or once before training (then batches are slices of a ready tensor).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset


def normalize_images(raw: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``uint8`` images ``(N, H, W)`` (or one ``(H, W)``) to normalized floats with a channel axis."""
    if raw.dtype != torch.uint8:
        raise ValueError(f"raw must hold uint8 pixels, got {raw.dtype}")
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return raw.float().div(255).sub(mean).div(std).unsqueeze(-3)


class PerExampleImages(Dataset):
    """A map-style data set that converts one stored image per ``__getitem__`` call: the common way, and the
    slowest (``sec-data-loading``)."""

    def __init__(self, raw: torch.Tensor, labels: torch.Tensor, mean: float, std: float) -> None:
        if len(raw) != len(labels):
            raise ValueError(f"raw and labels must have the same length, got {len(raw)}, {len(labels)}")
        self.raw, self.labels, self.mean, self.std = raw, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize_images(self.raw[i], self.mean, self.std), self.labels[i]


def slice_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                  seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Shuffled batches as index slices of tensors already in memory: no per-example call, no collation."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    for idx in order.split(batch_size):
        yield images[idx], labels[idx]
