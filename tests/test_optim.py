"""effdl.optim: from-scratch updates against torch.optim, the Muon/AdamW hybrid, schedules, the step loop and the
range test, on tiny problems."""

import copy
import math

import pytest
import schedulefree
import torch
from torch import nn
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, DEFAULT_NS_STEPS, EPS, _zeropower_via_newtonschulz

from effdl import optim
from effdl.optim import schedules


def _regression(seed: int = 0, n: int = 256):
    """A linear regression data set in batches of 32, and a 2-layer model for it."""
    torch.manual_seed(seed)
    x = torch.randn(n, 8)
    y = x @ torch.randn(8, 1)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]
    return batches, nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def mse(out, y):
    return (out - y).pow(2).mean()


def test_adamw_step_matches_torch_adamw():
    torch.manual_seed(0)
    ours = torch.randn(5, 7)
    theirs = ours.clone().requires_grad_()
    reference = torch.optim.AdamW([theirs], lr=0.05, betas=(0.9, 0.95), weight_decay=0.1)
    state = {}
    for _ in range(10):
        grad = torch.randn(5, 7)
        theirs.grad = grad.clone()
        reference.step()
        optim.adamw_step(ours, grad, state, lr=0.05, betas=(0.9, 0.95), weight_decay=0.1)
    assert state["t"] == 10
    assert torch.allclose(ours, theirs.detach(), atol=1e-6)
    with pytest.raises(ValueError, match="lr"):
        optim.adamw_step(ours, grad, state, lr=-1.0)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (48, 48)])
def test_newton_schulz_orthogonalizes_like_torch(shape):
    torch.manual_seed(0)
    g = torch.randn(*shape) @ torch.diag(torch.logspace(-1, 0, shape[1]))  # singular values over a decade
    ours = optim.newton_schulz(g)
    singular = torch.linalg.svdvals(ours)
    assert (singular - 1).abs().max() < 0.35  # all pushed into Muon's band, from 0.1 .. 1
    assert optim.updates.NS_COEFFICIENTS == (DEFAULT_A, DEFAULT_B, DEFAULT_C)
    theirs = _zeropower_via_newtonschulz(g, optim.updates.NS_COEFFICIENTS, DEFAULT_NS_STEPS, EPS).float()
    assert (ours - theirs).abs().max() < 0.05  # theirs runs in bf16
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = (ours * (u @ vh)).sum() / (ours.norm() * (u @ vh).norm())
    assert cosine > 0.95  # close to U V^T
    with pytest.raises(ValueError, match="2-D"):
        optim.newton_schulz(torch.randn(3, 3, 3))
    with pytest.raises(ValueError, match="steps"):
        optim.newton_schulz(g, steps=0)


def test_split_for_muon_keeps_embeddings_tied_heads_and_output_layers_out():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.hidden = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)
            self.tied = nn.Linear(8, 10, bias=False)
            self.tied.weight = self.emb.weight
            self.out = nn.Linear(8, 3)

    model = Tiny()
    hidden, rest = optim.split_for_muon(model, output_layers=(model.out,))
    assert [id(p) for p in hidden] == [id(model.hidden.weight)]
    assert len(hidden) + len(rest) == len(list(model.parameters()))
    assert any(p is model.emb.weight for p in rest) and any(p is model.out.weight for p in rest)


def test_muon_adamw_steps_every_parameter_and_one_scheduler_drives_both():
    batches, model = _regression()
    hidden, rest = optim.split_for_muon(model, output_layers=(model[2],))
    opt = optim.MuonAdamW(hidden, rest, lr=0.01, weight_decay=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batches[0]
    mse(model(x), y).backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    opt.step()
    sched.step()
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.005)
    assert opt.adamw.param_groups[0]["lr"] == pytest.approx(0.005)
    with pytest.raises(ValueError, match="lr"):
        optim.MuonAdamW(hidden, rest, lr=0.0)


def test_muon_adamw_saves_and_restores_both_optimizers_moments():
    batches, model = _regression()
    hidden, rest = optim.split_for_muon(model, output_layers=(model[2],))
    opt = optim.MuonAdamW(hidden, rest, lr=0.01)
    x, y = batches[0]
    mse(model(x), y).backward()
    opt.step()
    saved = copy.deepcopy(opt.state_dict())  # state_dict() holds the live moment tensors
    weights = [p.detach().clone() for p in model.parameters()]
    mse(model(x), y).backward()
    opt.step()
    after = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights, strict=True):
            p.copy_(w)
    restored = optim.MuonAdamW(hidden, rest, lr=0.01)
    restored.load_state_dict(saved)
    assert len(restored.muon.state) == len(hidden) and len(restored.adamw.state) == len(rest)
    restored.step()  # the same gradients as the second step above, from the same moments
    assert all(torch.allclose(p, a) for p, a in zip(model.parameters(), after, strict=True))
    restored.param_groups[0]["lr"] = 0.5  # a scheduler still reaches the inner optimizers
    assert restored.muon.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("name", optim.NAMES)
def test_every_optimizer_builds_and_lowers_the_loss(name):
    batches, model = _regression()
    lr = {"sgd": 0.05, "momentum": 0.02, "nesterov": 0.02, "lion": 1e-2, "muon-all": 5e-2}.get(name, 1e-2)
    opt = optim.build(name, model, lr, warmup=2, output_layers=(model[2],))
    curve = optim.train_steps(model, opt, batches, 60, lambda m: {"loss": mse(m(batches[0][0]), batches[0][1]).item()},
                              eval_every=20, loss=mse)  # fmt: skip
    assert curve.final() < 0.5 * curve["loss"][0]
    assert isinstance(opt, optim.MuonAdamW) == name.startswith("muon")


