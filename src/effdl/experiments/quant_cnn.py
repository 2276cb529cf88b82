"""Chapter 3's experiments (``notebooks/03_quant_cnn.ipynb``): PTQ and QAT of the Fashion-MNIST ResNet,
the int8 engine's speed and file size."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from effdl import bench as measure_bench
from effdl import claims, train, zoo
from effdl.config import pick
from effdl.experiments._shared import calibration_images, fmnist_accuracy
from effdl.quant import QuantConfig, core, quantize_model
from effdl.quant import model as qmodel
from effdl.quant.layers import fold_batchnorms

NOTEBOOK = "03_quant_cnn"
BATCH_THROUGHPUT = 256


def difference_from_torch(weight: torch.Tensor) -> float:
    """Largest gap between our per-channel int8 fake-quantization and ``torch.fake_quantize_per_channel_affine``."""
    scale = core.qparams(*core.minmax(weight, 0))[0].flatten()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32)
    theirs = torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -128, 127)
    return (core.fake_quantize(weight, 8, axis=0) - theirs).abs().max().item()


def qat(model: torch.nn.Module, config: QuantConfig, calibration: list[torch.Tensor]) -> torch.nn.Module:
    """A quantized copy of ``model`` fine-tuned through its quantizers (``sec-quant-cnn-qat``)."""
    quantized = quantize_model(model, config, calibration)
    return train.finetune(quantized, pick(fast=1, full=2), lr=0.01, train_limit=pick(fast=2000, full=20000))


def bench() -> None:
    """The chapter's headline rows on the ResNet: PTQ, QAT, the int8 engine's speed and file size."""
    resnet = zoo.pretrained("resnet-fmnist").model.eval().cpu()
    weights = [m.weight.detach() for m in fold_batchnorms(resnet).modules() if isinstance(m, torch.nn.Conv2d)]
    claims.target("fake-quant vs torch ops, max difference", max(difference_from_torch(w) for w in weights), "<=", 0.0)
    calibration = calibration_images()
    fp32 = 100 * fmnist_accuracy(resnet)
    per_channel = 100 * fmnist_accuracy(quantize_model(resnet, QuantConfig(), calibration))
    per_tensor = 100 * fmnist_accuracy(quantize_model(resnet, QuantConfig(per_channel=False), calibration))
    claims.measure("fp32 test accuracy", fp32, "%")
    claims.target("W8A8 PTQ per-channel drop", fp32 - per_channel, "<=", 0.3, unit="pt")
    claims.target("per-tensor minus per-channel accuracy", per_tensor - per_channel, "<", 0.0, unit="pt")
    w4 = 100 * fmnist_accuracy(qat(resnet, QuantConfig(weight_bits=4, learn_scales=True), calibration))
    claims.target("W4A8 QAT (2 epochs) gap to fp32", fp32 - w4, "<=", 0.5, unit="pt")
    for label in ("ternary", "binary"):
        quantized = qat(resnet, QuantConfig(weight_format=label, act_bits=None), calibration)
        claims.measure(f"{label} QAT (2 epochs) accuracy", 100 * fmnist_accuracy(quantized), "%")
    engine = qmodel.int8_engine(resnet, calibration, calibration[0])
    claims.measure("int8 engine accuracy minus simulated", 100 * fmnist_accuracy(engine) - per_channel, "pt")
    times = measure_bench.compare_latency({"fp32": resnet, "int8": engine},
                                          zoo.example_input("resnet-fmnist", BATCH_THROUGHPUT))  # fmt: skip
    claims.target("int8 engine speed-up (batch 256)", times["fp32"] / times["int8"], ">=", 2.0, unit="x")
    with tempfile.TemporaryDirectory() as folder:
        int8_file = qmodel.save_quantized(quantize_model(resnet, QuantConfig(), calibration), Path(folder) / "q")
        save_file(resnet.state_dict(), Path(folder) / "f")
        fp32_file = measure_bench.size_bytes(Path(folder) / "f")
    claims.target("int8 file / fp32 file", int8_file / fp32_file, "<=", 0.27)
