"""The experiments of ``chap-quant-cnn`` (``notebooks/03_quant_cnn.ipynb``): PTQ and QAT of the Fashion-MNIST
ResNet and CNN, a real int8 engine's accuracy, speed and file size, and the chapter's pitfalls.

:func:`baselines` and :func:`calibration` are where the trained models and the calibration images come
from; each experiment below is a function the notebook and :func:`bench` both call, and the ``check_*``
functions assert the chapter's claims for both. The ``self_check_*`` functions are the exercises' checks.
Accuracies are the book's (:func:`effdl.train.accuracy`, a fraction) on the test split's shared
:func:`~effdl.experiments._shared.fmnist_batches` (its first 1,000 images in fast mode);
differences are reported in points (pt = 0.01).

The models live on :func:`effdl.device` (a GPU where there is one): calibration, the simulations and QAT run
there. The int8 engines have CPU kernels only, so the FX engine, torchao's PT2E route (and its QAT, whose
exported graph is specialized to the CPU) and every timing and profile against them run on the CPU, with
CPU copies of the fp32 model (:func:`~effdl.experiments._shared.on_cpu`).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effdl import bench as timing
from effdl import claims, data, stats, train, zoo
from effdl.config import device, pick
from effdl.experiments._shared import (
    calibration_images,
    fmnist_accuracy,
    fmnist_batches,
    fmnist_correct,
    on_cpu,
    speed_word,  # noqa: F401 (the chapter's notebook calls ex.speed_word)
)
from effdl.quant import QuantConfig, core, quantize_model
from effdl.quant import model as qmodel
from effdl.quant.layers import fold_batchnorms

NOTEBOOK = "03_quant_cnn"
MODELS = ("resnet-fmnist", "cnn-fmnist")
BATCH_THROUGHPUT = 256
SPEED_BATCHES = (1, BATCH_THROUGHPUT)
CALIBRATION_IMAGES = pick(fast=256, full=None)  # None: the shared default, 2,048 training images

PTQ_CONFIGS = {
    "per-channel, min-max": QuantConfig(),
    "per-channel, moving average": QuantConfig(act_observer="moving_average"),
    "per-channel, percentile": QuantConfig(act_observer="percentile"),
    "per-channel, MSE": QuantConfig(act_observer="mse"),
    "per-tensor, min-max": QuantConfig(per_channel=False),
}
PTQ_LABELS = pick(fast=("per-channel, min-max", "per-channel, moving average", "per-tensor, min-max"),
                  full=tuple(PTQ_CONFIGS))  # fmt: skip
SCAN_BITS = 3  # weight bits of the one-layer-at-a-time sensitivity scan

QAT_FORMATS = {
    "W4A8": QuantConfig(weight_bits=4, learn_scales=True),
    "W4": QuantConfig(weight_bits=4, act_bits=None, learn_scales=True),
    "W3": QuantConfig(weight_bits=3, act_bits=None, learn_scales=True),
    "W2": QuantConfig(weight_bits=2, act_bits=None, learn_scales=True),
    "ternary": QuantConfig(weight_format="ternary", act_bits=None),
    "binary": QuantConfig(weight_format="binary", act_bits=None),
}
QAT_LABELS = pick(fast=("W4A8", "ternary"), full=tuple(QAT_FORMATS))
QAT_EPOCHS = pick(fast=1, full=2)
QAT_IMAGES = pick(fast=2000, full=20000, gpu=60000)  # a GPU fine-tunes on the whole train split

SELECTION_SETS = 8  # calibration sets the selection-bias pitfall draws
SELECTION_IMAGES = 64  # images in each
SELECTION_POOL = pick(fast=2048, full=8192)  # training images they are drawn from
SELECTION_ACT_BITS = 5


# --- models, data ------------------------------------------------------------------------------


def baselines() -> dict[str, nn.Module]:
    """The trained ResNet and CNN of ``chap-measuring``, in eval mode on :func:`effdl.device`."""
    return {name: zoo.pretrained(name).model.eval().to(device()) for name in MODELS}


def calibration() -> list[torch.Tensor]:
    """Unlabelled training images for calibration, 256 fast, 2,048 full (``sec-quant-cnn-setup``); the test
    split chooses nothing."""
    return calibration_images(CALIBRATION_IMAGES)


def accuracies(models: dict[str, nn.Module]) -> dict[str, float]:
    """Test accuracy (a fraction) of each model."""
    return {name: fmnist_accuracy(model) for name, model in models.items()}


def difference_from_torch(weight: torch.Tensor) -> float:
    """Largest gap between our per-channel int8 fake-quantization and ``torch.fake_quantize_per_channel_affine``."""
    scale = core.qparams(*core.minmax(weight, 0))[0].flatten()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    theirs = torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -128, 127)
    return (core.fake_quantize(weight, 8, axis=0) - theirs).abs().max().item()


# --- BatchNorm folding, W8A8 PTQ ---------------------------------------------------------------


def folding_gap(model: nn.Module, images: int = 256) -> tuple[int, float]:
    """Number of BatchNorms and the largest change in a logit on ``images`` test images once they are
    folded into the convolutions (``sec-quant-cnn-folding``)."""
    x = data.fashion_mnist("test", limit=images).tensors[0].to(timing.model_device(model))
    with torch.no_grad():
        gap = (fold_batchnorms(model)(x) - model(x)).abs().max().item()
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()), gap


def check_folding(gap: float) -> float:
    """The claim of ``sec-quant-cnn-folding``: folding changes the function by float rounding only."""
    return claims.claim("largest logit change after BN folding", gap, "<=", full=1e-3, fast=1e-3)


@dataclasses.dataclass(frozen=True)
class PTQResult:
    """W8A8 PTQ of ``sec-quant-cnn-ptq``: per-image test correctness of each fp32 model and each variant."""

    fp32: dict[str, torch.Tensor]  # model name -> per-image correctness
    quantized: dict[tuple[str, str], torch.Tensor]  # (model name, variant label) -> per-image correctness

    def accuracy(self, name: str, label: str | None = None) -> float:
        """Test accuracy (a fraction) of model ``name``: fp32, or the variant ``label``."""
        correct = self.fp32[name] if label is None else self.quantized[name, label]
        return correct.double().mean().item()

    def drop(self, name: str, label: str) -> float:
        """Accuracy of fp32 minus accuracy of the variant, in points."""
        return 100 * (self.accuracy(name) - self.accuracy(name, label))

    def paired(self, name: str, a: str, b: str) -> stats.Paired:
        """McNemar's test of variant ``a`` against variant ``b`` on the same test images."""
        return stats.mcnemar(self.quantized[name, a], self.quantized[name, b])


