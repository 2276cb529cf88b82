"""The experiments module of ``chap-optim`` in fast mode: its sweep and comparison arithmetic on made-up curves, the
from-scratch checks, the WSD branch, the claims' verdicts and the exercises' self-checks."""

import math

import pytest
import torch

from effdl import claims, optim
from effdl.experiments import optimizers as ex
from effdl.optim.loop import Curve


def curve(steps, values, metric="loss", lrs=()):
    return Curve(list(steps), {metric: list(values)}, list(lrs))


def test_sweep_picks_the_best_final_value_in_its_direction_and_skips_diverged_runs():
    sweep = ex.Sweep({"a": [0.1, 0.2, 0.4]}, {"a": [2.0, 1.5, math.nan]})
    assert sweep.best("a") == 0.2 and sweep.chosen() == {"a": 0.2}
    assert ex.Sweep({"a": [0.1, 0.2]}, {"a": [0.8, 0.7]}, lower=False).best("a") == 0.1


def test_comparison_reads_steps_and_seconds_to_the_reference_target():
    curves = {"adamw": [curve([0, 10, 20], [3.0, 2.0, 1.0]), curve([0, 10, 20], [3.0, 2.2, 1.2])],
              "muon": [curve([0, 10, 20], [3.0, 1.1, 0.8]), curve([0, 10, 20], [3.0, 1.1, 0.8])],
              "lion": [curve([0, 10, 20], [3.0, 2.5, 2.0]), curve([0, 10, 20], [3.0, 2.5, 2.0])]}  # fmt: skip
    result = ex.Comparison({k: 1e-3 for k in curves}, curves, {"adamw": 0.01, "muon": 0.02, "lion": 0.01})
    assert result.target == pytest.approx(1.1)
    assert result.steps_to_target("adamw") == pytest.approx(20.0)
    assert result.steps_to_target("muon") == pytest.approx(10.0)
    assert result.steps_to_target("lion") == math.inf
    assert result.step_ratio("muon") == pytest.approx(0.5)
    assert result.seconds_to_target("muon") == pytest.approx(0.2)
    assert result.difference("muon").value == pytest.approx(0.8 - 1.1)
    assert ex.check_gpt(result) == pytest.approx(0.5)
    slow = dict(curves, muon=curves["lion"])
    with pytest.raises(claims.ClaimFailed):
        ex.check_gpt(ex.Comparison(result.lrs, slow, result.step_seconds))


def test_adamw_from_scratch_and_newton_schulz_pass_their_claims():
    gap, ns = ex.adamw_from_scratch_gap(steps=3), ex.newton_schulz_check()
    assert gap <= 1e-6
    assert ns.in_band(ns.ours) >= 0.9 and ns.in_band(ns.before / ns.before.max()) < 0.5
    ex.check_from_scratch(gap, ns)
    with pytest.raises(claims.ClaimFailed):
        ex.check_from_scratch(1e-3, ns)


def test_the_wsd_branch_trains_exactly_like_the_full_wsd_run_until_it_branches():
    lr = ex.GPT_OPTIMIZERS["adamw"]
    steps, fraction = ex.wsd_branch_steps()
    full = ex.run_gpt("adamw", lr, 0, "wsd").curve
    branch = ex.run_gpt("adamw", lr, 0, "wsd", steps, fraction).curve
    split = round(ex.WSD_BRANCH * ex.GPT_STEPS)
    assert branch.lrs[:split] == full.lrs[:split] and branch.lrs[-1] < 0.2 * lr
    shared = [i for i, s in enumerate(full.steps) if s <= split]
    assert [full["loss"][i] for i in shared] == pytest.approx([branch["loss"][i] for i in shared], abs=1e-6)


def test_effective_decay_is_one_over_adams_root_second_moment():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    state = opt.state[model.weight]
    v_hat = state["exp_avg_sq"] / (1 - 0.999**3)
    decay = ex.effective_decay(opt, model)
    assert list(decay) == ["weight"]  # matrices only
    assert decay["weight"] == pytest.approx((1 / (v_hat.sqrt() + 1e-8)).median().item())


