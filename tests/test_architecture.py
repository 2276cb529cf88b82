"""Chapter 8's experiments module: its counting helpers, claims and the exercises' self-checks (no training)."""

import pytest
import torch

from effdl import claims
from effdl.experiments import architecture as ex


def test_separable_macs_by_formula_match_flop_counter_and_the_self_check(capsys):
    assert ex.separable_macs(32, 64, 3, 14) == ex.counted_separable_macs(32, 64, 3, 14)
    assert ex.self_check_separable_ratio(1 / 48 + 1 / 25)
    assert not ex.self_check_separable_ratio(1 / 25)
    assert "1/C_out + 1/k²" in capsys.readouterr().out


def test_self_check_kv_bytes_counts_keys_and_values_per_head():
    context = ex.zoo.recipe("gpt-shakespeare").arch["context"]
    right = 2 * ex.GQA_SHAPE["n_layer"] * 1 * (ex.GQA_SHAPE["n_embd"] // 4) * context * 2  # keys and values, fp16
    assert ex.self_check_kv_bytes(right)
    assert not ex.self_check_kv_bytes(4 * right)


def test_misordered_counts_pairs_ranked_against_latency():
    assert ex.misordered([1, 2, 3], [10, 20, 30]) == 0
    assert ex.misordered([3, 2, 1], [10, 20, 30]) == 1
    assert ex.misordered([1, 3, 2], [10, 20, 30]) == pytest.approx(1 / 3)


def test_swapped_pairs_and_the_batching_claim():
    times = {1: {"a": 0.1, "b": 0.2, "c": 0.5}, 256: {"a": 0.02, "b": 0.01, "c": 0.25}}
    assert ex.swapped_pairs(times) == 1  # a and b change places
    assert ex.check_batching(times) == pytest.approx(20 / 2)
    with pytest.raises(claims.ClaimFailed):
        ex.check_batching({1: {"a": 0.1, "b": 0.2}, 256: {"a": 0.01, "b": 0.02}})


def test_scaling_claim_and_front_read_the_points():
    p = lambda shape, acc, macs: ex.Point(shape, acc, macs, 0)  # noqa: E731
    curves = {"width": [p((8, 1, 14, False), 0.80, 10), p((16, 1, 14, False), 0.82, 20)],
              "depth": [p((8, 1, 14, False), 0.80, 10), p((8, 2, 14, False), 0.81, 40)]}  # fmt: skip
    assert ex.check_scaling(curves) == pytest.approx(1.0)
    assert ex.on_front(curves) == ["w8d1r14", "w16d1r14"]


def test_latency_model_predicts_from_features_and_search_keeps_the_budget():
    model = ex.LatencyModel(torch.tensor([0.1, 0.01, 0.02]).numpy(), {}, 1.0)
    assert model.predict((8, 1, 28, False)) == pytest.approx(0.1 + 0.01 * 72128 / 1e6 + 0.02 * 2)
    assert model.predict((8, 1, 14, False)) == pytest.approx(0.1 + 0.01 * 18032 / 1e6 + 0.02 * 3)  # + the resize
    found = ex.Search(1.0, {(4, 1, 14, False): (0.5, 0.80), (32, 3, 28, True): (2.0, 0.90)},
                      {(8, 1, 28, False): (0.8, 0.79)})  # fmt: skip
    assert found.best()[0] == (4, 1, 14, False) and found.hand_within()[0] == (8, 1, 28, False)
    assert ex.check_search(found) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="within the budget"):
        ex.Search(0.1, found.found, found.hand).best()
    assert len(ex.all_shapes()) == len(set(ex.all_shapes())) == 6 * 3 * 3 + 6 * 2 * 3  # no separable depth-1 copy


def test_self_check_beats_budget_needs_both_faster_and_more_accurate(monkeypatch, capsys):
    monkeypatch.setattr(ex, "cnn", lambda shape: ex.zoo.Baseline(ex.build(shape), None, {}))
    monkeypatch.setattr(ex, "point", lambda shape: ex.Point(shape, 0.9 if shape[0] == 4 else 0.8, 0, 0))
    monkeypatch.setattr(ex, "latencies_ms", lambda models, batch=1: {"yours": 0.1, "budget": 0.2})
    assert ex.self_check_beats_budget((4, 1, 14, False))
    monkeypatch.setattr(ex, "latencies_ms", lambda models, batch=1: {"yours": 0.3, "budget": 0.2})
    assert not ex.self_check_beats_budget((4, 1, 14, False))
    assert not ex.self_check_beats_budget((5, 1, 14, False))
    assert "slower" in capsys.readouterr().out


def test_inverted_residual_macs_by_formula_match_flop_counter():
    formula, counted = ex.inverted_residual_macs(16, 4, 3, 7)
    assert formula == counted == (2 * 4 * 16 * 16 + 9 * 4 * 16) * 49
    assert ex.inverted_residual_macs(16, 1, 3, 7)[0] == ex.inverted_residual_macs(16, 1, 3, 7)[1]
