"""The exercises' self-checks of Chapters 1-4: each accepts a right answer and rejects a wrong one.

A self-check is what a student calls with an answer (``ex.self_check_...``); it prints ``right`` or
``not yet`` with the reason and returns whether the answer is right. Chapters 5-6 test theirs
beside their chapter's recipes (``test_prune_*.py``). A structural test checks that every chapter
offers at least two self-checks in its exercises and that each exercise states a target.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from effdl import bench, claims, models, zoo
from effdl.experiments import measuring, quant_basics, quant_cnn, quant_llm
from effdl.quant import QuantConfig, core, quantize_model

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _exercises(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    text = next("".join(c["source"]) for c in cells if "## Exercises" in "".join(c["source"]))
    return text.split("## Exercises", 1)[1].split("## References", 1)[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_states_a_target_and_each_chapter_has_two_self_checks(path):
    items = re.split(r"\n(?=\d+\. )", "\n" + _exercises(path).strip())[1:]
    assert len(items) >= 3
    untargeted = [item[:60] for item in items if "target" not in item.lower()]
    assert not untargeted, f"exercises without a checkable target: {untargeted}"
    checks = set(re.findall(r"ex\.(self_check_\w+)\(", _exercises(path)))
    assert len(checks) >= 2, f"only {sorted(checks)} self-checks"


def test_self_check_reports_right_and_not_yet(capsys):
    assert claims.self_check([], "all good") is True
    assert claims.self_check(["scale is off", "zero-point is off"], "unused") is False
    printed = capsys.readouterr().out
    assert "right: all good" in printed and "not yet: scale is off; zero-point is off" in printed


# --- Chapter 1 ---------------------------------------------------------------------------------


def test_measuring_flops_and_knee():
    counted = bench.flops(models.CNN(32, 2).eval(), torch.randn(1, 1, 28, 28))
    assert measuring.self_check_cnn_flops(counted) and not measuring.self_check_cnn_flops(counted + 2)
    ceil = measuring.ceilings()
    knee = round(6 * ceil.matmul_gflops["float32"] / ceil.bandwidth_gbs)
    assert measuring.self_check_knee(knee) and not measuring.self_check_knee(10 * knee)


def test_measuring_decode_bound():
    model = nn.Linear(1000, 1000)
    bound = measuring.ceilings().read_gbs * 1e9 / bench.size_bytes(model)
    assert measuring.self_check_decode_bound(model, 1.02 * bound)
    assert not measuring.self_check_decode_bound(model, 2 * bound)  # e.g. the copy bandwidth's double count


def test_measuring_beats_cnn(monkeypatch):
    """The check's verdicts on stand-in baselines (training real ones would take minutes): the baseline's
    shape, a much narrower and a much wider CNN, with made-up accuracies."""
    shapes = {(32, 2): 0.93, (4, 1): 0.91, (128, 3): 0.95, (4, 2): 0.80}

    def pretrained(name, width=32, depth=2):
        model = models.CNN(width, depth).eval()
        return zoo.Baseline(model, zoo.recipe(name, width=width, depth=depth), {"test_accuracy": shapes[width, depth]})

    monkeypatch.setattr(measuring.zoo, "pretrained", pretrained)
    assert measuring.self_check_beats_cnn(4, 1)  # faster than the baseline's shape, and 91 %
    assert not measuring.self_check_beats_cnn(128, 3)  # accurate, but slower
    assert not measuring.self_check_beats_cnn(4, 2)  # fast, but 80 %


# --- Chapter 2 ---------------------------------------------------------------------------------


def test_quant_basics_qparams_by_hand():
    s = 2.5 / 255  # (beta - alpha) / (q_max - q_min)
    assert quant_basics.self_check_qparams(s, 41, -41 * s)  # z = 0 - round(-0.4 / s) = 41
    assert not quant_basics.self_check_qparams(s, 40, 0.0)


def test_quant_basics_bits_and_observer():
    w = torch.randn(16, 8, 3, 3) * torch.logspace(-2, 0, 16).reshape(-1, 1, 1, 1)  # uneven channel ranges
    per_tensor, per_channel = (quant_basics.smallest_bits(w, 30.0, **kw) for kw in ({}, {"axis": 0}))
    assert per_channel < per_tensor
    assert quant_basics.self_check_bits(w, per_tensor, per_channel)
    assert not quant_basics.self_check_bits(w, per_channel, per_channel)
    tail = torch.cat([torch.rand(20_000), 30 * torch.rand(10)])  # a few large values
    assert quant_basics.self_check_observer(quant_basics.make_observer("mse", 4), tail)
    assert not quant_basics.self_check_observer(quant_basics.make_observer("minmax", 4), tail)


def test_quant_basics_fp8_winner_follows_the_crest_factor():
    x = torch.randn(50_000)
    assert quant_basics.self_check_fp8_winner(x, "int8") and not quant_basics.self_check_fp8_winner(x, "e4m3")
    x[0] = 60 * x.pow(2).mean().sqrt()  # one outlier: int8's step grows, scaled fp8 does not care
    assert quant_basics.self_check_fp8_winner(x, "e4m3") and not quant_basics.self_check_fp8_winner(x, "int8")
    with pytest.raises(ValueError, match="predicted"):
        quant_basics.self_check_fp8_winner(x, "fp8")


def test_scaled_cast_maps_the_largest_value_to_the_format_maximum():
    x = torch.randn(4, 64) * torch.tensor([[1e-4], [1e-2], [1.0], [1e3]])
    for fmt in (torch.float8_e4m3fn, torch.float8_e5m2):
        per_row = core.scaled_cast(x, fmt, axis=0)
        assert torch.allclose(per_row.abs().amax(1), x.abs().amax(1), rtol=1e-6)
        relative = ((per_row - x).abs() / x.abs().amax(1, keepdim=True)).max()
        assert relative <= torch.finfo(fmt).eps  # relative precision, whatever the row's magnitude
    tiny = x[0]  # values near 1e-4 lie below e4m3's smallest subnormal (2^-9) and round to 0 unless scaled
    unscaled = core.sqnr_db(tiny, tiny.to(torch.float8_e4m3fn).float())
    assert core.sqnr_db(tiny, core.scaled_cast(tiny, torch.float8_e4m3fn)) > unscaled + 10
    with pytest.raises(ValueError, match="dtype"):
        core.scaled_cast(x, torch.int8)


# --- Chapter 3 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return zoo.pretrained("resnet-fmnist").model.eval().cpu()


def test_quant_cnn_mixed_precision(resnet):
    two_kept = quant_cnn.layer_names(resnet)[:2]
    w3 = quantize_model(resnet, QuantConfig(weight_bits=3, act_bits=None, skip=tuple(two_kept)))
    assert quant_cnn.self_check_mixed_precision(w3, within=100.0)  # the layers are right; any accuracy passes
    assert not quant_cnn.self_check_mixed_precision(w3, within=-100.0)  # ... and no accuracy passes this one
    assert not quant_cnn.self_check_mixed_precision(quantize_model(resnet, QuantConfig(weight_bits=8, act_bits=None)))


def test_quant_cnn_lsq_pair(resnet):
    with_lsq, without = (quantize_model(resnet, QuantConfig(weight_bits=3, act_bits=None, learn_scales=learned))
                         for learned in (True, False))  # fmt: skip
    assert quant_cnn.self_check_lsq(with_lsq, without)  # before training the two are the same function
    assert not quant_cnn.self_check_lsq(with_lsq, with_lsq)
    assert not quant_cnn.self_check_lsq(without, with_lsq)


def test_quant_cnn_freezing_operator(pt2e_cnn):
    _, _, reference, compiled = pt2e_cnn
    result = quant_cnn.PT2EResult(reference, compiled, torch.ones(1, dtype=torch.bool), {}, {})
    assert quant_cnn.self_check_freezing(result, "aten::mkldnn_convolution")  # fp32 convolutions on dequantized weights
    assert not quant_cnn.self_check_freezing(result, "onednn::qconv_pointwise")  # the frozen model's int8 kernel


# --- Chapter 4 ---------------------------------------------------------------------------------


def test_quant_llm_w8a8_on_the_small_gpt():
    assert quant_llm.self_check_w8a8(0.5, within=10.0, name="gpt-shakespeare")
    assert not quant_llm.self_check_w8a8(0.5, within=-50.0, name="gpt-shakespeare")


def q4_1(weight: torch.Tensor) -> torch.Tensor:
    """A right answer to Exercise 2: 16 levels from each group's minimum to its maximum."""
    groups = core.grouped(weight.detach(), 32)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    step = ((high - low) / 15).clamp(min=1e-12)
    return (low + step * torch.round((groups - low) / step)).reshape(weight.shape)


@pytest.mark.slow
def test_quant_llm_grid_int4():
    assert quant_llm.self_check_grid_int4(q4_1)
    assert not quant_llm.self_check_grid_int4(lambda w: w)  # not a 4-bit quantizer at all
