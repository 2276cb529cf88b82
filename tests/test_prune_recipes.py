"""effdl.prune.recipes on a real baseline (fast mode): one-shot, prune + fine-tune, rewinding."""

import copy

import pytest
import torch
from torch import nn

from effdl import zoo
from effdl.experiments._shared import fmnist_accuracy
from effdl.experiments.prune_unstructured import finetuner, score_batches
from effdl.prune import masks as pm
from effdl.prune import recipes


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return zoo.pretrained("cnn-fmnist").model


def test_every_oneshot_method_reaches_the_exact_sparsity(cnn):
    batches = score_batches(256)
    for method in recipes.METHODS:
        pruned = recipes.prune_oneshot(cnn, recipes.scores_for(cnn, method, batches), 0.6, "layer")
        assert all(s == pytest.approx(0.6, abs=0.01) for s in pm.layer_sparsity(pruned).values())
    with pytest.raises(ValueError, match="scope"):
        recipes.prune_oneshot(cnn, pm.magnitude_scores(cnn), 0.5, "row")
    with pytest.raises(ValueError, match="batches"):
        recipes.scores_for(cnn, "obd")
    with pytest.raises(ValueError, match="method"):
        recipes.scores_for(cnn, "hessian")


def test_pruning_with_finetuning_beats_pruning_alone(cnn):
    oneshot = recipes.prune_oneshot(cnn, pm.magnitude_scores(cnn), 0.9)
    tuned = recipes.prune_finetune(copy.deepcopy(cnn), [0.7, 0.9], finetuner(1, train_limit=2000))
    assert pm.sparsity(tuned) == pytest.approx(0.9, abs=1e-4)
    assert fmnist_accuracy(tuned, "val") > fmnist_accuracy(oneshot, "val") + 0.05


def test_rewind_restores_survivors_to_their_initial_values():
    model = nn.Linear(8, 4)
    initial = copy.deepcopy(model.state_dict())
    masks = pm.global_masks(pm.magnitude_scores(model), 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    recipes.rewind_(model, initial, masks)
    assert torch.equal(model.weight, initial["weight"] * masks[""])