def test_pitfall_and_batch_claims_fail_when_the_effect_is_absent():
    same = [curve([0, 5], [2.0, 1.0]), curve([0, 5], [2.0, 1.0])]
    worse = [curve([0, 5], [2.0, 1.3]), curve([0, 5], [2.0, 1.31])]
    assert ex.check_per_epoch(ex.PerEpoch(same, worse)).value == pytest.approx(0.305)
    with pytest.raises(claims.ClaimFailed):
        ex.check_per_epoch(ex.PerEpoch(worse, same))
    largest = ex.BATCHES[-1]
    accuracy = {rule: {b: [0.85, 0.86] for b in ex.BATCHES} for rule in ex.SCALINGS}
    accuracy["fixed"][largest] = [0.60, 0.61]  # too few steps of the same size
    accuracy["linear"][largest] = [0.10, 0.11]  # diverged
    result = ex.BatchScaling(0.01, accuracy)
    assert ex.check_batch_scaling(result) == pytest.approx((25.0, 75.0))
    assert result.difference("sqrt", "linear", largest).value == pytest.approx(75.0)
    accuracy["linear"][largest] = [0.90, 0.91]  # linear scaling that does not break
    with pytest.raises(claims.ClaimFailed):
        ex.check_batch_scaling(ex.BatchScaling(0.01, accuracy))


def test_self_check_nesterov():
    def right(param, grad, buf, lr, momentum):
        buf.mul_(momentum).add_(grad)
        param.sub_(lr * (grad + momentum * buf))

    def heavy_ball(param, grad, buf, lr, momentum):
        buf.mul_(momentum).add_(grad)
        param.sub_(lr * buf)

    assert ex.self_check_nesterov(right) and not ex.self_check_nesterov(heavy_ball)


def test_self_check_wsd():
    def right(step, steps, warmup, fraction):
        if step < warmup:
            return (step + 1) / warmup
        decay = max(1, round(fraction * steps))
        return min(1.0, (steps - step) / decay)

    assert ex.self_check_wsd(right)
    assert not ex.self_check_wsd(lambda step, steps, warmup, fraction: 1.0)


def test_self_check_range_test():
    suggested = ex.range_test_fmnist().suggested
    assert 1e-4 < suggested < 10
    assert ex.self_check_range_test(1.5 * suggested) and not ex.self_check_range_test(5 * suggested)


def test_the_sweeps_and_centres_cover_the_same_factors():
    assert set(ex.GPT_OPTIMIZERS) <= set(optim.NAMES) and set(ex.FM_OPTIMIZERS) <= set(optim.NAMES)
    assert 1.0 in ex.SWEEP and len(ex.SWEEP) >= 3
    assert ex.wsd_branch_steps()[0] < ex.GPT_STEPS


def test_pitfall_claims_read_the_decay_spread_and_the_muon_difference():
    decoupled = ex.L2VersusDecoupled({"a": 2.0, "b": 200.0}, [2.0, 2.1], [2.0, 2.0])
    assert decoupled.spread == pytest.approx(100.0)
    ex.check_pitfalls(decoupled, ex.stats.Difference(0.05, 0.001, 2))
    with pytest.raises(claims.ClaimFailed):
        ex.check_pitfalls(decoupled, ex.stats.Difference(-0.05, 0.001, 2))
    with pytest.raises(claims.ClaimFailed):
        ex.check_pitfalls(ex.L2VersusDecoupled({"a": 1.0, "b": 1.0}, [2.0], [2.0]), ex.stats.Difference(0.05, 0.001, 2))
    with pytest.raises(claims.ClaimFailed, match="least decayed"):  # spread enough, but one decays slower than AdamW
        slow_one = ex.L2VersusDecoupled({"a": 0.5, "b": 100.0}, [2.0], [2.0])
        ex.check_pitfalls(slow_one, ex.stats.Difference(0.05, 0.001, 2))
