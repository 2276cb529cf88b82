"""effdl.quant.layers and effdl.quant.model: STE, LSQ, BN folding, whole-model PTQ/QAT, the int8 engine."""

import pytest
import torch
from torch import nn
from torchao.quantization.pt2e import FakeQuantizeBase

from effdl import data, zoo
from effdl.experiments._shared import calibration_images, speed_comparison
from effdl.quant import QuantConfig, calibrate, quantize_model
from effdl.quant import layers as ql
from effdl.quant import model as qm
from effdl.quant.pack import unpack


def test_ste_gradient_matches_torch_fake_quantize():
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    ql.fake_quantize_ste(x, torch.tensor(0.02), torch.tensor(0.0), -64, 63).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    torch.fake_quantize_per_tensor_affine(x, 0.02, 0, -64, 63).sum().backward()
    assert torch.equal(ours, x.grad)
    assert ours[50] == 1 and ours[0] == 0  # passes inside the range, blocks where clipped


def test_learned_scale_gets_a_gradient():
    quant = ql.WeightQuantizer(bits=4, learn_scale=True)
    w = torch.randn(8, 16)
    quant(w).pow(2).sum().backward()
    assert isinstance(quant.scale, nn.Parameter) and quant.scale.grad.abs().sum() > 0


def test_ternary_and_binary_have_three_and_two_levels_per_channel():
    w = torch.randn(4, 50, requires_grad=True)
    for fn, levels in ((ql.ternarize, 3), (ql.binarize, 2)):
        out = fn(w)
        assert all(row.unique().numel() == levels for row in out.detach())
        out.sum().backward()
        assert torch.equal(w.grad, torch.ones_like(w))
        w.grad = None


def test_bad_weight_format_and_bits():
    with pytest.raises(ValueError, match="fmt"):
        ql.WeightQuantizer(fmt="int3")
    with pytest.raises(ValueError, match="bits"):
        ql.WeightQuantizer(bits=1)
    with pytest.raises(ValueError, match="layer"):
        ql.QuantLayer(nn.ReLU(), ql.WeightQuantizer())


def test_fold_bn_matches_conv_then_bn_and_torch():
    conv, bn = nn.Conv2d(3, 8, 3, bias=True).eval(), nn.BatchNorm2d(8)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    bn.eval()
    x = torch.randn(2, 3, 9, 9)
    folded = ql.fold_bn(conv, bn)
    torch.testing.assert_close(folded(x), bn(conv(x)), atol=1e-5, rtol=1e-5)
    reference = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
    torch.testing.assert_close(folded.weight, reference.weight)
    with pytest.raises(ValueError, match="features"):
        ql.fold_bn(conv, nn.BatchNorm2d(4))


def test_fold_batchnorms_removes_every_bn_of_a_resnet():
    model = zoo.build(zoo.recipe("resnet-fmnist").arch).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
    folded = ql.fold_batchnorms(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_w8a8_model_stays_close_to_float_and_w4_costs_half():
    model = zoo.pretrained("cnn-fmnist").model.eval().cpu()
    x = data.fashion_mnist("test", limit=512).tensors[0]
    w8a8 = quantize_model(model, QuantConfig(), calibration_images())
    assert len(qm.quant_layers(w8a8)) == 3
    with torch.no_grad():
        ref, out = model(x), w8a8(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.98
    w4 = quantize_model(model, QuantConfig(weight_bits=4, act_bits=None))
    weights = sum(m.layer.weight.numel() for m in qm.quant_layers(w4).values())
    assert qm.expected_weight_bytes(w4) == weights // 2
    assert qm.quantized_bytes(w4) < qm.quantized_bytes(w8a8) * 0.6


def test_quantize_model_arguments():
    model = zoo.build(zoo.recipe("cnn-fmnist").arch)
    with pytest.raises(ValueError, match="calibration"):
        quantize_model(model, QuantConfig())
    with pytest.raises(ValueError, match="only/skip"):
        quantize_model(model, QuantConfig(act_bits=None, only=("nope",)))
    single = quantize_model(model, QuantConfig(act_bits=None, only=("head.2",)))
    assert list(qm.quant_layers(single)) == ["head.2"]
    with pytest.raises(RuntimeError, match="calibrate"):
        ql.ActQuantizer()(torch.randn(3))
    with pytest.raises(ValueError, match="empty"):
        calibrate(quantize_model(model, QuantConfig(act_bits=None)), [])


def test_saved_file_holds_packed_codes(tmp_path):
    model = zoo.pretrained("cnn-fmnist").model.eval().cpu()
    q = quantize_model(model, QuantConfig(weight_bits=4), calibration_images(256))
    size = qm.save_quantized(q, tmp_path / "q.safetensors")
    assert qm.expected_weight_bytes(q) < size < qm.expected_weight_bytes(q) * 1.25
    state = qm.quantized_state(q)
    layer = qm.quant_layers(q)["features.0.0"]
    codes = unpack(state["features.0.0.weight_codes"], 4, layer.layer.weight.numel())
    scale = state["features.0.0.weight_scale"][:, None, None, None]
    torch.testing.assert_close(codes.reshape(layer.layer.weight.shape) * scale, layer.quantized_weight())


def test_qat_recovers_what_2bit_ptq_loses():
    torch.manual_seed(0)
    x = torch.randn(2048, 16)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    y = teacher(x).argmax(1)
    student = quantize_model(teacher, QuantConfig(weight_bits=2, act_bits=None, learn_scales=True))
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)  # built before any forward: scales must be in it
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in teacher.parameters()) + 36
    accuracy = lambda: (student(x).argmax(1) == y).float().mean().item()  # noqa: E731
    before = accuracy()
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(student(x), y).backward()
        opt.step()
    assert accuracy() > max(before + 0.1, 0.9)


