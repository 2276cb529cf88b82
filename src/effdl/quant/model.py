"""Whole-model quantization: swap layers, calibrate, count bytes, run a real int8 engine (``chap-quant-cnn``).

QAT fine-tunes the result with :func:`effdl.train.finetune` (``sec-quant-cnn-qat``). The production
routes beside the book's own: ``torch.ao`` FX (:func:`int8_engine`) and torchao's PT2E export
quantization (:func:`pt2e_int8`, :func:`pt2e_qat`)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from effdl.quant.core import qrange
from effdl.quant.layers import ActQuantizer, QuantLayer, WeightQuantizer, fold_batchnorms
from effdl.quant.pack import pack, packed_bytes, storage_bits


@dataclass(frozen=True)
class QuantConfig:
    """What :func:`quantize_model` does to each conv/linear layer.

    ``act_bits=None`` quantizes weights only; ``fold_bn=False`` leaves BatchNorm in float after the
    quantized convolutions (what an engine never runs: a pitfall of ``chap-quant-cnn``). ``percentile`` is used
    by percentile observers. ``only`` restricts quantization to the named layers (a sensitivity scan
    quantizes one at a time); ``skip`` keeps the named layers in float.
    """

    weight_bits: int = 8
    weight_format: str = "int"
    per_channel: bool = True
    weight_observer: str = "minmax"
    act_bits: int | None = 8
    act_observer: str = "minmax"
    percentile: float = 99.99
    learn_scales: bool = False
    fold_bn: bool = True
    only: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        weights = {"int": f"W{self.weight_bits}", "ternary": "W-ternary", "binary": "W-binary"}[self.weight_format]
        return weights + (f"A{self.act_bits}" if self.act_bits else "")


def _targets(model: nn.Module, config: QuantConfig) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    unknown = (set(config.skip) | set(config.only or ())) - set(names)
    if unknown:
        raise ValueError(f"only/skip name layers the model does not have: {sorted(unknown)}")
    return [n for n in names if n not in config.skip and (config.only is None or n in config.only)]


def quantize_model(model: nn.Module, config: QuantConfig, calibration: Iterable | None = None) -> nn.Module:
    """A quantized copy of ``model``: BatchNorms folded, conv/linear layers wrapped in :class:`QuantLayer`.

    With activation quantization (``config.act_bits``) the copy is calibrated on ``calibration``
    (batches ``(x, y)`` or inputs) before it is returned; the original model is not touched.
    """
    if config.act_bits is not None and calibration is None:
        raise ValueError("calibration batches are required when config.act_bits is set")
    quantized = fold_batchnorms(copy.deepcopy(model)) if config.fold_bn else copy.deepcopy(model).eval()
    for name in _targets(quantized, config):
        parent, _, attr = name.rpartition(".")
        weight = WeightQuantizer(config.weight_bits, config.per_channel, config.weight_observer,
                                 config.weight_format, config.learn_scales)  # fmt: skip
        act = (ActQuantizer(config.act_bits, config.act_observer, config.learn_scales, config.percentile)
               if config.act_bits else None)  # fmt: skip
        owner = quantized.get_submodule(parent) if parent else quantized
        setattr(owner, attr, QuantLayer(getattr(owner, attr), weight, act))
    if config.act_bits is not None:
        calibrate(quantized, calibration)
    return quantized


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable) -> nn.Module:
    """Run ``batches`` through ``model`` with every :class:`ActQuantizer` observing, then freeze them."""
    quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    dev = next(model.parameters()).device
    model.eval()
    for q in quantizers:
        q.calibrating = True
    seen = 0
    for batch in batches:
        model((batch[0] if isinstance(batch, list | tuple) else batch).to(dev))
        seen += 1
    if seen == 0:
        raise ValueError("batches must not be empty")
    for q in quantizers:
        q.freeze()
    return model


def _weight_codes(layer: QuantLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and per-channel scales of a layer's quantized weight."""
    w = layer.layer.weight.detach()
    wq = layer.weight_quant
    if wq.fmt == "int":
        scale = wq.current_scale(w).detach()
        q_min, q_max = qrange(wq.bits, signed=True)
        return torch.clamp(torch.round(w / scale), q_min, q_max).to(torch.int32), scale.flatten()
    wf = wq(w).detach().flatten(1)
    scale = wf.abs().amax(1)
    codes = torch.round(wf / scale.clamp(min=1e-12)[:, None]).to(torch.int32)
    return (codes.clamp(min=0) if wq.fmt == "binary" else codes).reshape(w.shape), scale


def quantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor an integer deployment needs: packed weight codes, scales, zero-points, float rest."""
    state: dict[str, torch.Tensor] = {}
    layers = quant_layers(model)
    for name, layer in layers.items():
        codes, scale = _weight_codes(layer)
        slot = storage_bits(layer.weight_quant.storage_bits)
        signed = layer.weight_quant.fmt != "binary"
        state[f"{name}.weight_codes"] = pack(codes, slot, signed) if slot <= 8 else codes.to(torch.int16)
        state[f"{name}.weight_scale"] = scale.float()
        if layer.layer.bias is not None:
            state[f"{name}.bias"] = layer.layer.bias.detach().float()
        if layer.act_quant is not None:
            state[f"{name}.input_qparams"] = torch.stack([layer.act_quant.scale.detach(), layer.act_quant.zero_point])
    for key, tensor in model.state_dict().items():
        if not any(key.startswith(f"{n}.") for n in layers):
            state[key] = tensor.detach()
    return {k: v.contiguous() for k, v in state.items()}


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of :func:`quantized_state`: what the quantized model occupies in memory or on disk, minus headers."""
    return sum(t.numel() * t.element_size() for t in quantized_state(model).values())


def save_quantized(model: nn.Module, path: str | Path) -> int:
    """Write :func:`quantized_state` as safetensors (no pickle) and return the file's size in bytes."""
    save_file(quantized_state(model), str(path))
    return Path(path).stat().st_size


def expected_weight_bytes(model: nn.Module) -> int:
    """Packed weight bytes from the bit widths alone, without scales: the ideal a file can approach."""
    return sum(packed_bytes(m.layer.weight.numel(), m.weight_quant.storage_bits) for m in quant_layers(model).values())


def int8_engine(model: nn.Module, calibration: Iterable, example: torch.Tensor, backend: str = "onednn") -> nn.Module:
    """A truly int8 model for CPU: ``torch.ao`` FX graph-mode PTQ, per-channel weights, min-max activations.

    The kernels are oneDNN int8 convolutions and matmuls (``sec-quant-cnn-engine``). Not FBGEMM (the
    ``"x86"``/``"fbgemm"`` backends) with full-range 8-bit activations: on a CPU without VNNI its kernels add
    pairs of u8 x s8 products in int16 and saturate, which on an AVX2-only CPU cost the ResNet 3 points
    and 6 % of its predictions against the simulation (oneDNN: 0.5 %); FBGEMM needs ``reduce_range`` 7-bit
    activations there.

    This API (``torch.ao.quantization.quantize_fx``) is deprecated in favour of PT2E export quantization
    in torchao (:func:`pt2e_int8`), which reaches the same kernels through ``torch.compile``; it is the
    eager route.
    """
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"backend must be one of {torch.backends.quantized.supported_engines}, got {backend!r}")
    torch.backends.quantized.engine = backend
    qconfig = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices; the chapter names the API's status
        prepared = prepare_fx(copy.deepcopy(model).cpu().eval(), QConfigMapping().set_global(qconfig), (example,))
        with torch.no_grad():
            for batch in calibration:
                prepared(batch[0] if isinstance(batch, list | tuple) else batch)
        return convert_fx(prepared)