def test_build_rejects_unknown_names_and_bad_rates():
    _, model = _regression()
    with pytest.raises(ValueError, match="name"):
        optim.build("adagrad", model, 0.1)
    with pytest.raises(ValueError, match="lr"):
        optim.build("adamw", model, 0.0)
    embedding_on_muon = optim.build("muon-all", nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2)), 0.01)
    assert len(embedding_on_muon.muon.param_groups[0]["params"]) == 2


def test_schedules_warm_up_then_decay_as_named():
    cosine = schedules.lr_factors("cosine", 100, 10)
    assert cosine[0] == pytest.approx(0.1) and cosine[9] == pytest.approx(1.0)
    assert cosine[55] == pytest.approx(0.5, abs=0.02) and cosine[-1] < 0.01
    wsd = schedules.lr_factors("wsd", 100, 10, decay_fraction=0.2)
    assert all(f == 1.0 for f in wsd[10:80]) and wsd[90] == pytest.approx(0.5) and wsd[-1] == pytest.approx(0.05)
    assert schedules.lr_factors("constant", 50, 5)[5:] == [1.0] * 45
    onecycle = schedules.lr_factors("onecycle", 100)
    assert onecycle[0] == pytest.approx(1 / 25) and max(onecycle) == pytest.approx(1.0, abs=1e-3)
    assert 25 <= onecycle.index(max(onecycle)) <= 35 and onecycle[-1] < 1e-3
    with pytest.raises(ValueError, match="name"):
        schedules.lr_factors("step", 10)
    with pytest.raises(ValueError, match="name"):
        schedules.factor("step", 0, 10, 5)  # even during the warm-up
    plain_sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedules.scheduler("onecycle", plain_sgd, 10)
    assert plain_sgd.param_groups[0]["momentum"] == 0  # one-cycle gives plain SGD no momentum
    with pytest.raises(ValueError, match="warmup"):
        schedules.lr_factors("cosine", 10, 10)
    with pytest.raises(ValueError, match="decay_fraction"):
        schedules.lr_factors("wsd", 10, 1, decay_fraction=0.0)


def test_train_steps_records_the_curve_and_steps_the_scheduler_when_told():
    batches, model = _regression()  # 8 batches: one epoch
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = optim.scheduler("cosine", opt, 40)
    evaluate = lambda m: {"loss": 1.0}  # noqa: E731
    curve = optim.train_steps(model, opt, batches, 40, evaluate, eval_every=15, scheduler=sched, loss=mse)
    assert curve.steps == [0, 15, 30, 40] and len(curve.lrs) == 40 and curve.lrs[-1] < 0.01 * curve.lrs[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    per_epoch = optim.scheduler("cosine", opt, 40)
    curve = optim.train_steps(model, opt, batches, 40, evaluate, eval_every=40, scheduler=per_epoch,
                              scheduler_every=len(batches), loss=mse)  # fmt: skip
    assert curve.lrs[-1] > 0.95 * curve.lrs[0]  # stepped 4 times of the 40 it was built for: barely decayed
    with pytest.raises(ValueError, match="eval_every"):
        optim.train_steps(model, opt, batches, 10, evaluate, eval_every=0)


def test_train_steps_evaluates_schedule_free_at_its_averaged_point_unless_told_not_to():
    batches, model = _regression()
    modes = []

    def evaluate(m):
        modes.append(opt.param_groups[0]["train_mode"])
        return {"loss": 0.0}

    opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=0.01)
    optim.train_steps(model, opt, batches, 10, evaluate, eval_every=5, loss=mse)
    assert modes == [False, False, False]
    modes.clear()
    opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=0.01)
    opt.train()
    optim.train_steps(model, opt, batches, 10, evaluate, eval_every=5, loss=mse, switch_modes=False)
    assert modes == [True, True, True]


def test_train_steps_stops_when_the_loss_diverges():
    batches, model = _regression()
    opt = torch.optim.SGD(model.parameters(), lr=1e3)
    curve = optim.train_steps(model, opt, batches, 200, lambda m: {"loss": 0.0}, eval_every=50, loss=mse)
    assert curve.diverged and curve.steps[-1] < 200


def test_steps_to_target_interpolates_between_evaluations():
    assert optim.steps_to_target([0, 10, 20], [3.0, 2.0, 1.0], 1.5) == pytest.approx(15.0)
    assert optim.steps_to_target([0, 10, 20], [3.0, 2.0, 1.0], 0.5) == math.inf
    assert optim.steps_to_target([0, 10, 20], [0.1, 0.5, 0.9], 0.7, higher_is_better=True) == pytest.approx(15.0)
    assert optim.steps_to_target([0, 10], [1.0, 0.5], 2.0) == 0.0
    with pytest.raises(ValueError, match="equal length"):
        optim.steps_to_target([0, 10], [1.0], 0.5)


def test_range_test_rises_geometrically_and_suggests_below_the_blow_up():
    batches, model = _regression(n=32 * 100)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    found = optim.lr_range_test(model, opt, batches, lr_min=1e-4, lr_max=10.0, steps=100, loss=mse)
    assert found.lrs[0] == pytest.approx(1e-4) and found.lrs[1] / found.lrs[0] == pytest.approx(10 ** (5 / 99))
    assert len(found.lrs) < 100  # stopped once the loss blew up
    assert 1e-3 < found.suggested < 0.3 and found.suggested == pytest.approx(found.minimum / 10)
    with pytest.raises(ValueError, match="lr_min"):
        optim.lr_range_test(model, opt, batches, lr_min=1.0, lr_max=0.1)