def test_int8_engine_agrees_with_simulation():
    model = zoo.pretrained("cnn-fmnist").model.eval().cpu()
    calib = calibration_images()
    engine = qm.int8_engine(model, calib, calib[0])
    simulated = quantize_model(model, QuantConfig(), calib)
    x = data.fashion_mnist("test", limit=1000).tensors[0]
    with torch.no_grad():
        agree = (engine(x).argmax(1) == simulated(x).argmax(1)).float().mean()
    assert agree > 0.98
    with pytest.raises(ValueError, match="backend"):
        qm.int8_engine(model, calib, calib[0], backend="tpu")


def test_pt2e_int8_compiled_agrees_with_the_simulation(pt2e_cnn):
    model, calib, reference, compiled = pt2e_cnn
    simulated = quantize_model(model, QuantConfig(), calib)
    x = data.fashion_mnist("test", limit=256).tensors[0]
    with torch.inference_mode():
        ours, theirs, ref = simulated(x).argmax(1), compiled(x).argmax(1), reference(x).argmax(1)
    assert (theirs == ref).float().mean() > 0.99  # the compiler keeps the reference arithmetic
    assert (theirs == ours).float().mean() > 0.95  # histogram vs min-max activation ranges differ a little
    with pytest.raises(ValueError, match="example"):
        qm.pt2e_int8(model, calib, calib[0][:1])  # a batch of 1 would be specialized by torch.export


def test_pt2e_qat_fake_quantizes_weights_to_the_grid_and_holds_ranges_when_told():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    x = torch.randn(8, 1, 28, 28)
    prepared = qm.pt2e_qat(model, x, weight_bits=4)
    fake_quantizers = [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]
    weight_quantizers = [m for m in fake_quantizers if m.is_per_channel]
    assert weight_quantizers and all((q.quant_min, q.quant_max) == (-8, 7) for q in weight_quantizers)
    prepared(x)
    scales = [q.scale.clone() for q in fake_quantizers]
    qm.pt2e_observe(prepared, False)
    prepared(100 * x)  # would widen the activation ranges if the observers still ran
    assert all(torch.equal(q.scale, s) for q, s in zip(fake_quantizers, scales, strict=True))
    assert len(fake_quantizers) > len(weight_quantizers)  # activations have fake quantizers too
    qm.pt2e_observe(prepared, True)
    prepared(100 * x)
    assert not all(torch.equal(q.scale, s) for q, s in zip(fake_quantizers, scales, strict=True))


def test_chapter_verdict_words_and_selection_bias_bookkeeping():
    from effdl.experiments import quant_cnn

    assert [quant_cnn.speed_word(r) for r in (6.5, 1.05, 0.8)] == ["faster", "about as fast", "slower"]
    assert [speed_comparison(r) for r in (6.5, 1.05, 0.8)] == ["faster than", "about as fast as", "slower than"]
    assert quant_cnn.speedup({"fp32": 0.03, "int8": 0.01}) == pytest.approx(3.0)
    right = torch.tensor([True] * 90 + [False] * 10)
    versions = quant_cnn.Selection(val=[0.80, 0.90, 0.85], test=[0.91, 0.89, 0.90],
                                   test_correct=[right, right.roll(5), right.roll(9)])  # fmt: skip
    assert (versions.picked_on_test, versions.picked_on_val) == (0, 1)
    assert versions.optimism == pytest.approx(1.0)  # 91 % against a mean of 90 %
    assert versions.best_vs_worst().n == 100


def test_scale_less_pitfall_leaves_the_model_untouched():
    # fold_batchnorms shares the layers no BatchNorm follows (the classifier) with its input model
    from effdl.experiments import quant_cnn

    model = zoo.pretrained("resnet-fmnist").model.eval().cpu()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert quant_cnn.scale_less(model) < 0.5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
