"""Run-wide settings: the fast/full switch, the device, seeds and the cache folder.

Every experiment in the book is sized through :func:`pick`, so one environment variable,
``EFFDL_FAST=1``, shrinks the whole book for tests and CI (see *Setup* in the book).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _read_fast_flag() -> bool:
    raw = os.environ.get("EFFDL_FAST", "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"EFFDL_FAST must be one of {sorted(_TRUE | _FALSE - {''})}, got {raw!r}")


FAST: bool = _read_fast_flag()
"""True when ``EFFDL_FAST`` is set: every experiment runs at its small, test-sized scale."""


def pick(*, fast: T, full: T, gpu: T | None = None) -> T:
    """Choose an experiment size: ``fast`` under ``EFFDL_FAST=1``, else ``full``.

    ``gpu`` (optional) is used instead of ``full`` when a CUDA device is present, so a notebook
    scales up on a GPU with no code change. The values must share a type; ``None`` may stand for
    "no limit" in any of them.

    >>> epochs = pick(fast=1, full=8)
    """
    values = {"fast": fast, "full": full} | ({} if gpu is None else {"gpu": gpu})
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"pick: {name} must be >= 0, got {value}")
    kinds = {type(v) for v in values.values()} - {type(None)}
    if len(kinds) > 1 and not kinds <= {int, float}:
        names = sorted(k.__name__ for k in kinds)
        raise ValueError(f"pick: fast/full/gpu must share a type (or be None), got {names}")
    if FAST:
        return fast
    if gpu is not None and torch.cuda.is_available():
        return gpu
    return full


def device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so fast-mode numbers repeat on one machine."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir(*parts: str) -> Path:
    """A folder for trained baselines and converted models, created if missing.

    ``EFFDL_CACHE`` overrides the default ``~/.cache/effdl`` (or ``$XDG_CACHE_HOME/effdl``).
    """
    root = os.environ.get("EFFDL_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "effdl"
    for part in parts:
        if not part or Path(part).is_absolute() or ".." in Path(part).parts:
            raise ValueError(f"cache_dir: each part must be a plain relative name, got {part!r}")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def mode() -> str:
    """``"fast"`` or ``"full"``: printed by every notebook's setup cell."""
    return "fast" if FAST else "full"
