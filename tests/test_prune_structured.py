"""effdl.prune.structured and llm: channel groups, block dropping, Torch-Pruning, Wanda."""

import copy

import pytest
import torch
from torch import nn

from effdl import bench
from effdl.lm import input_stats
from effdl.models import ResNet
from effdl.prune import llm as pl
from effdl.prune import masks as pm
from effdl.prune import structured as st


def trained_like_resnet(blocks=(2, 1, 1)) -> ResNet:
    """A ResNet with random BN statistics, so pruning equivalences are not trivially true."""
    model = ResNet((8, 16, 16), blocks)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def silence_channels(model: ResNet, groups: list[st.ChannelGroup], drop: list[torch.Tensor]) -> None:
    """Zero the BN scale and shift of the dropped channels: their outputs become exactly 0."""
    with torch.no_grad():
        for group, index in zip(groups, drop, strict=True):
            for module in group.producers:
                if isinstance(module, nn.BatchNorm2d):
                    module.weight[index] = 0
                    module.bias[index] = 0


def test_groups_tie_residual_channels_together():
    groups = {g.name: g for g in st.resnet_groups(trained_like_resnet())}
    stem = groups["stem"]  # identity shortcuts in stage 0: the stem and both blocks' outputs share channels
    assert len(stem.producers) == 6 and len(stem.consumers) == 4  # two blocks, then conv1 + shortcut
    assert set(groups) == {"stem", "stages.0.0.inner", "stages.0.1.inner", "stages.1.0.inner", "stages.1.0",
                           "stages.2.0.inner", "stages.2.0"}  # fmt: skip


def test_removing_channels_equals_silencing_them():
    model = trained_like_resnet()
    x = torch.randn(4, 1, 28, 28)
    groups = st.resnet_groups(model)
    keep = [torch.randperm(g.size)[: g.size // 2] for g in groups]
    drop = [torch.tensor(sorted(set(range(g.size)) - set(k.tolist()))) for g, k in zip(groups, keep, strict=True)]
    silenced = copy.deepcopy(model)
    silence_channels(silenced, st.resnet_groups(silenced), drop)
    for group, index in zip(groups, keep, strict=True):
        st.keep_channels_(group, index)
    assert torch.allclose(model(x), silenced(x), atol=1e-5)
    assert bench.param_count(model) < bench.param_count(silenced) / 2


def test_prune_channels_rounds_and_reduces_macs():
    model = trained_like_resnet()
    example = torch.randn(1, 1, 28, 28)
    before = bench.flops(model, example)
    st.prune_channels_(model, 0.5, "l2", round_to=4)
    assert all(g.size % 4 == 0 for g in st.resnet_groups(model))
    assert model(example).shape == (1, 10)
    assert bench.flops(model, example) < 0.4 * before


@pytest.mark.parametrize("criterion", st.CRITERIA)
def test_every_criterion_scores_every_channel(criterion):
    model = trained_like_resnet()
    data = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))]
    scores = st.channel_scores(model, criterion, data)
    assert [len(s) for s in scores] == [g.size for g in st.resnet_groups(model)]
    assert all((s >= 0).all() and s.sum() > 0 for s in scores)


def test_bn_criterion_keeps_the_largest_scales():
    model = trained_like_resnet()
    inner = model.stages[0][0].bn1
    gammas = inner.weight.detach().abs().clone()
    st.prune_channels_(model, 0.5, "bn")
    assert torch.equal(model.stages[0][0].bn1.weight.detach().abs().sort().values, gammas.sort().values[4:])


def test_drop_block_keeps_shapes_valid():
    model = trained_like_resnet()
    x = torch.randn(2, 1, 28, 28)
    st.drop_block_(model, "stages.0.1")  # identity shortcut
    st.drop_block_(model, "stages.1.0")  # projection shortcut
    assert st.residual_blocks(model) == ["stages.0.0", "stages.2.0"]
    assert isinstance(model.stages[0][1], nn.Identity)
    assert model(x).shape == (2, 10)
    st.prune_channels_(model, 0.5)  # channel groups still found after blocks are gone
    assert model(x).shape == (2, 10)