def ptq_observers(models: dict[str, nn.Module], calibration: list[torch.Tensor],
                  labels: tuple[str, ...] = PTQ_LABELS) -> PTQResult:  # fmt: skip
    """Each model at W8A8 with each variant of :data:`PTQ_CONFIGS` in ``labels`` (``sec-quant-cnn-ptq``);
    fast mode leaves out the percentile and MSE observers."""
    fp32 = {name: fmnist_correct(model) for name, model in models.items()}
    quantized = {(name, label): fmnist_correct(quantize_model(model, PTQ_CONFIGS[label], calibration))
                 for name, model in models.items() for label in labels}  # fmt: skip
    return PTQResult(fp32, quantized)


def check_ptq(result: PTQResult) -> float:
    """The claim of ``sec-quant-cnn-ptq``: W8A8 with per-channel weights costs the ResNet at most a few tenths."""
    return claims.claim("W8A8 PTQ per-channel drop (ResNet)", result.drop("resnet-fmnist", "per-channel, min-max"),
                        "<=", full=0.3, fast=1.0, unit="pt")  # fmt: skip


# --- sensitivity, QAT --------------------------------------------------------------------------


def layer_names(model: nn.Module) -> list[str]:
    """The conv and linear layers of the BN-folded ``model``, the ones :func:`quantize_model` wraps."""
    return [n for n, m in fold_batchnorms(model).named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def sensitivity_scan(model: nn.Module, bits: int = SCAN_BITS) -> dict[str, float]:
    """Test accuracy with ``bits``-bit weights in one layer at a time, everything else fp32
    (``sec-quant-cnn-sensitivity``)."""
    configs = {name: QuantConfig(weight_bits=bits, act_bits=None, only=(name,)) for name in layer_names(model)}
    return {name: fmnist_accuracy(quantize_model(model, config)) for name, config in configs.items()}


def qat_finetune(quantized: nn.Module, on: torch.device | None = None) -> nn.Module:
    """Fine-tune a quantized model through its quantizers, in place (``sec-quant-cnn-qat``): SGD, cosine
    schedule, clipped gradients, :data:`QAT_EPOCHS` epochs over :data:`QAT_IMAGES` training images, on device
    ``on`` (default :func:`effdl.device`)."""
    return train.finetune(quantized, QAT_EPOCHS, lr=0.01, train_limit=QAT_IMAGES, device=on)


@dataclasses.dataclass(frozen=True)
class QATRow:
    """One weight format of ``sec-quant-cnn-qat``: accuracy before (PTQ) and after QAT, and QAT's seconds."""

    ptq: float
    qat: float
    seconds: float


def qat_chart(model: nn.Module, calibration: list[torch.Tensor],
              labels: tuple[str, ...] = QAT_LABELS) -> dict[str, QATRow]:  # fmt: skip
    """PTQ and QAT test accuracy of ``model`` in each format of :data:`QAT_FORMATS` in ``labels``
    (``sec-quant-cnn-qat``); fast mode trains W4A8 and ternary only."""
    chart = {}
    for label in labels:
        quantized = quantize_model(model, QAT_FORMATS[label], calibration)
        before, start = fmnist_accuracy(quantized), time.perf_counter()
        qat_finetune(quantized)
        chart[label] = QATRow(before, fmnist_accuracy(quantized), time.perf_counter() - start)
    return chart


def check_qat(chart: dict[str, QATRow], fp32: float) -> None:
    """The claims of ``sec-quant-cnn-qat``: QAT brings W4A8 to within half a point of fp32 (``fp32`` is the
    baseline's accuracy), and ternary weights, which collapse without training, recover with it."""
    claims.claim("W4A8 QAT gap to fp32", 100 * (fp32 - chart["W4A8"].qat), "<=", full=0.5, fast=1.5, unit="pt")
    claims.claim("ternary PTQ accuracy (collapse)", 100 * chart["ternary"].ptq, "<=", full=30, fast=30, unit="%")
    claims.claim("ternary QAT minus PTQ", 100 * (chart["ternary"].qat - chart["ternary"].ptq), ">=",
                 full=50, fast=10, unit="pt")  # fmt: skip


# --- the int8 engine ---------------------------------------------------------------------------


@torch.inference_mode()  # as in effdl.bench.latency: a compiled model would compile again for another grad mode
def predictions(model: nn.Module, batch: int | None = None) -> torch.Tensor:
    """``model``'s class for every test image of :func:`fmnist_batches`, run on ``model``'s device and returned
    on the CPU; with ``batch``, ``batch`` images at a time, the last batch padded with zeros, so a model compiled
    for one static shape compiles once."""
    dev = timing.model_device(model)
    if batch is None:
        return torch.cat([model(x.to(dev)).argmax(1).cpu() for x, _ in fmnist_batches()])
    images = torch.cat([x for x, _ in fmnist_batches()])
    padded = torch.cat([images, images.new_zeros(-len(images) % batch, *images.shape[1:])])
    return torch.cat([model(chunk.to(dev)).argmax(1).cpu() for chunk in padded.split(batch)])[: len(images)]


def labels() -> torch.Tensor:
    """The class of every test image of :func:`fmnist_batches`, in the order of :func:`predictions`."""
    return torch.cat([y for _, y in fmnist_batches()])


@dataclasses.dataclass(frozen=True)
class EngineResult:
    """The ``torch.ao`` int8 engine next to the W8A8 simulation it should reproduce (``sec-quant-cnn-engine``)."""

    engine: nn.Module
    simulated: nn.Module
    engine_predictions: torch.Tensor  # class per test image
    simulated_predictions: torch.Tensor

    @property
    def engine_correct(self) -> torch.Tensor:
        return self.engine_predictions == labels()

    @property
    def simulated_correct(self) -> torch.Tensor:
        return self.simulated_predictions == labels()

    @property
    def agreement(self) -> float:
        """Fraction of test images on which the two predict the same class."""
        return (self.engine_predictions == self.simulated_predictions).double().mean().item()

    @property
    def engine_accuracy(self) -> float:
        return self.engine_correct.double().mean().item()

    @property
    def simulated_accuracy(self) -> float:
        return self.simulated_correct.double().mean().item()


def int8_engine(model: nn.Module, calibration: list[torch.Tensor]) -> EngineResult:
    """``model`` converted to a real int8 CPU model (the engine is built from a CPU copy) and simulated at W8A8
    with the same calibration images on ``model``'s device; their test predictions (``sec-quant-cnn-engine``)."""
    engine = qmodel.int8_engine(model, calibration, calibration[0])
    simulated = quantize_model(model, QuantConfig(), calibration)
    return EngineResult(engine, simulated, predictions(engine), predictions(simulated))


def check_engine(result: EngineResult) -> float:
    """The claim of ``sec-quant-cnn-engine``: the simulation predicts what the int8 engine does."""
    return claims.claim("int8 engine agrees with the simulation", 100 * result.agreement, ">=",
                        full=98, fast=95, unit="% of test images")  # fmt: skip


def engine_speed(model: nn.Module, engine: nn.Module,
                 batches: tuple[int, ...] = SPEED_BATCHES) -> dict[int, dict[str, float]]:  # fmt: skip
    """Seconds per forward pass of fp32 ``model`` and the int8 ``engine`` at each batch size, timed
    interleaved with :func:`effdl.bench.compare_latency` on the CPU, where the engine runs: fp32 is timed
    there too (``sec-quant-cnn-engine``)."""
    models = {"fp32": on_cpu(model), "int8": engine}
    return {batch: timing.compare_latency(models, zoo.example_input("resnet-fmnist", batch)) for batch in batches}


def speedup(times: dict[str, float]) -> float:
    """fp32 seconds over int8 seconds: how many times faster the int8 engine is."""
    return times["fp32"] / times["int8"]


def check_speed(times: dict[int, dict[str, float]]) -> float:
    """The claim of ``sec-quant-cnn-engine`` on speed: on a CPU the int8 engine beats fp32 at batch 256 by
    at least half (by far more on an idle machine with int8 dot-product units). Fast mode times each model
    for a tenth of the time, often on a machine busy with other tests: there it must still be faster."""
    return claims.claim("int8 engine speed-up over fp32, batch 256, CPU", speedup(times[BATCH_THROUGHPUT]), ">=",
                        full=1.5, fast=1.2, unit="x")  # fmt: skip


def file_bytes(model: nn.Module, quantized: nn.Module) -> tuple[int, int]:
    """Bytes of the safetensors files of ``model`` (fp32) and of ``quantized`` (packed codes, scales, biases),
    written from CPU copies."""
    with tempfile.TemporaryDirectory() as folder:
        int8 = qmodel.save_quantized(on_cpu(quantized), Path(folder) / "int8.safetensors")
        save_file(on_cpu(model).state_dict(), Path(folder) / "fp32.safetensors")
        return timing.size_bytes(Path(folder) / "fp32.safetensors"), int8


def check_file(fp32_bytes: int, int8_bytes: int) -> float:
    """The claim of ``sec-quant-cnn-engine`` on size: an int8 file is about a quarter of the fp32 one."""
    return claims.claim("int8 file / fp32 file", int8_bytes / fp32_bytes, "<=", full=0.27, fast=0.27)


def operator_times(models: dict[str, nn.Module]) -> dict[str, dict[str, float]]:
    """Self CPU time (ms) of each operator in one forward pass of each model (a CPU copy where it is elsewhere) at
    batch 256, by ``torch.profiler``, after one untimed pass (a compiled model compiles there, not in the profile)."""
    example, result = zoo.example_input("resnet-fmnist", BATCH_THROUGHPUT), {}
    for label, model in ((label, on_cpu(model)) for label, model in models.items()):
        with torch.inference_mode():
            model(example)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                model(example)
        result[label] = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    return result


def profile_top(times: dict[str, dict[str, float]], top: int = 4) -> dict[str, list[tuple[str, float]]]:
    """The ``top`` operators of each model by self time (ms), from :func:`operator_times`."""
    return {label: sorted(ops.items(), key=lambda item: item[1], reverse=True)[:top] for label, ops in times.items()}


def conv_rates(fp32: nn.Module, times: dict[str, dict[str, float]]) -> dict[str, float]:
    """Operations per second (G/s, two per multiply-add) the convolutions of each model achieve at batch 256:
    the convolutions' FLOPs, counted on ``fp32`` (an int8 convolution does the same multiply-adds), over the
    self time of the convolution operators in :func:`operator_times` (``sec-quant-cnn-engine``). The int8
    engine's convolutions include their fused ReLU; fp32's BatchNorm and ReLU run as operators of their own."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fp32(zoo.example_input("resnet-fmnist", BATCH_THROUGHPUT).to(timing.model_device(fp32)))
    conv_flops = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    rates = {}
    for label, ops in times.items():
        ms = sum(t for op, t in ops.items() if CONV_OPERATOR.search(op))
        if ms == 0:
            raise ValueError(f"times of {label!r} hold no convolution operator: {sorted(ops)[:8]}")
        rates[label] = conv_flops / ms / 1e6
    return rates


CONV_OPERATOR = re.compile(r"::(mkldnn_|_)?conv(olution|2d)")  # aten::mkldnn_convolution, quantized::conv2d_relu
INT8_INSTRUCTIONS = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX"}


def int8_instructions() -> list[str]:
    """This CPU's int8 dot-product extensions, read from ``/proc/cpuinfo`` (empty where there is none, or no
    such file: not Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    flags = next((line.split() for line in text.splitlines() if line.startswith("flags")), [])
    return [name for flag, name in INT8_INSTRUCTIONS.items() if flag in flags]


def int8_instructions_sentence(found: list[str]) -> str:
    """What :func:`int8_instructions` found, as the sentence of ``sec-quant-cnn-engine``."""
    if not found:
        return ("This CPU has none of these instructions, so its int8 gain comes from moving fewer bytes; "
                "expect a larger ratio on one that has them.")  # fmt: skip
    names = found[0] if len(found) == 1 else ", ".join(found[:-1]) + " and " + found[-1]
    return f"This CPU has {names}; expect a smaller ratio on one without them."


# --- the current route: torchao PT2E, compiled -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PT2EResult:
    """torchao's PT2E int8 ResNet next to the FX engine and the simulation (``sec-quant-cnn-pt2e``)."""

    reference: nn.Module  # the converted quantize/dequantize graph, not compiled
    compiled: nn.Module
    correct: torch.Tensor  # per-image test correctness of the compiled model
    agreement: dict[str, float]  # fraction of test images with the same prediction as "simulation", "FX engine"
    seconds: dict[str, float]  # "export, calibrate, convert" and "first call (compiles)"

    @property
    def accuracy(self) -> float:
        return self.correct.double().mean().item()


def pt2e_route(model: nn.Module, calibration: list[torch.Tensor], engine: EngineResult) -> PT2EResult:
    """``model`` through torchao's PT2E flow and ``torch.compile`` (:func:`effdl.quant.model.pt2e_int8`), calibrated
    on the images ``engine`` used; its accuracy, its agreement with ``engine``'s simulation and FX model, and
    the seconds each step takes (``sec-quant-cnn-pt2e``)."""
    start = time.perf_counter()
    reference = qmodel.pt2e_int8(model, calibration, calibration[0])
    converted = time.perf_counter()
    compiled = qmodel.compile_int8(reference)
    classes = predictions(compiled, BATCH_THROUGHPUT)  # the first call compiles, for the size timed later
    compiled_at = time.perf_counter()
    seconds = {"export, calibrate, convert": converted - start, "first call (compiles)": compiled_at - converted}
    agreement = {name: (classes == other).double().mean().item()
                 for name, other in (("simulation", engine.simulated_predictions),
                                     ("FX engine", engine.engine_predictions))}  # fmt: skip
    return PT2EResult(reference, compiled, classes == labels(), agreement, seconds)


def check_pt2e(result: PT2EResult, fp32: float) -> float:
    """The claims of ``sec-quant-cnn-pt2e`` on accuracy: the compiled PT2E model predicts what the simulation
    predicts, and costs at most half a point of ``fp32``'s accuracy (1.5 in fast mode's 1,000 images)."""
    claims.claim("PT2E int8 accuracy minus fp32", 100 * (result.accuracy - fp32), ">=", full=-0.5, fast=-1.5,
                 unit="pt")  # fmt: skip
    return claims.claim("PT2E int8 agrees with the simulation", 100 * result.agreement["simulation"], ">=",
                        full=98, fast=95, unit="% of test images")  # fmt: skip


PT2E_SPEED_BATCHES = pick(fast=(BATCH_THROUGHPUT,), full=SPEED_BATCHES)  # fast mode: one compile fewer


def route_speed(models: dict[str, nn.Module],
                batches: tuple[int, ...] = PT2E_SPEED_BATCHES) -> dict[int, dict[str, float]]:  # fmt: skip
    """Seconds per forward pass of each of ``models`` (a CPU copy where it is elsewhere) at each batch size, timed
    interleaved with :func:`effdl.bench.compare_latency` on the CPU; a compiled model's first call at a new size
    compiles during the warm-up (``sec-quant-cnn-pt2e``)."""
    on_the_cpu = {name: on_cpu(model) for name, model in models.items()}
    return {batch: timing.compare_latency(on_the_cpu, zoo.example_input("resnet-fmnist", batch)) for batch in batches}


def check_pt2e_speed(times: dict[int, dict[str, float]], fp32: str = "fp32", int8: str = "PT2E int8") -> float:
    """The claim of ``sec-quant-cnn-pt2e`` on speed: compiled PT2E int8 beats eager fp32 at batch 256 by at
    least half, as the FX engine must (:func:`check_speed`)."""
    ratio = times[BATCH_THROUGHPUT][fp32] / times[BATCH_THROUGHPUT][int8]
    return claims.claim("PT2E int8 speed-up over fp32, batch 256, CPU", ratio, ">=", full=1.5, fast=1.2, unit="x")


def pt2e_qat_row(model: nn.Module, calibration: list[torch.Tensor], label: str = "W4A8") -> QATRow:
    """The ``label`` format of :data:`QAT_FORMATS` through torchao's PT2E QAT flow (:func:`effdl.quant.model.pt2e_qat`):
    calibrated on ``calibration``, then fine-tuned exactly as :func:`qat_finetune` fine-tunes the book's QAT, on
    the CPU (the exported graph is specialized to the device it was exported on, and the x86 quantizer's is the
    CPU). Accuracy before and after, both simulated (fake quantization) with the ranges held fixed, as the book's
    QAT is measured (``sec-quant-cnn-qat``)."""
    config = QAT_FORMATS[label]
    if config.weight_format != "int" or config.act_bits != 8:
        raise ValueError(f"label must name an integer-weight format with 8-bit activations, got {label!r}")
    prepared = qmodel.pt2e_qat(model, calibration[0], config.weight_bits)
    prepared.eval()  # BatchNorm on running statistics; an exported graph's eval() returns None
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    qmodel.pt2e_observe(prepared, False)
    before = fmnist_accuracy(prepared)
    qmodel.pt2e_observe(prepared, True)
    start = time.perf_counter()
    qat_finetune(prepared, on=torch.device("cpu"))
    seconds = time.perf_counter() - start
    qmodel.pt2e_observe(prepared, False)
    return QATRow(before, fmnist_accuracy(prepared), seconds)


def check_pt2e_qat(library: QATRow, ours: QATRow) -> float:
    """The claim of ``sec-quant-cnn-qat`` on the library's flow: the book's QAT ends within a point of
    torchao's PT2E QAT given the same model, images and fine-tuning (2 points on fast mode's 1,000 images)."""
    return claims.claim("book's QAT minus PT2E QAT, |difference|", 100 * abs(ours.qat - library.qat), "<=",
                        full=1.0, fast=2.0, unit="pt")  # fmt: skip


# --- pitfalls ----------------------------------------------------------------------------------


def scale_less(model: nn.Module) -> float:
    """Test accuracy after the fixed-point cast ``round(w * 2**8)`` to int8 with no scale and no clamp."""
    broken = fold_batchnorms(copy.deepcopy(model))  # layers with no BatchNorm are shared with the model: copy
    with torch.no_grad():
        for module in broken.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.weight.copy_(torch.round(module.weight * 2**8).to(torch.int8).float() / 2**8)
    return fmnist_accuracy(broken)


@dataclasses.dataclass(frozen=True)
class Selection:
    """Several W8A5 versions of one model, one per random calibration set: validation and test accuracy."""

    val: list[float]
    test: list[float]
    test_correct: list[torch.Tensor]

    @property
    def picked_on_test(self) -> int:
        return max(range(len(self.test)), key=self.test.__getitem__)

    @property
    def picked_on_val(self) -> int:
        return max(range(len(self.val)), key=self.val.__getitem__)

    @property
    def optimism(self) -> float:
        """Points by which the test-picked version beats the average version on test."""
        return 100 * (max(self.test) - sum(self.test) / len(self.test))

    def best_vs_worst(self) -> stats.Paired:
        """McNemar's test of the best against the worst version on the test images."""
        worst = min(range(len(self.test)), key=self.test.__getitem__)
        return stats.mcnemar(self.test_correct[self.picked_on_test], self.test_correct[worst])


def selection_bias(model: nn.Module, sets: int = SELECTION_SETS, images: int = SELECTION_IMAGES) -> Selection:
    """``sets`` W8A5 versions of ``model``, each calibrated on ``images`` random training images, scored on
    validation and test (the pitfall of choosing on the test set, ``sec-quant-cnn-pitfalls``)."""
    pool = data.fashion_mnist("train", limit=SELECTION_POOL).tensors[0]
    val, test, correct = [], [], []
    for seed in range(sets):
        subset = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:images]]
        quantized = quantize_model(model, QuantConfig(act_bits=SELECTION_ACT_BITS), [subset])
        val.append(fmnist_accuracy(quantized, "val"))
        correct.append(fmnist_correct(quantized))
        test.append(correct[-1].double().mean().item())
    return Selection(val, test, correct)


