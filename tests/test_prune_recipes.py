"""effdl.prune.recipes on a real baseline (fast mode): one-shot, prune + fine-tune, rewinding, the sensitivity
scan; the chapter's comparison of two models and the self-checks of its exercises."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effdl import train, zoo
from effdl.experiments import prune_unstructured as ex
from effdl.experiments._shared import fmnist_accuracy, fmnist_batches
from effdl.experiments.prune_unstructured import compare, finetuner, score_batches
from effdl.prune import masks as pm
from effdl.prune import recipes, storage


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


def test_sensitivity_scan_prunes_one_layer_at_a_time(cnn):
    batches = fmnist_batches("val")[:1]
    scan = recipes.sensitivity_scan(cnn, [0.0, 0.999], batches)
    assert list(scan) == list(pm.prunable(cnn))
    dense = train.accuracy(cnn, batches)
    assert all(row[0] == pytest.approx(dense) for row in scan.values())  # 0 % pruned: the dense model
    assert min(row[1] for row in scan.values()) < dense - 0.2  # some layer cannot lose 99.9 % of its weights
    assert pm.sparsity(cnn) == 0  # the scan works on copies


def test_compare_counts_each_model_once_on_the_same_images(cnn):
    pruned = recipes.prune_oneshot(cnn, pm.magnitude_scores(cnn), 0.9)
    result = compare({"dense": cnn, "pruned": pruned}, "dense", "pruned")
    assert result.accuracy["dense"] == pytest.approx(fmnist_accuracy(cnn))
    assert result.paired.difference == pytest.approx(result.accuracy["dense"] - result.accuracy["pruned"])
    assert result.drop("pruned") == pytest.approx(100 * result.paired.difference)
    assert result.sparsity["pruned"] == pytest.approx(0.9, abs=1e-4)


def _capped_global_masks(scores, sparsity, cap):
    """A reference solution of Exercise 1: global ranking, every layer capped at ``cap``."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = round(flat.numel() * (1 - sparsity))
    floor = {n: -(-s.numel() * (1 - cap) // 1) for n, s in scores.items()}  # weights each layer must keep
    bonus = {n: s + (s >= s.flatten().topk(int(floor[n])).values[-1]) * 1e9 for n, s in scores.items()}
    return pm.global_masks(bonus, 1 - keep / flat.numel())


def test_exercise_self_checks_accept_a_solution_and_reject_a_wrong_one(capsys):
    assert ex.check_capped_masks(_capped_global_masks, min_accuracy=0.0)
    assert not ex.check_capped_masks(lambda scores, s, cap: pm.global_masks(scores, s), min_accuracy=0.0)

    def sparse_conv(x, conv):
        cols = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (batch, c*k*k, positions)
        weight = storage.csr(conv.weight)
        out = torch.stack([torch.sparse.mm(weight, c) for c in cols])
        side = int(out.shape[-1] ** 0.5)
        return (out + conv.bias[:, None] if conv.bias is not None else out).view(len(x), -1, side, side)

    assert ex.check_sparse_conv(sparse_conv)
    assert not ex.check_sparse_conv(lambda x, conv: F.conv2d(x, conv.weight.abs(), conv.bias, padding=1))
    assert "pass" in capsys.readouterr().out
