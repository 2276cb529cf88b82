"""Data and evaluation that several chapters share: Fashion-MNIST test/validation accuracy, calibration
images, the held-out Shakespeare windows every language-model chapter measures on, and :func:`on_cpu` for the
steps that have CPU kernels only."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from effdl import data, lm, models, train, zoo
from effdl.bench import flops, model_device
from effdl.config import pick

LM_NAMES = ("gpt-shakespeare", "smollm2")

Result = TypeVar("Result")


def cache_runs(run: Callable[..., Result]) -> Callable[..., Result]:
    """:func:`functools.cache` keyed by every argument with its defaults filled in, so ``run(a)`` and
    ``run(a, default)`` are one training run, not two (``functools.cache`` alone keys them apart)."""
    signature = inspect.signature(run)
    cached = functools.cache(run)

    @functools.wraps(run)
    def call(*args, **kwargs) -> Result:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return cached(*bound.args)

    return call


def on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself if it is on the CPU, else a CPU copy of it: for the steps that run on the CPU only
    (the int8 engines, compiled x86 int8 graphs, CPU weight-only kernels) and for timings against them, so
    that both sides of a comparison run on the same device. The original stays where it was."""
    return model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()


@functools.cache
def fmnist_batches(split: str = "test") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fashion-MNIST ``split`` in batches of 1,000: all of it in full mode, the first 1,000 images in fast
    mode (every chapter's fast accuracy). ``val`` is for choices, ``test`` for reporting only."""
    return list(data.loader(data.fashion_mnist(split, limit=pick(fast=1000, full=None)), 1000))


def fmnist_accuracy(model: nn.Module, split: str = "test") -> float:
    """The book's accuracy (a fraction) of an image classifier on :func:`fmnist_batches` of ``split``."""
    return train.accuracy(model, fmnist_batches(split))


def fmnist_macs(model: nn.Module) -> int:
    """Multiply-accumulates of one forward pass of an image classifier on one 28x28 image (half the FLOPs
    ``flop_counter`` counts), on the model's device."""
    return flops(model, torch.zeros(1, 1, 28, 28)) // 2


def fmnist_correct(model: nn.Module, split: str = "test") -> torch.Tensor:
    """Per-image correctness on :func:`fmnist_batches` of ``split``, for McNemar's test."""
    return train.correct(model, fmnist_batches(split))


def n_test_images() -> int:
    """How many test images :func:`fmnist_accuracy` measures on (10,000 full, 1,000 fast)."""
    return sum(len(y) for _, y in fmnist_batches("test"))


def score_batches(images: int | None = None, batch_size: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Labelled train-split batches for gradient-based pruning scores (Taylor, OBD) and BatchNorm
    re-estimation: 512 images fast, 4,096 full, in a fixed shuffled order."""
    subset = data.fashion_mnist("train", limit=images or pick(fast=512, full=4096))
    return list(data.loader(subset, batch_size, shuffle=True, seed=1))


def calibration_images(images: int | None = None, batch_size: int = 256) -> list[torch.Tensor]:
    """Unlabelled Fashion-MNIST images from the *train* split for calibration: 512 fast, 2,048 full.
    The test split is never used to choose anything."""
    subset = data.fashion_mnist("train", limit=images or pick(fast=512, full=2048))
    return [x for x, _ in data.loader(subset, batch_size, shuffle=True)]


def speed_word(ratio: float, margin: float = 0.1) -> str:
    """``faster``, ``slower`` or ``about as fast`` for a speed-up ``ratio`` (within ``margin`` of 1: about as fast)."""
    return "faster" if ratio > 1 + margin else "slower" if ratio < 1 - margin else "about as fast"


def speed_comparison(ratio: float, margin: float = 0.1) -> str:
    """:func:`speed_word` before a noun: ``faster than``, ``slower than`` or ``about as fast as``."""
    word = speed_word(ratio, margin)
    return "about as fast as" if word == "about as fast" else f"{word} than"


def smollm2_windows(tokenizer, split: str, seq_len: int, n_windows: int, batch_size: int = 8) -> list[lm.Batch]:
    """Shakespeare ``split`` in SmolLM2 tokens, cut into :func:`effdl.lm.token_windows`."""
    text = data.shakespeare().text(split)
    ids = torch.tensor(tokenizer(text[: 6 * seq_len * (n_windows + 1)])["input_ids"])
    return lm.token_windows(ids, seq_len, n_windows, batch_size)


def lm_suite(name: str) -> tuple[nn.Module, list[lm.Batch], list[lm.Batch]]:
    """``(model, held-out test windows, calibration windows)`` for ``gpt-shakespeare`` or ``smollm2``:
    test windows from the test split, calibration windows from the train split (fast mode: fewer and
    shorter; two test windows for SmolLM2, whose every scored variant costs a forward pass over them; in full
    mode its 16 calibration windows hold 8,192 tokens, over five times the widest layer's inputs, and keep
    sequential GPTQ to about a minute per format on a 2-core CPU)."""
    if name == "gpt-shakespeare":
        model, corpus = zoo.pretrained(name).model.eval(), data.shakespeare()
        context = model.cfg.context
        test = lm.token_windows(corpus.split("test"), context, pick(fast=32, full=512), batch_size=32)
        return model, test, lm.token_windows(corpus.split("train"), context, pick(fast=32, full=256), batch_size=32)
    if name == "smollm2":
        model, tokenizer = models.smollm2()
        length = pick(fast=128, full=512)
        test = smollm2_windows(tokenizer, "test", length, pick(fast=2, full=16), batch_size=4)
        return model, test, smollm2_windows(tokenizer, "train", length, pick(fast=8, full=16), batch_size=4)
    raise ValueError(f"name must be one of {LM_NAMES}, got {name!r}")
