"""Chapter 5's experiments (``notebooks/05_prune_unstructured.ipynb``): one-shot and iterative pruning of
the Fashion-MNIST baselines, sensitivity, and the lottery ticket."""

from __future__ import annotations

import copy

import torch
from torch import nn

from effdl import claims, data, train, zoo
from effdl.config import pick, seed_everything
from effdl.experiments._shared import fmnist_accuracy
from effdl.prune import recipes
from effdl.prune.masks import MaskKeeper, global_masks, magnitude_scores, polynomial_sparsity, sparsity

NOTEBOOK = "05_prune_unstructured"


def score_batches(images: int | None = None, batch_size: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Train-split batches for gradient-based scores (Taylor, OBD) and BN re-estimation: 512 images fast, 4,096 full."""
    subset = data.fashion_mnist("train", limit=images or pick(fast=512, full=4096))
    return list(data.loader(subset, batch_size, shuffle=True, seed=1))


def finetuner(epochs: int, lr: float = 0.01, train_limit: int | None = None) -> recipes.Finetune:
    """The chapter's fine-tuning, ``epochs`` of :func:`effdl.train.finetune`, as a ``finetune(model)`` function."""
    return lambda model: train.finetune(model, epochs, lr=lr, train_limit=train_limit)


def iterative_vs_oneshot(model: nn.Module, final: float = 0.9, rounds: int | None = None, lr: float = 0.05,
                         train_limit: int | None = None) -> dict[str, nn.Module]:  # fmt: skip
    """``sec-prune-unstructured-iterative``'s comparison at one budget: ``rounds`` epochs of fine-tuning either
    after one prune to ``final``, or spread over ``rounds`` prune/fine-tune steps along the cubic schedule."""
    rounds = rounds or pick(fast=2, full=6)
    schedule = [polynomial_sparsity(k, rounds, final) for k in range(1, rounds + 1)]
    limit = train_limit or pick(fast=2000, full=None)
    return {
        "one-shot": recipes.prune_finetune(copy.deepcopy(model), [final], finetuner(rounds, lr, limit)),
        "iterative": recipes.prune_finetune(copy.deepcopy(model), schedule, finetuner(1, lr, limit)),
    }


def lottery_ticket(name: str, sparsity: float, epochs: int) -> dict[str, float]:
    """Frankle & Carbin's experiment (``sec-prune-unstructured-ticket``) on baseline ``name`` trained for ``epochs``.

    The mask is global magnitude pruning of the trained dense model; the *winning ticket* trains the
    surviving weights from their original initial values, the *control* the same mask from a new
    random initialization, both with the dense model's own recipe. Returns test accuracies.
    """
    dense = zoo.pretrained(name, epochs=epochs)
    masks = global_masks(magnitude_scores(dense.model), sparsity)
    result = {"dense": fmnist_accuracy(dense.model), "sparsity": sparsity}
    for label, seed in (("ticket", dense.recipe.train["seed"]), ("random reinit", dense.recipe.train["seed"] + 1)):
        seed_everything(seed)  # the dense run's own starting point for the ticket, a fresh draw for the control
        initial = zoo.build(dense.recipe.arch).state_dict()
        model = recipes.rewind_(zoo.build(dense.recipe.arch), initial, masks)
        seed_everything(dense.recipe.train["seed"])  # the same data order for both
        with MaskKeeper(model, masks):
            zoo.train_fmnist(model, dense.recipe.train)
        result[label] = fmnist_accuracy(model.cpu().to(memory_format=torch.contiguous_format))
    return result


def _iterative_rows(group: str, name: str) -> None:
    model = zoo.pretrained(name).model.eval().cpu()
    dense = fmnist_accuracy(model)
    pruned = iterative_vs_oneshot(model, final=0.9)
    claims.measure(f"{group} dense test accuracy", 100 * dense, "%")
    claims.measure(f"{group} iterative global sparsity", sparsity(pruned["iterative"]))
    claims.target(f"{group} iterative 90% accuracy drop", 100 * (dense - fmnist_accuracy(pruned["iterative"])),
                  "<=", 1.0, unit="pt", section="sec-prune-unstructured-iterative")  # fmt: skip
    claims.measure(f"{group} one-shot+FT 90% accuracy drop", 100 * (dense - fmnist_accuracy(pruned["one-shot"])), "pt")


def bench() -> None:
    """The chapter's headline rows: iterative pruning to 90 %, Taylor/OBD against magnitude, the lottery ticket."""
    resnet = zoo.pretrained("resnet-fmnist").model.eval().cpu()
    batches = score_batches()
    oneshot = {method: 100 * fmnist_accuracy(recipes.prune_oneshot(
        resnet, recipes.scores_for(resnet, method, batches), 0.9, bn_batches=batches))
        for method in ("magnitude", "taylor", "obd")}  # fmt: skip
    _iterative_rows("resnet", "resnet-fmnist")
    _iterative_rows("cnn", "cnn-fmnist")
    for method, acc in oneshot.items():
        claims.measure(f"resnet one-shot 90% {method} accuracy", acc, "%")
    claims.target("resnet one-shot 90%: best of Taylor/OBD - magnitude",
                  max(oneshot["taylor"], oneshot["obd"]) - oneshot["magnitude"], ">=", 0.0, unit="pt",
                  section="sec-prune-unstructured-scores")  # fmt: skip
    ticket = lottery_ticket("cnn-fmnist", 0.8, epochs=pick(fast=1, full=4))
    claims.target("cnn ticket (20% weights) gap to dense", 100 * (ticket["dense"] - ticket["ticket"]), "<=", 0.5,
                  unit="pt")  # fmt: skip
    claims.target("cnn ticket minus random reinit", 100 * (ticket["ticket"] - ticket["random reinit"]), ">", 0.0,
                  unit="pt")  # fmt: skip