def test_bad_structured_arguments():
    model = trained_like_resnet()
    with pytest.raises(ValueError, match="criterion"):
        st.channel_scores(model, "l3")
    with pytest.raises(ValueError, match="batches"):
        st.channel_scores(model, "taylor")
    with pytest.raises(ValueError, match="ratio"):
        st.prune_channels_(model, 1.0)
    with pytest.raises(ValueError, match="name must be one of"):
        st.drop_block_(model, "stem")
    with pytest.raises(ValueError, match="ResNet"):
        st.resnet_groups(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="index"):
        st.keep_channels_(st.resnet_groups(model)[0], torch.tensor([99]))


def test_torch_pruning_agrees_on_macs_at_the_same_ratio():
    model = trained_like_resnet((1, 1, 1))
    example = torch.randn(1, 1, 28, 28)
    theirs = st.torch_pruning_channels(model, example, 0.5)
    ours = st.prune_channels_(copy.deepcopy(model), 0.5)
    assert bench.flops(theirs, example) == bench.flops(ours, example)
    assert theirs(example).shape == (1, 10)


# --- LLM pruning ----------------------------------------------------------------------------


class TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def outlier_inputs(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    scale = torch.ones(32)
    scale[:4] = 20  # a few large input channels, as in LLMs
    return [(torch.randn(64, 32) * scale, torch.zeros(64)) for _ in range(n)]


def test_wanda_scores_are_weight_times_input_norm():
    model, data = TwoLinears(), outlier_inputs(2)
    stats = input_stats(model, ["up"], data)
    x = torch.cat([b[0] for b in data])
    expected = model.up.weight.abs() * (x.pow(2).mean(0)).sqrt()
    assert torch.allclose(pl.wanda_scores(model, stats)["up"], expected, rtol=1e-4)


def test_wanda_keeps_the_output_closer_than_magnitude():
    model, data = TwoLinears(), outlier_inputs()
    x = torch.cat([b[0] for b in data])
    dense = model(x)
    errors = {}
    for method in pl.METHODS:
        for nm in (None, (2, 4)):
            pruned = pl.prune_llm_(copy.deepcopy(model), method, 0.5, nm, data)
            assert pm.sparsity(pm.masks_of(pruned)) == pytest.approx(0.5)
            errors[method, nm] = (pruned(x) - dense).pow(2).mean().item()
    assert errors["wanda", None] < errors["magnitude", None]
    assert errors["wanda", (2, 4)] < errors["magnitude", (2, 4)]
    with pytest.raises(ValueError, match="calibration"):
        pl.llm_masks(model, "wanda")
    with pytest.raises(ValueError, match="method"):
        pl.llm_masks(model, "sparsegpt")


# --- the chapter's experiments module (effdl.experiments.prune_structured) ---------------------


def test_removed_vs_silenced_holds_on_a_resnet_with_random_statistics():
    from effdl import claims
    from effdl.experiments import prune_structured as ex

    model = trained_like_resnet()
    result = ex.removed_vs_silenced(model)
    assert result["max_difference"] <= 1e-5 and result["params_after"] < result["params_before"] / 2
    ex.check_removed_vs_silenced(result)
    with pytest.raises(claims.ClaimFailed):  # a bookkeeping error (outputs differ) fails the claim
        ex.check_removed_vs_silenced(result | {"max_difference": 0.1})


def test_window_losses_give_the_perplexity_and_a_paired_verdict():
    from effdl import lm
    from effdl.experiments import prune_structured as ex
    from effdl.models import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=16, context=8, n_layer=1, n_head=2, n_embd=16)).eval()
    windows = lm.token_windows(torch.randint(0, 16, (200,)), 8, 12, batch_size=5)
    losses = lm.window_losses(model, windows)
    assert losses.shape == (12,)
    assert torch.exp(losses.mean()).item() == pytest.approx(lm.perplexity(model, windows), rel=1e-6)
    base = torch.linspace(1.0, 2.0, 12, dtype=torch.float64)
    wobble = 0.01 * torch.tensor([1.0, -1.0] * 6, dtype=torch.float64)
    result = ex.LLMPruning("toy", {"dense": base, "magnitude 50%": base + 0.5, "wanda 50%": base + 0.1 + wobble,
                                   "magnitude 2:4": base + 0.5, "wanda 2:4": base + 0.5 + wobble})  # fmt: skip
    assert result.perplexity["dense"] == pytest.approx(float(torch.exp(base.mean())))
    assert result.wanda_vs_magnitude("50%").value == pytest.approx(-0.4)
    assert result.wanda_vs_magnitude("50%").verdict("worse", "better") == "better"
    assert result.wanda_vs_magnitude("2:4").verdict("worse", "better") == "no measurable difference"