@dataclasses.dataclass(frozen=True)
class FoldingPitfall:
    """W4 weight-only PTQ of a model: per-tensor without and with BN folding, and per-channel (folded)."""

    unfolded: torch.Tensor  # per-image test correctness, per-tensor scales on the unfolded weights
    folded: torch.Tensor  # per-tensor scales on the folded weights (what an engine runs)
    per_channel: torch.Tensor  # per-channel scales on the folded weights

    def accuracy(self, which: str) -> float:
        return getattr(self, which).double().mean().item()


def folding_pitfall(model: nn.Module, bits: int = 4) -> FoldingPitfall:
    """``bits``-bit weights with per-tensor scales simulated with and without BN folding, and with per-channel
    scales (the pitfall of forgetting the folding, ``sec-quant-cnn-pitfalls``; and ``sec-quant-cnn-ptq``)."""
    config = QuantConfig(weight_bits=bits, act_bits=None, per_channel=False)
    return FoldingPitfall(
        unfolded=fmnist_correct(quantize_model(model, dataclasses.replace(config, fold_bn=False))),
        folded=fmnist_correct(quantize_model(model, config)),
        per_channel=fmnist_correct(quantize_model(model, QuantConfig(weight_bits=bits, act_bits=None))),
    )


def check_granularity(pitfall: FoldingPitfall) -> float:
    """The claim of ``sec-quant-cnn-ptq`` on granularity: at 4-bit weights per-channel scales are no worse than
    per-tensor ones on the folded ResNet (each channel gets a grid fitted to its own range)."""
    gain = 100 * (pitfall.accuracy("per_channel") - pitfall.accuracy("folded"))
    return claims.claim("W4 per-channel minus per-tensor accuracy (ResNet)", gain, ">=", full=0, fast=0, unit="pt")


