"""One training loop for every model in the book (images and text alike).

Batches are ``(x, y)`` pairs; the default loss is cross-entropy over the last dimension of the
logits, so a classifier's ``(batch, classes)`` and a language model's ``(batch, time, vocab)``
outputs share :func:`token_cross_entropy`; :func:`fit` takes any other ``loss(outputs, y)`` (a
distillation loss, say, with ``y`` carrying the teacher's logits). Schedulers are stepped once per
batch. :func:`accuracy` is the one accuracy of the book: a fraction, over the batches it is given.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from effdl import data
from effdl.config import device as default_device

Batch = tuple[torch.Tensor, Any]
Loss = Callable[[torch.Tensor, Any], torch.Tensor]


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position: ``(..., C)`` logits against ``(...)`` targets."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten())


@dataclass
class History:
    """Per-epoch training record returned by :func:`fit`."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _autocast(dev: torch.device, dtype: torch.dtype | None):
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else nullcontext()


def _to(batch_part: Any, dev: torch.device) -> Any:
    """A tensor, or a tuple/dict of tensors (targets that carry a teacher's logits), moved to ``dev``."""
    return tree_map(lambda t: t.to(dev, non_blocking=True) if isinstance(t, torch.Tensor) else t, batch_part)


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Batch], device: torch.device | None = None,
    autocast: torch.dtype | None = None,
) -> dict[str, float]:  # fmt: skip
    """Mean loss (nats per target) and accuracy (fraction of correct argmax) over ``batches``."""
    dev = device or next(model.parameters(), torch.empty(0)).device  # a converted int8 model has no parameters
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(dev), y.to(dev)
        with _autocast(dev, autocast):
            logits = model(x)
        loss_sum += token_cross_entropy(logits, y).item() * y.numel()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("batches must not be empty")
    return {"loss": loss_sum / count, "accuracy": correct / count}


@torch.no_grad()
def correct(model: nn.Module, batches: Iterable[Batch], device: torch.device | None = None) -> torch.Tensor:
    """Per-example correctness (a bool tensor, in batch order) of the argmax of ``model`` on ``batches``.

    What McNemar's test (:func:`effdl.stats.mcnemar`) compares for two models on one test set.
    """
    dev = device or next(model.parameters(), torch.empty(0)).device  # a converted int8 model has no parameters
    was_training = model.training
    model.eval()
    hits = [(model(x.to(dev)).argmax(-1) == y.to(dev)).flatten().cpu() for x, y in batches]
    model.train(was_training)
    if not hits:
        raise ValueError("batches must not be empty")
    return torch.cat(hits)


def accuracy(model: nn.Module, batches: Iterable[Batch], device: torch.device | None = None) -> float:
    """Fraction of examples whose argmax prediction is the label: the book's one accuracy."""
    hits = correct(model, batches, device)
    return hits.sum().item() / hits.numel()


def backward_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch_loss: torch.Tensor,
                      grad_clip: float | None = None) -> None:  # fmt: skip
    """The end of every training step: clear the old gradients, backpropagate ``batch_loss``, clip the gradients'
    total norm to ``grad_clip`` if given, and step ``optimizer``."""
    optimizer.zero_grad(set_to_none=True)
    batch_loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def fit(
    model: nn.Module,
    train: Iterable[Batch],
    *,
    epochs: int = 1,
    loss: Loss = token_cross_entropy,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    val: Iterable[Batch] | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast: torch.dtype | None = None,
    grad_clip: float | None = None,
    device: torch.device | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` in place for ``epochs`` passes over ``train`` and return its history.

    ``loss(outputs, y)`` defaults to :func:`token_cross_entropy`; ``y`` is whatever the batch
    carries (a tensor, or a tuple or dict of tensors), moved to the device.
    ``optimizer`` defaults to AdamW (lr 1e-3); ``scheduler`` is stepped after every batch;
    ``augment`` transforms each input batch on the device; ``autocast`` (e.g. ``torch.bfloat16``)
    runs the forward pass in mixed precision; ``val`` is evaluated after every epoch.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if grad_clip is not None and grad_clip <= 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip}")
    dev = device or default_device()
    model.to(dev)
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-3)
    history, start = History(), time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total, steps = 0.0, 0
        bar = tqdm(train, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress, mininterval=2)
        for x, y in bar:
            x, y = x.to(dev, non_blocking=True), _to(y, dev)
            if augment is not None:
                x = augment(x)
            with _autocast(dev, autocast):
                batch_loss = loss(model(x), y)
            backward_and_step(model, optimizer, batch_loss, grad_clip)
            if scheduler is not None:
                scheduler.step()
            total, steps = total + batch_loss.item(), steps + 1
            bar.set_postfix(loss=f"{total / steps:.3f}", refresh=False)
        history.train_loss.append(total / max(steps, 1))
        if val is not None:
            metrics = evaluate(model, val, dev, autocast)
            history.val_loss.append(metrics["loss"])
            history.val_accuracy.append(metrics["accuracy"])
    history.seconds = time.perf_counter() - start
    return history


def finetune(model: nn.Module, epochs: int, lr: float = 0.01, train_limit: int | None = None,
             grad_clip: float | None = 1.0, progress: bool = False,
             device: torch.device | None = None) -> nn.Module:  # fmt: skip
    """Fine-tune an image classifier on the Fashion-MNIST train split: SGD with Nesterov momentum, cosine
    decay, flips; used after quantization (``sec-quant-cnn-qat``) and after pruning
    (``sec-prune-unstructured-iterative``, ``sec-prune-structured-headline``). The model trains on ``device``
    (default :func:`effdl.device`) and stays there.

    Gradients are clipped: a network whose BatchNorms were folded away (``chap-quant-cnn``) diverges easily.
    """
    loader = data.loader(data.fashion_mnist("train", limit=train_limit), 128, shuffle=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    fit(model, loader, epochs=epochs, optimizer=opt, scheduler=sched,
        augment=functools.partial(data.augment_fmnist, shift=0), grad_clip=grad_clip, progress=progress,
        device=device)  # fmt: skip
    return model.eval()