def test_llm_claims_fail_when_wanda_does_not_beat_magnitude():
    from effdl import claims
    from effdl.experiments import prune_structured as ex

    def fake(gap: float) -> ex.LLMPruning:
        loss = torch.full((4,), 3.0, dtype=torch.float64)
        return ex.LLMPruning("toy", {"dense": loss, **{f"{m} {p}": loss + (gap if m == "magnitude" else 0)
                                                        for m in pl.METHODS for p in ex.PATTERNS}})  # fmt: skip

    ex.check_llm({"gpt-shakespeare": fake(0.1), "smollm2": fake(2.0)})  # magnitude e^2 = 7.4x worse: holds
    with pytest.raises(claims.ClaimFailed, match="smollm2"):
        ex.check_llm({"gpt-shakespeare": fake(0.1), "smollm2": fake(0.0)})


def test_headline_claims_fail_without_a_speed_up():
    from effdl import claims
    from effdl.experiments import prune_structured as ex

    correct, big = torch.ones(100, dtype=torch.bool), ex.BATCH_THROUGHPUT
    good = ex.Headline({n: nn.Identity() for n in ("dense", "ours", "Torch-Pruning")}, dict.fromkeys(("dense", "ours",
                       "Torch-Pruning"), correct), {"dense": 4.0, "ours": 1.0, "Torch-Pruning": 1.0},
                       dict.fromkeys(("dense", "ours", "Torch-Pruning"), 1),
                       {1: {"dense": 2.0, "ours": 1.0, "Torch-Pruning": 1.0},
                        big: {"dense": 2.0, "ours": 1.0, "Torch-Pruning": 1.0}})  # fmt: skip
    ex.check_headline(good)
    assert good.speedup("ours", big) == 2.0 and good.table()["dense"][f"ms @{big}"] == 2000.0
    slow = copy.deepcopy(good)
    slow.latency[big]["ours"] = 2.0
    with pytest.raises(claims.ClaimFailed, match="speed-up"):
        ex.check_headline(slow)


def test_latency_ratio_and_the_parameter_count_claim():
    from effdl import claims
    from effdl.experiments import prune_structured as ex

    times = {"dense": [1.0, 1.1, 0.9, 1.0], "same": [1.01, 1.09, 0.91, 0.99], "fast": [0.25, 0.27, 0.23, 0.25]}
    assert ex.latency_ratio(times, "same").verdict("slower", "faster") == "no measurable difference"
    assert ex.latency_ratio(times, "fast").verdict("slower", "faster") == "faster"
    rows = {"dense": {"times": times["dense"]}, "90% unstructured": {"times": times["same"]}}
    assert abs(ex.check_parameter_count(rows).value) < 0.05
    with pytest.raises(claims.ClaimFailed):  # a kernel that skipped the zeros would break the pitfall's claim
        ex.check_parameter_count({"dense": rows["dense"], "90% unstructured": {"times": times["fast"]}})