# --- exercises ---------------------------------------------------------------------------------


def self_check_mixed_precision(quantized: nn.Module, within: float = 1.5) -> bool:
    """Exercise 1: at most two conv/linear layers of the ResNet left above 3-bit weights, no QAT, and test
    accuracy within ``within`` points of fp32."""
    resnet = zoo.pretrained("resnet-fmnist").model.eval().to(device())
    low = [n for n, m in qmodel.quant_layers(quantized).items()
           if m.weight_quant.fmt == "int" and m.weight_quant.bits <= SCAN_BITS]  # fmt: skip
    higher = len(layer_names(resnet)) - len(low)
    accuracy, fp32 = fmnist_accuracy(quantized), fmnist_accuracy(resnet)
    gap = 100 * (fp32 - accuracy)
    problems = [f"{higher} layers are above {SCAN_BITS} bits or in float; keep at most 2 there"] if higher > 2 else []
    if gap > within:
        problems.append(f"{100 * accuracy:.2f} % is {gap:.2f} pt below fp32; the target is {within} pt")
    return claims.self_check(problems, f"{100 * accuracy:.2f} % with {len(low)} layers at {SCAN_BITS} bits, "
                                       f"{gap:+.2f} pt from fp32")  # fmt: skip


def self_check_lsq(with_lsq: nn.Module, without: nn.Module) -> bool:
    """Exercise 3: two W3 QAT models of the ResNet, with and without learned scales. Right when they are that
    pair and LSQ is not measurably worse (McNemar on the test images); prints what LSQ buys."""
    problems = []
    for model, learned in ((with_lsq, True), (without, False)):
        quants = [m.weight_quant for m in qmodel.quant_layers(model).values()]
        if not (quants and all(q.fmt == "int" and q.bits == 3 for q in quants)):
            problems.append("quantize every layer to 3-bit integer weights")
        elif not all(q.learn_scale == learned for q in quants):
            problems.append(f"learn_scales should be {learned} for the model {'with' if learned else 'without'} LSQ")
    if problems:
        return claims.self_check(problems, "")
    paired = stats.mcnemar(fmnist_correct(with_lsq), fmnist_correct(without))
    verdict = paired.verdict("better", "worse")
    result = f"LSQ buys {100 * paired.difference:+.2f} pt (McNemar p = {paired.p_value:.3f}): {verdict}"
    return claims.self_check([f"{result}; check its learning rate"] if verdict == "worse" else [], result)