def _exported(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` captured by ``torch.export`` with a free batch dimension (``example`` needs a batch of 2 or more:
    a batch of 1 would be specialized)."""
    if example.shape[0] < 2:
        raise ValueError(f"example must hold at least 2 inputs (a batch of 1 is specialized), got {example.shape[0]}")
    batch = {0: torch.export.Dim.AUTO}
    return torch.export.export(model, (example,), dynamic_shapes=(batch,)).module()


def _x86_quantizer(weight_bits: int, is_qat: bool):
    """torchao's ``X86InductorQuantizer``: per-channel symmetric weights (8 bits, or ``weight_bits`` on the
    range ``qrange(weight_bits)`` stored in int8) and per-tensor u8 activations, with its default observers."""
    import dataclasses

    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    config = x86.get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if weight_bits != 8:
        q_min, q_max = qrange(weight_bits)
        weight = dataclasses.replace(config.weight, quant_min=q_min, quant_max=q_max)
        config = dataclasses.replace(config, weight=weight)
    return x86.X86InductorQuantizer().set_global(config)


def pt2e_int8(model: nn.Module, calibration: Iterable[torch.Tensor], example: torch.Tensor) -> nn.Module:
    """torchao's PT2E route to int8 on x86 CPUs (``sec-quant-cnn-pt2e``), before compiling.

    ``torch.export`` captures the graph, ``prepare_pt2e`` inserts the ``X86InductorQuantizer``'s observers
    (per-channel int8 weights, histogram-calibrated u8 activations), ``calibration`` runs through them, and
    ``convert_pt2e`` replaces them with quantize/dequantize pairs: a reference model, still computing in
    fp32, that :func:`compile_int8` turns into int8 kernels.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    prepared = prepare_pt2e(_exported(copy.deepcopy(model).cpu().eval(), example), _x86_quantizer(8, is_qat=False))
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return pt2e_convert(prepared)


def pt2e_convert(prepared: nn.Module) -> nn.Module:
    """``convert_pt2e``: observers or fake quantizers become quantize/dequantize pairs with frozen scales."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # model.eval() is refused on exported graphs otherwise
    return converted


class _Compiled(nn.Module):
    """``torch.compile`` of ``graph`` with Inductor's ``freezing`` set while it runs (and so when it compiles)."""

    def __init__(self, graph: nn.Module, freezing: bool) -> None:
        super().__init__()
        self.freezing = freezing
        self.compiled = torch.compile(graph, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch._inductor.config.patch(freezing=self.freezing), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "To copy construct from a tensor")  # Inductor's own, when compiling
            return self.compiled(x)


def compile_int8(converted: nn.Module, freezing: bool = True) -> nn.Module:
    """``torch.compile`` (Inductor) of a :func:`pt2e_int8` model: each dequantize-conv-quantize pattern becomes
    one oneDNN int8 kernel (``sec-quant-cnn-pt2e``). ``freezing`` makes the weights constants of the compiled
    graph, quantized and packed once, at compile time; without it those patterns do not match and the
    convolutions run in fp32 on weights dequantized in every call (exercise 6 of ``chap-quant-cnn``).
    torchao's recipe sets ``torch._inductor.config.freezing`` for the whole process; here it is set for this
    model's calls only. Shapes are static: the first call at each batch size compiles."""
    return _Compiled(converted, freezing)


def pt2e_qat(model: nn.Module, example: torch.Tensor, weight_bits: int = 8) -> nn.Module:
    """torchao's PT2E QAT for convolutions (``sec-quant-cnn-qat``): the exported training graph with
    fake quantizers (``weight_bits``-bit per-channel weights, u8 activations) and BatchNorm folding simulated,
    ready to calibrate and fine-tune; :func:`pt2e_convert` turns the trained result into quantize/dequantize
    pairs. Its fake quantizers track moving min/max ranges; the book's own QAT learns its scales (LSQ)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    prepared = prepare_qat_pt2e(_exported(copy.deepcopy(model).cpu().train(), example),
                                _x86_quantizer(weight_bits, is_qat=True))  # fmt: skip
    allow_exported_model_train_eval(prepared)  # train.finetune calls model.train() / model.eval()
    return prepared


def pt2e_observe(prepared: nn.Module, enabled: bool) -> None:
    """Let the fake quantizers of a :func:`pt2e_qat` model follow their inputs' ranges (calibration, training)
    or hold them fixed (evaluation: a test image must never move a scale)."""
    from torchao.quantization.pt2e.fake_quantize import disable_observer, enable_observer

    prepared.apply(enable_observer if enabled else disable_observer)
