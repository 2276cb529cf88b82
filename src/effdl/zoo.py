"""Trained baselines, trained once and cached, shared by every notebook and test.

``pretrained(name)`` looks for a checkpoint whose key is a hash of the full recipe (model
shape, training settings and the fast/full mode); if it is missing it trains the model with
:func:`effdl.train.fit` and saves the weights as safetensors plus a JSON card with the recipe
and the measured metrics. Nothing is ever unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from effdl import data
from effdl.config import FAST, cache_dir, device, pick, seed_everything
from effdl.models import CNN, GPT, MLP, GPTConfig, ResNet
from effdl.train import Loss, evaluate, fit, token_cross_entropy


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a baseline: its architecture and how it is trained."""

    name: str
    task: str  # "fmnist" or "shakespeare"
    arch: dict[str, Any]
    train: dict[str, Any]

    def key(self) -> str:
        spec = {"task": self.task, "arch": self.arch, "train": self.train, "fast": FAST}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _image_training(epochs: int, shift: int) -> dict[str, Any]:
    """SGD with Nesterov momentum under a one-cycle schedule; flips plus ``shift``-pixel shifts."""
    return {
        "epochs": pick(fast=2, full=epochs),
        "train_limit": pick(fast=16000, full=None),
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "shift": shift,
        "seed": 0,
    }


def _gpt_recipe() -> Recipe:
    cfg = GPTConfig(vocab_size=data.shakespeare().tokenizer.vocab_size, context=pick(fast=64, full=128),
                    n_layer=pick(fast=2, full=4), n_embd=pick(fast=64, full=192))  # fmt: skip
    training = {"steps": pick(fast=300, full=2000), "batch_size": 32, "lr": 2e-3,
                "weight_decay": 0.1, "warmup": pick(fast=15, full=100), "seed": 0}  # fmt: skip
    return Recipe("gpt-shakespeare", "shakespeare", {"kind": "gpt", **cfg.to_dict()}, training)


_RECIPES = {
    "cnn-fmnist": lambda: Recipe("cnn-fmnist", "fmnist", {"kind": "cnn", "width": 32, "depth": 2},
                                 _image_training(epochs=10, shift=1)),  # fmt: skip
    "resnet-fmnist": lambda: Recipe("resnet-fmnist", "fmnist",
                                    {"kind": "resnet", "widths": [16, 32, 64], "blocks": [1, 1, 1]},
                                    _image_training(epochs=10, shift=0)),  # fmt: skip
    "gpt-shakespeare": _gpt_recipe,
    "lenet-fmnist": lambda: Recipe("lenet-fmnist", "fmnist", {"kind": "mlp", "hidden": [300, 100]},
                                   _image_training(epochs=10, shift=0)),  # fmt: skip
}
NAMES = ("cnn-fmnist", "resnet-fmnist", "gpt-shakespeare")  # the baselines every chapter starts from
MODEL_NAMES = tuple(_RECIPES)  # and LeNet-300-100, Deep Compression's first case (``chap-combine``)


# architecture fields a recipe leaves out unless they are overridden (so existing recipes keep their keys)
_OPTIONAL_ARCH = {"gpt": ("n_kv_head",), "cnn": ("separable", "resolution")}


def recipe(name: str, **overrides: Any) -> Recipe:
    """The recipe of baseline ``name``; ``overrides`` replace architecture or training fields, or set an
    optional architecture field (the GPT's ``n_kv_head``, the CNN's ``separable`` and ``resolution``).

    >>> recipe("cnn-fmnist", width=8, depth=1).arch
    {'kind': 'cnn', 'width': 8, 'depth': 1}
    """
    if name not in _RECIPES:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    base = _RECIPES[name]()
    arch, train = dict(base.arch), dict(base.train)
    optional = _OPTIONAL_ARCH.get(arch["kind"], ())
    for field, value in overrides.items():
        if (field in arch or field in optional) and field != "kind":
            arch[field] = value
        elif field in train:
            train[field] = value
        else:
            fields = sorted({*arch, *train, *optional} - {"kind"})
            raise ValueError(f"override {field!r} is not a field of {name}: {fields}")
    return replace(base, arch=arch, train=train)


def build(arch: dict[str, Any]) -> nn.Module:
    """An untrained model from an architecture dict of a :class:`Recipe`."""
    fields = {k: v for k, v in arch.items() if k != "kind"}
    builders = {
        "cnn": lambda: CNN(**fields),
        "resnet": lambda: ResNet(tuple(fields["widths"]), tuple(fields["blocks"])),
        "gpt": lambda: GPT(GPTConfig(**fields)),
        "mlp": lambda: MLP(tuple(fields["hidden"])),
    }
    if arch.get("kind") not in builders:
        raise ValueError(f"arch kind must be one of {tuple(builders)}, got {arch.get('kind')!r}")
    return builders[arch["kind"]]()


@dataclass
class Baseline:
    """A trained model with the recipe that made it and the metrics measured after training."""

    model: nn.Module
    recipe: Recipe
    metrics: dict[str, float]