def test_folded_norms_agree_with_raw_norms_only_when_batchnorm_scales_alike():
    from effdl.experiments import prune_structured as ex

    model = trained_like_resnet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.rand(m.weight.shape[0], 1, 1, 1) + 0.5)  # filters of different norms
    uneven = ex.folded_norm_agreement(model)
    assert set(uneven["rho"]) == {g.name for g in st.resnet_groups(model)}
    assert all(-1 <= r <= 1 for r in uneven["rho"].values()) and min(uneven["rho"].values()) < 1
    for m in model.modules():  # every channel normalized alike: folding scales all filters by one factor
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            m.running_var.fill_(1.0)
    even = ex.folded_norm_agreement(model)
    assert all(r == pytest.approx(1.0) for r in even["rho"].values()) and even["same_kept"] == 1.0


def test_scaling_a_filter_before_batchnorm_changes_its_norm_but_not_the_output():
    from effdl.experiments import prune_structured as ex

    model, x = trained_like_resnet().train(), torch.randn(16, 1, 28, 28)
    for m in model.modules():  # every channel normalized alike: raw and folded norms rank alike
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            m.running_var.fill_(1.0)
            m.momentum = 0.0  # training-mode passes below leave the running statistics as set here
    assert ex.folded_norm_agreement(model)["rho"]["stem"] == pytest.approx(1.0)
    stem = [g.name for g in st.resnet_groups(model)].index("stem")
    before, quietest = model(x), int(st.channel_scores(model, "l1")[stem].argmin())
    with torch.no_grad():
        model.stem[0].weight[quietest] *= 100.0  # a 100x larger filter: the training-mode BN divides it out
    assert torch.allclose(model(x), before, atol=1e-4)
    with torch.no_grad():  # the running statistics, once re-estimated, scale with it
        model.stem[1].running_mean[quietest] *= 100.0
        model.stem[1].running_var[quietest] *= 100.0**2
    assert int(st.channel_scores(model, "l1")[stem].argmax()) == quietest  # the raw norm now ranks it first ...
    assert ex.folded_norm_agreement(model)["rho"]["stem"] < 1  # ... the folded norm where it was


def test_speed_self_check(monkeypatch, capsys):
    from effdl.experiments import prune_structured as ex

    assert ex.speed_problems(2.1, 0.5, 2.0, 1.0) == []
    assert len(ex.speed_problems(1.5, 2.0, 2.0, 1.0)) == 2
    timed = []

    def twice_as_fast(models, example, rounds=3):  # effdl.bench.compare_latency is tested in test_bench; stubbed here
        timed.append((set(models), example.shape[0]))
        return {"dense": 2.0, "yours": 1.0}

    monkeypatch.setattr(ex.measure_bench, "compare_latency", twice_as_fast)
    dense = ex.baseline()
    assert ex.self_check_speed(dense)  # accuracy measured: the dense model loses nothing
    assert timed == [({"dense", "yours"}, ex.BATCH_THROUGHPUT)] and "right" in capsys.readouterr().out
    assert not ex.self_check_speed(dense, max_blocks=2)  # Exercise 4 asks for a dropped block
    unrecovered = st.prune_channels_(copy.deepcopy(dense), 0.5)  # not fine-tuned
    assert not ex.self_check_speed(unrecovered)
    out = capsys.readouterr().out
    assert "residual blocks left" in out and "test accuracy dropped" in out and "speed-up" not in out


def test_sparsegpt_self_check_on_the_small_gpt(capsys):
    from effdl import lm
    from effdl.experiments import _shared
    from effdl.experiments import prune_structured as ex

    model, test, _ = _shared.lm_suite("gpt-shakespeare")
    pruned = pl.prune_llm_(copy.deepcopy(model), "magnitude", nm=(2, 4))
    ppl = lm.perplexity(pruned, test)
    assert ex.two_four_problems(pruned) == [] and ex.two_four_problems(model)
    assert ex.self_check_sparsegpt(pruned, 1.01 * ppl, test)
    assert not ex.self_check_sparsegpt(pruned, 0.99 * ppl, test)  # not below the perplexity to beat
    assert not ex.self_check_sparsegpt(model, 1.01 * ppl, test)  # better, but dense
    assert "not 2:4" in capsys.readouterr().out
