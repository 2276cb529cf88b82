"""effdl.lm and effdl.quant.llm: perplexity, GPTQ against RTN, SmoothQuant's invariance, W8A8, int8 kernels."""

import copy
import math

import pytest
import torch
from torch import nn

from effdl import lm
from effdl.models import GPT, GPTConfig
from effdl.quant import llm
from effdl.quant.core import fake_quantize


def _tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, context=32, n_layer=2, n_head=2, n_embd=32)).eval()


def _batches(n=4, t=32, vocab=40):
    ids = torch.randint(0, vocab, (n * t + 1,))
    return lm.token_windows(ids, t, n, batch_size=2)


def test_uniform_model_has_perplexity_of_vocabulary():
    class Uniform(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, ids):
            return torch.zeros(*ids.shape, 50) + self.p

    assert lm.perplexity(Uniform(), _batches(vocab=50)) == pytest.approx(50, rel=1e-5)
    with pytest.raises(ValueError, match="empty"):
        lm.perplexity(Uniform(), [])


def test_token_windows_shift_targets_by_one():
    ids = torch.arange(100)
    (x, y), *_ = lm.token_windows(ids, 10, 9, batch_size=4)
    assert x.shape == (4, 10) and torch.equal(y, x + 1) and x[1, 0] == 10
    with pytest.raises(ValueError, match="n_windows"):
        lm.token_windows(ids, 10, 10)


def test_input_stats_hessian_is_x_transpose_x_over_n():
    layer = nn.Sequential(nn.Linear(6, 3))
    x = torch.randn(5, 4, 6)
    stats = lm.input_stats(layer, ["0"], [(x, None)], hessian=True)["0"]
    flat = x.reshape(-1, 6)
    torch.testing.assert_close(stats.hessian, flat.T @ flat / 20)
    torch.testing.assert_close(stats.absmax, flat.abs().amax(0))
    torch.testing.assert_close(stats.mean_square, stats.hessian.diagonal())
    assert lm.input_stats(layer, ["0"], [(x, None)])["0"].hessian is None  # the d x d matmul only when asked


def test_gptq_with_identity_hessian_is_rtn():
    w = torch.randn(16, 64)
    for group in (None, 16):
        for act_order in (False, True):
            approx = llm.gptq(w, torch.eye(64), 4, group, damp=0.0, act_order=act_order)
            torch.testing.assert_close(approx, llm.rtn(w, 4, group))


@pytest.mark.parametrize("bits, group", [(4, None), (3, 32), (3, 20)])
def test_gptq_beats_rtn_on_correlated_inputs(bits, group):
    torch.manual_seed(0)
    x = torch.randn(2048, 8) @ torch.randn(8, 64) + 0.1 * torch.randn(2048, 64)  # strongly correlated inputs
    w = torch.randn(32, 64)
    h = x.T @ x / len(x)
    error = lambda approx: (x @ (w - approx).T).pow(2).mean().item()  # noqa: E731
    assert error(llm.gptq(w, h, bits, group)) < 0.5 * error(llm.rtn(w, bits, group))
    assert error(llm.gptq(w, h, bits, group, act_order=True)) < 0.5 * error(llm.rtn(w, bits, group))


def test_gptq_arguments():
    with pytest.raises(ValueError, match="hessian"):
        llm.gptq(torch.randn(4, 8), torch.eye(4), 4)
    with pytest.raises(ValueError, match="group_size"):
        llm.gptq(torch.randn(4, 8), torch.eye(8), 4, group_size=0)
    with pytest.raises(ValueError, match="bits"):
        llm.gptq(torch.randn(4, 8), torch.eye(8), 0)
    with pytest.raises(ValueError, match="method"):
        llm.quantize_weights_(_tiny_gpt(), "awq", 4)
    with pytest.raises(ValueError, match="calibration"):
        llm.quantize_weights_(_tiny_gpt(), "gptq", 4)
    with pytest.raises(ValueError, match="empty"):
        llm.quantize_weights_(_tiny_gpt(), "gptq", 4, calibration=[])


