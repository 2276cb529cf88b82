"""Chapter 9's experiments in fast mode: Deep Compression's files read back exactly, the stage sizes fall in
order, the order experiment and the exercises' self-checks."""

import pytest
import torch

from effdl.compress import packfile
from effdl.config import cache_dir
from effdl.experiments import combining as ex


@pytest.fixture(scope="module")
def lenet():
    return ex.deep_compression(ex.LENET)


@pytest.mark.slow
def test_each_stage_is_smaller_and_the_last_file_runs_as_the_model_did(lenet):
    sizes = [lenet.bytes[stage] for stage in ex.STAGES]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert lenet.reloaded_accuracy == lenet.accuracy["huffman"]
    state, meta = packfile.load(cache_dir("combining") / "lenet-fmnist-huffman.bin")
    assert meta["arch"] == {"kind": "mlp", "hidden": [300, 100]}
    for name, tensor in lenet.model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    assert any(abs(lenet.sparsity - step) < 1e-3 for step in ex.SCHEDULE)


@pytest.mark.slow
def test_sparsity_is_chosen_on_validation_within_the_allowed_drop(lenet):
    base = ex.baseline_val_accuracy(ex.LENET)
    chosen = round(lenet.sparsity, 2)
    assert base - lenet.val_by_sparsity[chosen] <= ex.ALLOWED_VAL_DROP
    assert all(base - acc > ex.ALLOWED_VAL_DROP for s, acc in lenet.val_by_sparsity.items() if s > chosen)


@pytest.mark.slow
def test_huffman_beats_fixed_width_and_matches_dahuffman_up_to_its_end_symbol(lenet):
    for row in lenet.layers.values():
        assert row["entropy"] <= row["huffman"] < row["fixed"]
        assert row["huffman"] <= row["dahuffman"] <= row["huffman"] + row["symbols"] // 100 + 32


@pytest.mark.slow
def test_pruning_first_beats_sharing_first_at_few_bits_and_self_checks():
    result = ex.order()
    assert result["prune, then share"][1] > result["share, then prune"][1] + 20
    fits = [b for b in ex.ORDER_BITS if result["pruned"] - result["prune, then share"][b] <= 1]
    assert ex.self_check_fewest_bits(min(fits))
    assert not ex.self_check_fewest_bits(99)


@pytest.mark.slow
def test_exercise_self_checks_accept_the_answer_and_reject_others(lenet):
    entropy = lenet.layers["net.1"]["entropy"]
    assert ex.self_check_entropy(entropy + 0.5) and not ex.self_check_entropy(entropy + 10)
    size = lenet.bytes["shared"]
    assert ex.self_check_shared_bytes(int(size * 1.03)) and not ex.self_check_shared_bytes(size // 2)


@pytest.mark.slow
def test_bit_counting_overstates_the_ratio_of_a_file_with_positions(lenet):
    assert ex.naive_ratio(lenet) == pytest.approx(32 / ex.BITS / (1 - lenet.sparsity))
    assert ex.naive_ratio(lenet) > lenet.ratio("shared")


@pytest.mark.slow
def test_stage_names_are_checked(lenet):
    with pytest.raises(ValueError, match="stage must be one of"):
        ex.stage_file(ex.LENET, "zipped", lenet.model)


def test_8bit_weights_keep_zeros_use_at_most_255_levels_and_pack_smaller():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) > 0.75)
    zeros = [(layer.weight == 0).clone() for layer in (model[0], model[2])]
    original = [layer.weight.clone() for layer in (model[0], model[2])]
    ex.round_weights_8bit_(model)
    for layer, zero, before in zip((model[0], model[2]), zeros, original, strict=True):
        assert (layer.weight[zero] == 0).all()  # pruned weights stay pruned (tiny ones may round to zero too)
        assert torch.unique(layer.weight).numel() <= 256  # 255 levels and zero
        step = before.abs().max() / 127
        assert (layer.weight - before).abs().max() <= step / 2 + 1e-7
    assert ex.packed_bytes(model, share=True) < ex.packed_bytes(model, share=False)


def test_closest_compares_ratios_and_the_chart_finds_the_smallest_close_file():
    assert ex.closest(100, {1: 45, 2: 190, 3: 260}) == 2  # 190/100 is nearer than 100/45
    with pytest.raises(ValueError, match="candidates"):
        ex.closest(100, {})
    right = torch.tensor([True] * 9 + [False])

    def point(size, correct):
        return ex.Compressed(torch.nn.Identity(), size, torch.where(correct, 1, 0))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ex.quant_cnn, "labels", lambda: torch.ones(10, dtype=torch.long))
        chart = ex.Pareto({"cnn-fmnist": point(1000, right), "small": point(50, right.roll(1)),
                           "tiny": point(10, torch.zeros(10, dtype=torch.bool))},
                          {"cnn-fmnist": 2.0, "small": 3.0, "tiny": 0.5})  # fmt: skip
        assert chart.latency_front() == ["tiny", "cnn-fmnist"]  # "small" is slower and no more accurate
        assert chart.accuracy("small") == pytest.approx(90.0)
        assert chart.smallest_within(1.0) == "small"
        assert chart.smallest_within(100.0) == "tiny"
        with pytest.raises(ValueError, match="of must be"):
            chart.smallest_within(1.0, of="vgg")