def train_fmnist(model: nn.Module, cfg: dict[str, Any]) -> dict[str, float]:
    """Train an image classifier with a recipe's ``train`` settings (also used by the lottery ticket of
    ``chap-prune-unstructured``); validation and test accuracy on the whole splits, on their first 1,000
    images in fast mode (as every fast-mode accuracy of the book)."""
    train_set = data.fashion_mnist("train", limit=cfg["train_limit"])
    train_loader = data.loader(train_set, cfg["batch_size"], shuffle=True, seed=cfg["seed"])
    eval_limit = pick(fast=1000, full=None)
    val_loader = data.loader(data.fashion_mnist("val", limit=eval_limit), 1000)
    model.to(memory_format=torch.channels_last)  # faster convolutions on CPU (``chap-measuring``)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], nesterov=True,
                          weight_decay=cfg["weight_decay"])  # fmt: skip
    steps = cfg["epochs"] * len(train_loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=steps)
    augment = functools.partial(data.augment_fmnist, shift=cfg["shift"])
    history = fit(model, train_loader, epochs=cfg["epochs"], optimizer=opt, scheduler=sched,
                  val=val_loader, augment=augment)  # fmt: skip
    test = evaluate(model, data.loader(data.fashion_mnist("test", limit=eval_limit), 1000))
    return {"val_accuracy": history.val_accuracy[-1], "test_accuracy": test["accuracy"],
            "train_seconds": history.seconds}  # fmt: skip


def _warmup_cosine(opt: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warmup, total_iters=warmup)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warmup, eta_min=opt.defaults["lr"] / 10)
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])


def gpt_eval_batches(split: str = "val", context: int = 128, batch_size: int = 32) -> data.LMBatches:
    """Fixed, non-overlapping windows of a Shakespeare split: 10 batches in fast mode, all of it in full."""
    tokens = data.shakespeare().split(split)
    return data.LMBatches(tokens, batch_size, context, steps=pick(fast=10, full=10**9), random=False)


def train_gpt(model: GPT, cfg: dict[str, Any], *, tokens: torch.Tensor | None = None,
              loss: Loss = token_cross_entropy, wrap: Callable[[Iterable], Iterable] | None = None,
              validate: bool = True) -> dict[str, float]:  # fmt: skip
    """Train the book's GPT with a recipe's ``train`` settings: AdamW, linear warmup then cosine decay, gradients
    clipped, ``steps`` batches of random windows of the Shakespeare train split (or of ``tokens``) in five passes,
    validated on the val split after each pass unless ``validate=False``. ``loss`` and ``wrap`` (a function of the
    batches, which may add a teacher's logits to them) are how ``sec-distill-lm-kd`` trains a student."""
    epochs = 5  # the step budget in five passes, so the history has five validation points
    stream = data.shakespeare().split("train") if tokens is None else tokens
    batches = data.LMBatches(stream, cfg["batch_size"], model.cfg.context, steps=cfg["steps"] // epochs,
                             seed=cfg["seed"])  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=(0.9, 0.95))
    sched = _warmup_cosine(opt, cfg["warmup"], epochs * len(batches))
    val = gpt_eval_batches("val", model.cfg.context) if validate else None
    history = fit(model, batches if wrap is None else wrap(batches), epochs=epochs, loss=loss, optimizer=opt,
                  scheduler=sched, val=val, grad_clip=1.0)  # fmt: skip
    metrics = {"val_loss": history.val_loss[-1]} if validate else {}
    return metrics | {"train_seconds": history.seconds}


def _paths(rec: Recipe):
    folder = cache_dir("zoo")
    stem = f"{rec.name}-{rec.key()}"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def pretrained(name: str, *, retrain: bool = False, **overrides: Any) -> Baseline:
    """Baseline ``name`` (one of :data:`MODEL_NAMES`), trained.

    Loads the cached checkpoint for this exact recipe, or trains it once (on
    :func:`effdl.device`) and caches it. ``overrides`` change recipe fields, e.g.
    ``pretrained("cnn-fmnist", width=8)``; each distinct recipe is cached separately.
    """
    rec = recipe(name, **overrides)
    weights, card = _paths(rec)
    seed_everything(rec.train["seed"])  # the same initial weights on every run
    model = build(rec.arch)
    if weights.exists() and card.exists() and not retrain:
        load_model(model, weights, device="cpu")
        metrics = json.loads(card.read_text())["metrics"]
    else:
        trainer = train_fmnist if rec.task == "fmnist" else train_gpt
        metrics = trainer(model, rec.train)
        model.to("cpu", memory_format=torch.contiguous_format)
        metrics["device"] = str(device())
        save_model(model, str(weights))
        card.write_text(json.dumps({"recipe": rec.__dict__, "key": rec.key(), "metrics": metrics}, indent=2))
    return Baseline(model.eval(), rec, metrics)


def example_input(name: str, batch: int = 1) -> torch.Tensor:
    """A random batch shaped for baseline ``name``: images, or token windows for the GPT."""
    arch = recipe(name).arch
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    if arch["kind"] == "gpt":
        return torch.randint(0, arch["vocab_size"], (batch, arch["context"]))
    return torch.randn(batch, 1, 28, 28)