def test_sequential_gptq_beats_rtn_on_a_model():
    model, batches = _tiny_gpt(), _batches(8)
    with torch.no_grad():
        model.blocks[0].ln1.weight[:4] = 8.0  # uneven input energy, where GPTQ has something to exploit
    x = batches[0][0]
    error = lambda m: (m(x) - model(x)).pow(2).mean().item()  # noqa: E731
    rtn = llm.quantize_weights_(copy.deepcopy(model), "rtn", 3, 16)
    gptq = llm.quantize_weights_(copy.deepcopy(model), "gptq", 3, 16, calibration=batches)
    assert error(gptq) < 0.7 * error(rtn)


def test_quantize_weights_touches_block_linears_only():
    model = _tiny_gpt()
    emb = model.tok_emb.weight.clone()
    llm.quantize_weights_(model, "rtn", 2)
    assert torch.equal(model.tok_emb.weight, emb)  # the tied embedding / head stays
    assert all(m.weight.unique().numel() <= 4 * m.weight.shape[0] for m in lm.block_linears(model).values())


def test_weight_only_bytes_counts_packed_codes_and_group_scales():
    model = _tiny_gpt()
    fp32 = llm.weight_only_bytes(model, None)
    assert fp32 == sum(p.numel() * 4 for p in model.parameters())
    linear_params = sum(m.weight.numel() for m in lm.block_linears(model).values())
    rows = sum(m.weight.shape[0] for m in lm.block_linears(model).values())
    assert fp32 - llm.weight_only_bytes(model, 8) == linear_params * 3 - rows * 4
    int4_g16 = llm.weight_only_bytes(model, 4, 16)
    assert int4_g16 == fp32 - linear_params * 4 + linear_params // 2 + 4 * linear_params // 16


def test_smoothing_keeps_the_function_and_flattens_activations():
    model = _tiny_gpt()
    with torch.no_grad():
        model.blocks[0].ln1.weight[3] = 30.0  # an outlier channel, as in real LLMs
    batches = _batches()
    stats = lm.input_stats(model, lm.block_linears(model), batches)
    x = batches[0][0]
    before = model(x)
    llm.smooth_(model, stats, alpha=0.5)
    torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)
    after = lm.input_stats(model, lm.block_linears(model), batches)["blocks.0.attn.qkv"].absmax
    ratio = lambda a: (a.max() / a.median()).item()  # noqa: E731
    assert ratio(after) < ratio(stats["blocks.0.attn.qkv"].absmax) / 3
    with pytest.raises(ValueError, match="alpha"):
        llm.smooth_(model, stats, alpha=2)


def test_per_token_activation_quantization_survives_an_outlier_token():
    x = torch.randn(8, 64)
    x[0] *= 100
    err = lambda per_token: (llm.quantize_activation(x, per_token) - x)[1:].pow(2).mean()  # noqa: E731
    assert err(True) < err(False) / 100


def test_w8a8_and_int8_kernels_stay_close_to_float():
    model, batches = _tiny_gpt(), _batches()
    base = lm.perplexity(model, batches)
    for quantized in (llm.w8a8_(_tiny_gpt(), per_token=True), llm.int8_dynamic(model)):
        assert lm.perplexity(quantized, batches) == pytest.approx(base, rel=0.01)
    kernels = {type(m) for m in llm.int8_dynamic(model).modules()}
    assert torch.ao.nn.quantized.dynamic.Linear in kernels and nn.Linear not in kernels
    assert math.isfinite(base)


@pytest.mark.parametrize("bits, tolerance", [(8, 0.02), (4, 0.25)])
def test_weight_only_kernels_match_their_simulation(bits, tolerance):
    torch.manual_seed(0)
    layer = nn.Linear(128, 64)
    x = torch.randn(5, 3, 128)
    real = llm.WeightOnlyLinear(layer, bits, group_size=32)
    weight = llm.rtn(layer.weight, 4, 32) if bits == 4 else fake_quantize(layer.weight, 8, axis=0)
    simulated = nn.functional.linear(x, weight, layer.bias)
    assert (real(x) - simulated).abs().max() < tolerance
    assert real.codes.numel() * real.codes.element_size() == 128 * 64 * bits // 8
    with pytest.raises(ValueError, match="bits"):
        llm.WeightOnlyLinear(layer, 2)
    with pytest.raises(ValueError, match="group_size"):
        llm.WeightOnlyLinear(layer, 4, group_size=48)
    with pytest.raises(ValueError, match="divisible by 16"):
        llm.WeightOnlyLinear(nn.Linear(128, 40), 4, group_size=32)


