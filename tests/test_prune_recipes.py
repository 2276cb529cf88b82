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


def test_capped_masks_self_check_judges_sparsity_cap_and_accuracy(capsys):
    assert ex.self_check_capped_masks(_capped_global_masks)  # fast mode: 90 %, cap 95 %, accuracy >= 60 %
    assert "right" in capsys.readouterr().out
    assert not ex.self_check_capped_masks(lambda scores, s, cap: pm.global_masks(scores, s))  # a layer emptied
    assert "beyond the cap" in capsys.readouterr().out

    def random_per_layer(scores, s, cap):  # the right sparsity and no layer beyond the cap, but random weights
        return pm.layer_masks({n: torch.rand_like(v) for n, v in scores.items()}, s)

    assert not ex.self_check_capped_masks(random_per_layer)
    out = capsys.readouterr().out
    assert "below" in out and "cap" not in out  # rejected for its accuracy alone


def test_iterative_self_check_compares_the_answers_with_mcnemar(cnn, capsys):
    scores = pm.magnitude_scores(cnn)
    models = {"dense": cnn, "one-shot": recipes.prune_oneshot(cnn, scores, 0.95),
              "iterative": recipes.prune_oneshot(cnn, scores, 0.95, "layer")}  # fmt: skip
    truth = compare(models, "iterative", "one-shot")
    within, differ = truth.drop("iterative") <= 2.0, truth.paired.measurable
    assert ex.self_check_iterative(models, 0.95, within, differ)
    assert not ex.self_check_iterative(models, 0.95, not within, differ)
    assert not ex.self_check_iterative(models, 0.95, within, not differ)
    assert "McNemar" in capsys.readouterr().out


def _model_fisher_by_loops(model, batches):
    """An independent solution of Exercise 3: Σ_k p_k (∂ℓ(x, k)/∂w)², one backward pass per sample and class."""
    layers = pm.prunable(model)
    weights = [m.weight for m in layers.values()]
    fisher, count = [torch.zeros_like(w) for w in weights], 0
    model.eval()
    for x, _ in batches:
        for image in x:
            log_probs = model(image[None]).log_softmax(-1)[0]
            for k, p in enumerate(log_probs.exp().detach()):
                grads = torch.autograd.grad(-log_probs[k], weights, retain_graph=True)
                for f, g in zip(fisher, grads, strict=True):
                    f += p * g.pow(2)
            count += 1
    return {n: f / count for n, f in zip(layers, fisher, strict=True)}


def test_model_fisher_is_the_expectation_over_the_models_labels():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    batches = [(x[:6], y[:6]) for x, y in score_batches(12, batch_size=6)]
    model.eval()(batches[0][0])
    expected = _model_fisher_by_loops(model, batches)
    ours = ex.model_fisher_diagonal(model, batches)
    assert all(torch.allclose(ours[n], e, rtol=1e-4, atol=1e-7) for n, e in expected.items())
    empirical = pm.fisher_diagonal(model, batches)
    assert not all(torch.allclose(empirical[n], e, rtol=1e-2) for n, e in expected.items())


def test_model_fisher_self_check_accepts_the_expectation_and_rejects_the_empirical_fisher(capsys):
    assert ex.self_check_model_fisher(ex.model_fisher_diagonal, images=4)
    assert not ex.self_check_model_fisher(pm.fisher_diagonal, images=4)  # observed labels, not the expectation
    assert "off by" in capsys.readouterr().out


def _sparse_conv(x, conv):
    """A solution of Exercise 5: CSR weight times the unfolded input."""
    cols = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (batch, c*k*k, positions)
    weight = storage.csr(conv.weight)
    out = torch.stack([torch.sparse.mm(weight, c) for c in cols])
    side = int(out.shape[-1] ** 0.5)
    return (out + conv.bias[:, None] if conv.bias is not None else out).view(len(x), -1, side, side)


def test_sparse_conv_self_check_and_its_speed_prediction(monkeypatch, capsys):
    assert ex.self_check_sparse_conv(_sparse_conv)
    assert not ex.self_check_sparse_conv(lambda x, conv: F.conv2d(x, conv.weight.abs(), conv.bias, padding=1))
    assert "differs" in capsys.readouterr().out
    assert ex.sparse_conv_problems(0.5, False) == [] and ex.sparse_conv_problems(2.0, True) == []
    assert ex.sparse_conv_problems(0.5, True) and ex.sparse_conv_problems(2.0, False)
    assert ex.sparse_conv_problems(1.05, True) == ex.sparse_conv_problems(1.05, False) == []  # too close to call
    monkeypatch.setattr(ex.measure_bench, "compare_latency", lambda models, x: {"conv": 1.0, "yours": 4.0})
    assert ex.self_check_sparse_conv(_sparse_conv, faster=False)
    assert not ex.self_check_sparse_conv(_sparse_conv, faster=True)
    assert "slower" in capsys.readouterr().out
