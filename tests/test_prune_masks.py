"""effdl.prune.masks and storage: scores, masks against torch.nn.utils.prune, kept masks, schedules, bytes."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from effdl.prune import masks as pm
from effdl.prune import storage


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
                         nn.Linear(8, 3))  # fmt: skip


def batches(n: int = 3, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(size, 1, 8, 8), torch.randint(0, 3, (size,))) for _ in range(n)]


def test_layer_masks_agree_with_torch_l1_unstructured():
    net = small_net()
    ours = pm.layer_masks(pm.magnitude_scores(net), 0.7)
    for name, layer in pm.prunable(net).items():
        torch_prune.l1_unstructured(layer, "weight", amount=0.7)
        assert torch.equal(ours[name], layer.weight_mask)
        torch_prune.remove(layer, "weight")
    assert pm.sparsity(net) == pytest.approx(pm.sparsity(ours))


def test_global_masks_agree_with_torch_global_unstructured():
    net = small_net()
    ours = pm.global_masks(pm.magnitude_scores(net), 0.9)
    layers = pm.prunable(net)
    torch_prune.global_unstructured([(m, "weight") for m in layers.values()], torch_prune.L1Unstructured, amount=0.9)
    for name, layer in layers.items():
        assert torch.equal(ours[name], layer.weight_mask)
    total = sum(m.numel() for m in ours.values())
    assert pm.sparsity(ours) == pytest.approx(round(0.9 * total) / total)


def test_global_masks_break_ties_to_the_exact_count():
    scores = {"a": torch.ones(10), "b": torch.ones(6)}
    assert sum(int(m.sum()) for m in pm.global_masks(scores, 0.5).values()) == 8


def test_global_masks_work_on_channels_last_weights_with_ties():
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.fill_(0.5)  # every weight ties
    masks = pm.global_masks(pm.magnitude_scores(conv), 0.5)
    assert pm.sparsity(masks) == pytest.approx(0.5)
    assert pm.sparsity(pm.apply_masks_(conv, masks)) == pytest.approx(0.5)


def test_row_masks_prune_each_row_equally():
    mask = pm.row_masks({"w": torch.randn(5, 40)}, 0.25)["w"]
    assert torch.equal(mask.sum(1), torch.full((5,), 30.0))


def test_nm_masks_keep_the_largest_n_of_every_m():
    w = torch.randn(6, 16)
    mask = pm.nm_masks({"w": w.abs()}, 2, 4)["w"]
    groups, kept = w.abs().view(6, 4, 4), mask.view(6, 4, 4)
    assert torch.equal(kept.sum(-1), torch.full((6, 4), 2.0))
    smallest_kept = torch.where(kept > 0, groups, torch.inf).amin(-1)
    largest_dropped = torch.where(kept == 0, groups, -torch.inf).amax(-1)
    assert (smallest_kept >= largest_dropped).all()


@pytest.mark.parametrize(("fn", "kwargs", "match"), [
    (pm.layer_masks, {"sparsity": 1.0}, "sparsity"),
    (pm.global_masks, {"sparsity": -0.1}, "sparsity"),
    (pm.nm_masks, {"n": 4, "m": 4}, "n must be"),
])  # fmt: skip
def test_bad_mask_arguments(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn({"w": torch.randn(4, 8)}, **kwargs)


def test_nm_masks_reject_inputs_not_divisible_by_m():
    with pytest.raises(ValueError, match="groups of m=4"):
        pm.nm_masks({"w": torch.randn(4, 9)}, 2, 4)


def test_taylor_scores_are_weight_times_gradient():
    net, data = small_net(), batches(1)
    scores = pm.taylor_scores(net, data)
    x, y = data[0]
    F.cross_entropy(net(x), y).backward()
    assert torch.allclose(scores["5"], (net[5].weight * net[5].weight.grad).abs())


def test_fisher_diagonal_is_the_mean_of_per_sample_squared_gradients():
    net, data = small_net().eval(), batches(2, 5)
    fisher = pm.fisher_diagonal(net, data)
    expected = torch.zeros_like(net[3].weight)
    for x, y in data:
        for i in range(len(x)):
            net.zero_grad()
            F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
            expected += net[3].weight.grad ** 2
    assert torch.allclose(fisher["3"], expected / 10, rtol=1e-4, atol=1e-9)
    obd = pm.obd_scores(net, data)
    assert torch.allclose(obd["3"], 0.5 * fisher["3"] * net[3].weight.detach() ** 2)


def _train_steps(net: nn.Module, steps: int = 5) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for x, y in batches(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()


def test_mask_keeper_keeps_pruned_weights_at_zero_and_plain_training_regrows_them():
    net = small_net()
    masks = pm.global_masks(pm.magnitude_scores(net), 0.8)
    pm.apply_masks_(net, masks)
    regrown = copy.deepcopy(net)
    with pm.MaskKeeper(net, masks):
        _train_steps(net)
    _train_steps(regrown)
    assert pm.sparsity(net) == pytest.approx(pm.sparsity(masks))
    assert pm.sparsity(regrown) < 0.2  # the Chapter 6 pitfall: fine-tuning undoes the mask (80 % -> ~10 %)


def test_schedules_reach_the_final_sparsity():
    poly = [pm.polynomial_sparsity(t, 10, 0.9) for t in range(11)]
    assert poly[0] == 0 and poly[-1] == pytest.approx(0.9)
    assert all(b > a for a, b in zip(poly, poly[1:], strict=False))
    assert poly[1] - poly[0] > poly[-1] - poly[-2]  # prunes fast early, slowly late
    steps = pm.iterative_sparsities(0.9, 3)
    assert steps[-1] == pytest.approx(0.9)
    survivors = [1 - s for s in [0, *steps]]
    assert [b / a for a, b in zip(survivors, survivors[1:], strict=False)] == pytest.approx([0.1 ** (1 / 3)] * 3)
    with pytest.raises(ValueError, match="rounds"):
        pm.iterative_sparsities(0.9, 0)
    with pytest.raises(ValueError, match="step"):
        pm.polynomial_sparsity(11, 10, 0.9)


def test_storage_bytes_are_counted_from_the_tensors():
    w = storage.random_sparse(64, 128, 0.1)
    nnz = int(w.count_nonzero())
    assert storage.dense_bytes(w) == 64 * 128 * 4
    assert storage.bitmask_bytes(w) == 64 * 128 // 8 + 4 * nnz
    assert storage.csr_bytes(w) == 8 * 65 + 8 * nnz + 4 * nnz
    assert abs(nnz / w.numel() - 0.1) < 0.02
    assert torch.equal(storage.csr(w).to_dense(), w)
    with pytest.raises(ValueError, match="density"):
        storage.random_sparse(4, 4, 0.0)


def test_sparse_matmul_matches_dense_and_its_time_follows_the_nonzeros():
    w, x = storage.random_sparse(512, 512, 0.01), torch.randn(512, 32)
    assert torch.allclose(torch.sparse.mm(storage.csr(w), x), w @ x, atol=1e-5)
    assert torch.allclose(storage.MatMul(storage.csr(w))(x), storage.MatMul(w)(x), atol=1e-5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: a busy machine cannot turn thread contention into the measurement
    try:
        _, sparse_few = storage.sparse_vs_dense(w, x)
        _, sparse_many = storage.sparse_vs_dense(storage.random_sparse(512, 512, 0.5), x)
    finally:
        torch.set_num_threads(threads)
    assert sparse_many > 3 * sparse_few  # 50x the non-zeros: the timing measures the sparse kernel


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_semi_structured_speedup_says_what_it_needs_without_a_gpu():
    with pytest.raises(RuntimeError, match="compute capability"):
        storage.semi_structured_speedup()