def test_weight_only_model_reads_fewer_bytes():
    model = _tiny_gpt()
    int4, int8 = llm.weight_only(model, 4, 32), llm.weight_only(model, 8)
    assert llm.decode_weight_bytes(int4) < llm.decode_weight_bytes(int8) < llm.decode_weight_bytes(model) / 3.5
    assert int4.lm_head.bits == 8  # 40 outputs: not a shape the int4 kernel takes
    x = _batches()[0][0]
    relative_error = lambda m: ((m(x) - model(x)).norm() / model(x).norm()).item()  # noqa: E731
    assert relative_error(int8) < 0.01 < relative_error(int4) < 0.1


@pytest.mark.parametrize("bits", [8, 4])
def test_torchao_weight_only_is_as_close_as_ours_and_as_small(bits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64))
    x = torch.randn(6, 128)
    theirs, ours = llm.torchao_weight_only(model, bits, group_size=32), llm.weight_only(model, bits, group_size=32)
    with torch.no_grad():
        reference = model(x)
        errors = [(m(x.to(dtype)).float() - reference).norm() / reference.norm()
                  for m, dtype in ((theirs, torch.bfloat16), (ours, torch.float32))]  # fmt: skip
    assert errors[0] < 1.5 * errors[1] + 0.01  # bf16 activations add about 0.4 % of their own
    assert theirs[0].weight.dtype == torch.bfloat16 and type(theirs[0].weight) is not nn.Parameter
    assert llm.decode_weight_bytes(theirs) < 1.3 * llm.decode_weight_bytes(ours) < llm.decode_weight_bytes(model) / 2
    with pytest.raises(ValueError, match="bits"):
        llm.torchao_weight_only(model, 3)


def test_gptq_on_stacked_layers_equals_gptq_on_each():
    torch.manual_seed(0)
    x = torch.randn(512, 32) @ torch.randn(32, 32)
    h = x.T @ x / len(x)
    a, b = torch.randn(8, 32), torch.randn(16, 32)
    stacked = llm.gptq(torch.cat([a, b]), h, 3, 16, act_order=True)
    torch.testing.assert_close(stacked, torch.cat([llm.gptq(a, h, 3, 16, act_order=True),
                                                   llm.gptq(b, h, 3, 16, act_order=True)]))  # fmt: skip


def test_quantize_weights_can_stop_after_the_first_blocks():
    model, batches = _tiny_gpt(), _batches()
    for method in ("rtn", "gptq"):
        quantized = llm.quantize_weights_(copy.deepcopy(model), method, 3, 16, calibration=batches, blocks=1)
        assert not torch.equal(quantized.blocks[0].mlp[0].weight, model.blocks[0].mlp[0].weight)
        assert torch.equal(quantized.blocks[1].mlp[0].weight, model.blocks[1].mlp[0].weight)
    with pytest.raises(ValueError, match="blocks"):
        llm.quantize_weights_(_tiny_gpt(), "rtn", 4, blocks=0)


def test_first_windows_keeps_the_first_ones_in_batches_of_the_same_size():
    from effdl.experiments import quant_llm as ex

    batches = _batches(n=5)  # batch size 2: 2, 2, 1 windows
    first = ex.first_windows(batches, 3)
    assert [len(x) for x, _ in first] == [2, 1]
    torch.testing.assert_close(torch.cat([y for _, y in first]), torch.cat([y for _, y in batches])[:3])
    assert ex.first_windows(batches, None) is batches
    with pytest.raises(ValueError, match="rounds"):
        ex.compare_decode({}, torch.zeros(1, 2, dtype=torch.long), rounds=0)


def test_shipped_grid_recognises_q4_1_groups_and_our_grid_moves_them():
    from effdl.experiments import quant_llm as ex

    torch.manual_seed(0)
    levels = torch.randint(0, 16, (8, 4, 32)).float()
    levels[..., 0], levels[..., 1] = 0, 15  # every group spans its 16 levels, as Q4_1's do
    offset, step = torch.rand(8, 4, 1) - 0.7, 0.01 + 0.01 * torch.rand(8, 4, 1)
    weight = (offset + step * levels).reshape(8, 128)
    on_grid, moved = ex.shipped_grid(weight)
    assert on_grid == 1.0 and moved > 0.01  # an integer zero-point shifts the grid off the float offset
    assert ex.shipped_grid(torch.randn(8, 128))[0] == 0.0