def self_check_freezing(result: PT2EResult, operator: str) -> bool:
    """Exercise 6: ``operator`` is the convolution operator that runs only when ``result``'s converted graph is
    compiled without freezing. Right when it appears in that model's profile at batch 256 (and in no
    frozen one's); prints the slowdown, timed interleaved."""
    models = {"frozen": result.compiled, "not frozen": qmodel.compile_int8(copy.deepcopy(result.reference), False)}
    ops = operator_times(models)
    times = timing.compare_latency(models, zoo.example_input("resnet-fmnist", BATCH_THROUGHPUT))
    slowdown = f"without freezing a call takes {times['not frozen'] / times['frozen']:.1f} times as long"
    if operator not in ops["not frozen"] or operator in ops["frozen"]:
        return claims.self_check([f"{operator!r} is not run by the unfrozen model only: compare the convolution "
                                  "operators of the two profiles (ex.operator_times)"], slowdown)  # fmt: skip
    return claims.self_check([], f"{operator} runs only without freezing; {slowdown}")


# --- make bench --------------------------------------------------------------------------------


def bench() -> None:
    """The chapter's headline rows on the ResNet: PTQ, QAT (the book's and torchao's PT2E), the int8 engines'
    speed (FX and compiled PT2E) and file size."""
    models = baselines()
    resnet, cal = models["resnet-fmnist"], calibration()
    weights = [m.weight.detach() for m in fold_batchnorms(resnet).modules() if isinstance(m, nn.Conv2d)]
    claims.target("fake-quant vs torch ops, max difference", max(difference_from_torch(w) for w in weights), "<=", 0.0)
    ptq = ptq_observers({"resnet-fmnist": resnet}, cal, ("per-channel, min-max", "per-tensor, min-max"))
    check_ptq(ptq)
    fp32 = ptq.accuracy("resnet-fmnist")
    claims.measure("fp32 test accuracy", 100 * fp32, "%")
    claims.target("W8A8 PTQ per-channel drop", ptq.drop("resnet-fmnist", "per-channel, min-max"), "<=", 0.3,
                  unit="pt", section="sec-quant-cnn-ptq")  # fmt: skip
    per_tensor = ptq.drop("resnet-fmnist", "per-channel, min-max") - ptq.drop("resnet-fmnist", "per-tensor, min-max")
    claims.target("per-tensor minus per-channel accuracy", per_tensor, "<", 0.0, unit="pt", section="sec-quant-cnn-ptq")
    chart = qat_chart(resnet, cal, ("W4A8", "ternary", "binary"))
    check_qat(chart, fp32)
    check_pt2e_qat(pt2e_qat_row(resnet, cal), chart["W4A8"])
    claims.target("W4A8 QAT (2 epochs) gap to fp32", 100 * (fp32 - chart["W4A8"].qat), "<=", 0.5, unit="pt",
                  section="sec-quant-cnn-qat")  # fmt: skip
    for label in ("ternary", "binary"):
        claims.measure(f"{label} QAT (2 epochs) accuracy", 100 * chart[label].qat, "%")
    engine = int8_engine(resnet, cal)
    check_engine(engine)
    claims.measure("int8 engine accuracy minus simulated", 100 * (engine.engine_accuracy - engine.simulated_accuracy),
                   "pt")  # fmt: skip
    times = engine_speed(resnet, engine.engine)
    check_speed(times)
    claims.measure("int8 engine speed-up (batch 1)", speedup(times[1]), "x")
    claims.target("int8 engine speed-up (batch 256)", speedup(times[BATCH_THROUGHPUT]), ">=", 2.0, unit="x",
                  section="sec-quant-cnn-engine")  # fmt: skip
    pt2e = pt2e_route(resnet, cal, engine)
    check_pt2e(pt2e, fp32)
    route_times = route_speed({"fp32": resnet, "FX int8": engine.engine, "PT2E int8": pt2e.compiled})
    check_pt2e_speed(route_times)
    at_256 = route_times[BATCH_THROUGHPUT]
    claims.measure("PT2E int8 / FX int8 speed, batch 256", at_256["FX int8"] / at_256["PT2E int8"], "x")
    fp32_file, int8_file = file_bytes(resnet, engine.simulated)
    check_file(fp32_file, int8_file)
    claims.target("int8 file / fp32 file", int8_file / fp32_file, "<=", 0.27, section="sec-quant-cnn-engine")
