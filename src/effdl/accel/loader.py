"""Feeding the model (``sec-hw-loader``): a dataset that does real work per example (decode a PNG, scale,
augment), and a ``DataLoader``'s throughput with worker processes and pinned memory.

With ``num_workers=0`` the training process decodes every example itself, between steps; with workers, separate
processes prepare the next batches meanwhile. Pinned (page-locked) memory lets a GPU copy a batch
asynchronously; on a CPU-only machine it only costs a copy.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset


def encode_png(images: torch.Tensor) -> list[bytes]:
    """Each ``(H, W)`` uint8 image as PNG bytes, as images are stored on disk."""
    if images.dtype != torch.uint8 or images.ndim != 3:
        raise ValueError(f"images must be uint8 of shape (N, H, W), got {images.dtype} {tuple(images.shape)}")
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.numpy()).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


class DecodingDataset(Dataset):
    """``(image, label)`` pairs stored as PNG bytes; ``__getitem__`` decodes one, scales it to ``[0, 1]``,
    normalizes it with ``mean`` and ``std`` and applies ``augment`` (a function of a ``(1, 1, H, W)`` tensor)."""

    def __init__(self, pngs: list[bytes], labels: torch.Tensor, mean: float, std: float,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:  # fmt: skip
        if len(pngs) != len(labels):
            raise ValueError(f"pngs and labels must have equal length, got {len(pngs)} and {len(labels)}")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.pngs, self.labels, self.mean, self.std, self.augment = pngs, labels, mean, std, augment

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = np.asarray(Image.open(io.BytesIO(self.pngs[index])), dtype=np.float32) / 255.0
        x = (torch.from_numpy(pixels)[None, None] - self.mean) / self.std
        if self.augment is not None:
            x = self.augment(x)
        return x[0], self.labels[index]


def loader_throughput(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False,
                      consume: Callable[[torch.Tensor, torch.Tensor], object] | None = None) -> float:  # fmt: skip
    """Examples per second of one pass over ``dataset`` through a ``DataLoader``, worker start-up included, with
    ``consume(x, y)`` (a training step, say) called on every batch if given."""
    if batch_size <= 0 or num_workers < 0:
        raise ValueError(f"batch_size must be positive and num_workers >= 0, got {batch_size}, {num_workers}")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
    start = time.perf_counter()
    for x, y in loader:
        if consume is not None:
            consume(x, y)
    return len(dataset) / (time.perf_counter() - start)
