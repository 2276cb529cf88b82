"""The experiments of ``chap-quant-basics`` (``notebooks/02_quant_basics.ipynb``): number formats and the
error of quantizing single tensors of the trained baselines.

:func:`tensors` is the only code here that loads baselines and data; every experiment after it is a
function of tensors that the notebook and :func:`bench` both call, and the ``check_*`` functions
assert the chapter's claims for both. The ``self_check_*`` functions are the exercises' checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from effdl import claims, zoo
from effdl.config import device
from effdl.experiments._shared import calibration_images
from effdl.quant import core, observers, pack
from effdl.quant.layers import fold_batchnorms

NOTEBOOK = "02_quant_basics"
FORMATS = (torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2, torch.int8)
CAST_FORMATS = FORMATS[1:5]  # cast with .to(format), no scale
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)  # also cast after a per-tensor scale, like int8
INT_ONLY_BITS = (4, 2, 1)  # integer widths without a torch dtype
CALIBRATION_IMAGES = 512  # training images whose activations the chapter quantizes
ONE_BIT_DB = 20 * math.log10(2)  # 6.02 dB: what halving the step buys in the Δ²/12 model
NOISE_BITS = tuple(range(2, 13))
FIT_FROM = 4  # the Δ²/12 model is fitted and compared from this width up
GRANULARITIES = {"tensor": {}, "channel": {"axis": 0}, "group 32": {"group_size": 32}}
GRANULARITY_BITS = (8, 4, 3)
OBSERVER_NAMES = ("minmax", "moving_average", "percentile", "mse")
OBSERVER_BITS = (8, 6, 4, 3, 2)
PERCENTILE = 99.99
WIDTH_AWARE = {"mse"}  # observers whose range depends on the bit width
CALIBRATION_BATCHES = 8
ROUNDED_VALUE = 0.3  # the input whose rounding bias the chapter measures


def _name(fmt: torch.dtype) -> str:
    return str(fmt).removeprefix("torch.")


# --- the tensors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensors:
    """What the chapter quantizes, all taken from the trained baselines, returned on the CPU."""

    weights: torch.Tensor  # every conv weight of the BN-folded ResNet, in one vector
    conv: torch.Tensor  # one folded conv weight (out, in, k, k): the granularity and packing example
    gpt_weights: torch.Tensor  # every linear weight in the GPT's blocks, in one vector
    gpt_linear: torch.Tensor  # the first block's MLP input weight (out, in)
    activations: torch.Tensor  # the ResNet stem's output (post-ReLU: one-sided), in one vector
    tail: torch.Tensor  # the input of the ResNet's last stage (long-tailed), in one vector


def tensors() -> Tensors:
    """The folded ResNet's conv weights (BatchNorm merged in, the weights that run: ``chap-quant-cnn``), the
    GPT's linear weights and the ResNet's activations on 512 training images.

    The ResNet runs on :func:`effdl.device`; every tensor is then moved to the CPU: the chapter's
    measurements are statistics of a few million values each, plotted with NumPy."""
    resnet = zoo.pretrained("resnet-fmnist").model.eval().to(device())
    convs = [m.weight.detach().cpu() for m in fold_batchnorms(resnet).modules() if isinstance(m, torch.nn.Conv2d)]
    gpt = zoo.pretrained("gpt-shakespeare").model.eval().cpu()
    linears = [m.weight.detach() for m in gpt.blocks.modules() if isinstance(m, torch.nn.Linear)]
    images = torch.cat(calibration_images(CALIBRATION_IMAGES)).to(device())
    with torch.no_grad():
        stem = resnet.stem(images)
        tail = resnet.stages[:-1](stem)
    return Tensors(weights=torch.cat([w.flatten() for w in convs]), conv=convs[3],
                   gpt_weights=torch.cat([w.flatten() for w in linears]),
                   gpt_linear=gpt.blocks[0].mlp[0].weight.detach(), activations=stem.flatten().cpu(),
                   tail=tail.flatten().cpu())  # fmt: skip


# --- formats ----------------------------------------------------------------------------------


def format_table() -> list[dict]:
    """Bits, largest value, smallest normal value and relative step of each format, read from
    ``torch.finfo`` / ``torch.iinfo`` and :func:`~effdl.quant.core.qrange` (``sec-quant-basics-formats``).
    Integers have a constant absolute step of 1, so their smallest value is that step and their
    relative step (``1 / |x|``) is ``None``."""
    rows = []
    for fmt in FORMATS:
        if fmt.is_floating_point:
            info = torch.finfo(fmt)
            rows.append({"format": _name(fmt), "bits": info.bits, "largest": info.max,
                         "smallest": info.tiny, "relative step": info.eps})  # fmt: skip
        else:
            info = torch.iinfo(fmt)
            rows.append({"format": _name(fmt), "bits": info.bits, "largest": info.max, "smallest": 1,
                         "relative step": None})  # fmt: skip
    for bits in INT_ONLY_BITS:
        rows.append({"format": f"int{bits}", "bits": bits, "largest": core.qrange(bits)[1], "smallest": 1,
                     "relative step": None})  # fmt: skip
    return rows


def format_sqnr(x: torch.Tensor) -> dict[str, float]:
    """SQNR of ``x`` in each 16- and 8-bit format (``sec-quant-basics-formats``): cast as is (named after
    the dtype), the fp8 formats also after a per-tensor scale (``"... scaled"``), and symmetric int8 with
    the scale ``max|x| / 127``, so every 8-bit format is compared with a scale from the data."""
    sqnr = {_name(fmt): core.sqnr_db(x, x.to(fmt).float()) for fmt in CAST_FORMATS}
    sqnr |= {f"{_name(fmt)} scaled": core.sqnr_db(x, core.scaled_cast(x, fmt)) for fmt in FP8}
    sqnr["int8"] = core.sqnr_db(x, core.fake_quantize(x, 8))
    return sqnr


def int8_vs_fp8(sqnr: dict[str, float]) -> str:
    """How int8 compares with the two scaled fp8 formats, in words, from :func:`format_sqnr`'s result."""
    fp8 = {"e4m3": sqnr["float8_e4m3fn scaled"], "e5m2": sqnr["float8_e5m2 scaled"]}
    beaten = [name for name, value in fp8.items() if sqnr["int8"] > value]
    if len(beaten) in (0, 2):
        return "beats both fp8 formats" if beaten else "falls short of both fp8 formats"
    return f"beats fp8 {beaten[0]} but falls short of fp8 {next(n for n in fp8 if n not in beaten)}"


def int8_crossover_crest(e4m3_db: float) -> float:
    """The crest factor below which :func:`int8_sqnr_model` puts symmetric int8 above a scaled fp8 format
    measured at ``e4m3_db`` (solves ``int8_sqnr_model(crest) = e4m3_db``)."""
    return 10 ** ((int8_sqnr_model(1.0) - e4m3_db) / 20)


def crest_factor(x: torch.Tensor) -> float:
    """``max|x| / rms(x)`` over the non-zero values of ``x``: how far the largest value, which sets a min-max
    step, is above a typical one. Zeros are left out because every format stores them exactly, so only the
    other values carry rounding noise (after a ReLU, half of them or more are zeros)."""
    nonzero = x[x != 0]
    return (nonzero.abs().max() / nonzero.pow(2).mean().sqrt()).item()


def int8_sqnr_model(crest: float) -> float:
    """Symmetric min-max int8's SQNR predicted by the Δ²/12 model (``sec-quant-basics-noise``):
    ``10 log10(12 * 127^2) - 20 log10(crest)`` dB, with the step ``Δ = max|x| / 127``."""
    return 10 * math.log10(12 * 127**2) - 20 * math.log10(crest)


def check_formats(sqnr: dict[str, float]) -> None:
    """``sec-quant-basics-formats``: a 16-bit float is far more precise than the best 8-bit format, scaled
    or not."""
    best_8bit = max(value for name, value in sqnr.items() if name.startswith(("float8", "int8")))
    claims.claim("bf16 SQNR minus the best 8-bit SQNR (folded ResNet weights)", sqnr["bfloat16"] - best_8bit,
                 ">=", full=12.0, fast=12.0, unit="dB")  # fmt: skip


# --- fixed point, affine and symmetric --------------------------------------------------------


def fixed_point_sweep(x: torch.Tensor, frac_bits: range = range(13)) -> dict[int, float]:
    """SQNR of int8 fixed point ``round(x * 2^p)`` for each number of fractional bits ``p``
    (``sec-quant-basics-fixed-point``)."""
    return {p: core.sqnr_db(x, core.fixed_point(x, p, bits=8)) for p in frac_bits}


def wrapped_cast(x: torch.Tensor, frac_bits: int = 8) -> torch.Tensor:
    """The values that ``torch.round(x * 2^p).to(torch.int8)`` stands for: no clamp, so the cast wraps
    around (the pitfall of ``sec-quant-basics-pitfalls``)."""
    return torch.round(x * 2**frac_bits).to(torch.int8).float() / 2**frac_bits


def affine_vs_symmetric(x: torch.Tensor, bits: tuple[int, ...] = (8, 4)) -> dict[int, dict[str, float]]:
    """SQNR of affine (unsigned grid) and symmetric (signed grid, ``z = 0``) min-max quantization of ``x``
    at each width (``sec-quant-basics-affine``)."""
    return {b: {"affine": core.sqnr_db(x, core.fake_quantize(x, b, signed=False, symmetric=False)),
                "symmetric": core.sqnr_db(x, core.fake_quantize(x, b))} for b in bits}  # fmt: skip


def symmetric_loss(result: dict[int, dict[str, float]]) -> dict[int, float]:
    """dB that symmetric quantization loses to affine at each width of :func:`affine_vs_symmetric`."""
    return {b: r["affine"] - r["symmetric"] for b, r in result.items()}


def check_affine(on_activations: dict[int, dict[str, float]]) -> None:
    """``sec-quant-basics-affine``: on one-sided activations a symmetric grid wastes its negative half."""
    claims.claim("affine minus symmetric SQNR on post-ReLU activations (smaller of int8, int4)",
                 min(symmetric_loss(on_activations).values()), ">=", full=4.0, fast=4.0, unit="dB")  # fmt: skip


# --- the noise model --------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseFit:
    """Predicted (Δ²/12) and measured SQNR of one tensor at each width of ``bits``."""

    bits: tuple[int, ...]
    predicted: list[float]
    measured: list[float]

    def _from(self, from_bits: int) -> slice:
        return slice(self.bits.index(from_bits), None)

    def slope(self, from_bits: int = FIT_FROM) -> float:
        """Measured dB per extra bit: a least-squares line through the widths from ``from_bits`` up."""
        keep = self._from(from_bits)
        return float(np.polyfit(self.bits[keep], self.measured[keep], 1)[0])

    def max_gap(self, from_bits: int = FIT_FROM) -> float:
        """Largest ``|measured - predicted|`` in dB over the widths from ``from_bits`` up."""
        keep = self._from(from_bits)
        return max(abs(m - p) for m, p in zip(self.measured[keep], self.predicted[keep], strict=True))


def noise_model(x: torch.Tensor, bits: tuple[int, ...] = NOISE_BITS) -> NoiseFit:
    """The uniform-noise model ``E[(x - x_hat)^2] = Δ²/12`` against the measured error of affine min-max
    quantization of ``x``, as SQNR in dB (``sec-quant-basics-noise``)."""
    power = x.pow(2).mean().item()
    predicted, measured = [], []
    for b in bits:
        step = (x.max() - x.min()).item() / (2**b - 1)
        predicted.append(10 * math.log10(power / (step**2 / 12)))
        measured.append(core.sqnr_db(x, core.fake_quantize(x, b, signed=False, symmetric=False)))
    return NoiseFit(tuple(bits), predicted, measured)


def check_noise_model(fits: dict[str, NoiseFit]) -> None:
    """``sec-quant-basics-noise``: each extra bit buys the model's 6.02 dB, and the model predicts the
    measured SQNR from 4 bits up."""
    for name, fit in fits.items():
        claims.claim(f"{name} weights: |dB per extra bit - 6.02|", abs(fit.slope() - ONE_BIT_DB), "<=",
                     full=0.15, fast=0.15, unit="dB")  # fmt: skip
    claims.claim(f"largest |measured - Δ²/12 model| from {FIT_FROM} bits up", max(f.max_gap() for f in fits.values()),
                 "<=", full=0.5, fast=0.5, unit="dB")  # fmt: skip


def rounding_bias(value: float = ROUNDED_VALUE, n: int = 100_000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean and mean squared error of rounding ``n`` copies of ``value`` to integers, to nearest and
    stochastically (``sec-quant-basics-noise``)."""
    x = torch.full((n,), value)
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    out = {}
    for rounding in core.ROUNDINGS:
        q = core.quantize(x, one, zero, rounding=rounding, generator=torch.Generator().manual_seed(seed)).float()
        out[rounding] = {"mean": q.mean().item(), "mse": (q - x).pow(2).mean().item()}
    return out


def check_rounding(result: dict[str, dict[str, float]], value: float = ROUNDED_VALUE) -> None:
    """``sec-quant-basics-noise``: stochastic rounding is unbiased on average, rounding to nearest is not."""
    claims.claim(f"stochastic rounding of {value}: |mean error|", abs(result["stochastic"]["mean"] - value), "<=",
                 full=0.01, fast=0.01)  # fmt: skip
    claims.claim(f"nearest rounding of {value}: |mean error|", abs(result["nearest"]["mean"] - value), ">=",
                 full=0.25, fast=0.25)  # fmt: skip


# --- granularity ------------------------------------------------------------------------------


def granularity(w: torch.Tensor, bits: tuple[int, ...] = GRANULARITY_BITS) -> dict[str, dict[int, float]]:
    """SQNR of symmetric min-max quantization of weight ``w`` with one scale per tensor, per output channel
    and per group of 32 consecutive weights of a row, at each width (``sec-quant-basics-granularity``)."""
    return {label: {b: core.sqnr_db(w, core.fake_quantize(w, b, **kwargs)) for b in bits}
            for label, kwargs in GRANULARITIES.items()}  # fmt: skip


def channel_range_ratio(w: torch.Tensor) -> float:
    """Largest over smallest per-output-channel ``max|w|``."""
    channel_max = w.abs().flatten(1).amax(1)
    return (channel_max.max() / channel_max.min()).item()


def check_granularity(results: dict[str, dict[str, dict[int, float]]], bits: int = 4) -> None:
    """``sec-quant-basics-granularity``: per-channel scales beat one per tensor, groups of 32 beat
    per-channel, on every weight measured (the smallest gain is claimed)."""
    channel = min(r["channel"][bits] - r["tensor"][bits] for r in results.values())
    group = min(r["group 32"][bits] - r["channel"][bits] for r in results.values())
    claims.claim(f"per-channel minus per-tensor SQNR at int{bits} (smallest over {len(results)} weights)", channel,
                 ">=", full=3.0, fast=2.0, unit="dB")  # fmt: skip
    claims.claim(f"group-32 minus per-channel SQNR at int{bits} (smallest over {len(results)} weights)", group,
                 ">=", full=0.5, fast=0.5, unit="dB")  # fmt: skip


# --- observers --------------------------------------------------------------------------------


class Observed(NamedTuple):
    """The range an observer chose and the SQNR of affine quantization with it."""

    lo: float
    hi: float
    sqnr: float


def make_observer(name: str, bits: int) -> observers.Observer:
    """The chapter's observer ``name``: the percentile one at the 99.99th, the MSE one searching for ``bits``."""
    kwargs = {"bits": bits} if name == "mse" else {"percentile": PERCENTILE} if name == "percentile" else {}
    return observers.make_observer(name, **kwargs)


def observed_range(observer: observers.Observer, x: torch.Tensor, batches: int = CALIBRATION_BATCHES):
    """Calibrate ``observer`` on ``x`` cut into ``batches`` calibration batches; its range
    (``sec-quant-basics-observers``)."""
    for chunk in x.chunk(batches):
        observer.update(chunk)
    return observer.range()


def observed_sqnr(x: torch.Tensor, bits: int, lo: torch.Tensor, hi: torch.Tensor) -> float:
    """SQNR of affine (unsigned) quantization of ``x`` with the range ``[lo, hi]``."""
    return core.sqnr_db(x, core.fake_quantize(x, bits, signed=False, symmetric=False, lo=lo, hi=hi))


def observer_sweep(x: torch.Tensor, names: tuple[str, ...] = OBSERVER_NAMES,
                   bits: tuple[int, ...] = OBSERVER_BITS) -> dict[str, dict[int, Observed]]:  # fmt: skip
    """Each observer's range and SQNR on ``x`` at each width (``sec-quant-basics-observers``). Only the MSE
    observer chooses its range for the width; the others are calibrated once."""
    out = {}
    for name in names:
        if name in WIDTH_AWARE:
            ranges = {b: observed_range(make_observer(name, b), x) for b in bits}
        else:
            ranges = dict.fromkeys(bits, observed_range(make_observer(name, bits[0]), x))
        out[name] = {b: Observed(lo.item(), hi.item(), observed_sqnr(x, b, lo, hi)) for b, (lo, hi) in ranges.items()}
    return out


def check_observers(sweep: dict[str, dict[int, Observed]], bits: int = 4) -> None:
    """``sec-quant-basics-observers``: on long-tailed activations, clipping at the MSE-optimal range beats
    min-max at low widths."""
    claims.claim(f"MSE minus min-max observer SQNR at int{bits} (long-tailed activations)",
                 sweep["mse"][bits].sqnr - sweep["minmax"][bits].sqnr, ">=", full=3.0, fast=3.0, unit="dB")  # fmt: skip


# --- packing ----------------------------------------------------------------------------------


def packing(w: torch.Tensor, bits: int = 4) -> dict[str, int]:
    """Bytes of ``w``'s per-channel ``bits``-bit codes stored as int32, as int8 and packed, and of their fp32
    scales (``sec-quant-basics-packing``). Raises if unpacking does not give the codes back."""
    codes = core.quantize(w, *core.qparams(*core.minmax(w, 0), bits=bits), bits=bits)
    packed = pack.pack(codes, bits)
    if not torch.equal(pack.unpack(packed, bits, codes.numel()).view_as(codes), codes):
        raise AssertionError("unpack(pack(codes)) did not give the codes back")
    return {"codes": codes.numel(), "int32": 4 * codes.numel(), "int8": codes.numel(),
            "packed": packed.numel(), "scales": 4 * w.shape[0]}  # fmt: skip


def check_packing(sizes: dict[str, int], bits: int = 4) -> None:
    """``sec-quant-basics-packing``: packed ``bits``-bit codes take ``bits / 8`` bytes each."""
    claims.claim(f"packed int{bits} bytes per code", sizes["packed"] / sizes["codes"], "==",
                 full=bits / 8, fast=bits / 8, unit="B")  # fmt: skip


# --- the exercises' checks --------------------------------------------------------------------


def self_check_qparams(scale: float, zero_point: int, value_of_q0: float) -> bool:
    """Exercise 1: affine uint8 quantization of ``[-0.4, 2.1]``: its scale, zero-point and what ``q = 0`` means."""
    s, z = core.qparams(torch.tensor(-0.4), torch.tensor(2.1), 8, signed=False, symmetric=False)
    s, z = s.item(), int(z.item())
    problems = []
    if not math.isclose(scale, s, rel_tol=1e-4):
        problems.append(f"scale {scale} is not (beta - alpha) / (q_max - q_min)")
    if zero_point != z:
        problems.append(f"zero-point {zero_point} is not q_min - round(alpha / s)")
    if not math.isclose(value_of_q0, -z * s, rel_tol=1e-4):
        problems.append(f"q = 0 does not stand for {value_of_q0}: it stands for (0 - z) * s")
    return claims.self_check(problems, f"s = {s:.6f}, z = {z}, q = 0 stands for {-z * s:.4f}")


def smallest_bits(w: torch.Tensor, target_db: float, **granularity_kwargs) -> int:
    """The fewest bits at which symmetric min-max quantization of ``w`` reaches ``target_db``."""
    return next(b for b in range(2, 17) if core.sqnr_db(w, core.fake_quantize(w, b, **granularity_kwargs)) >= target_db)


def self_check_bits(w: torch.Tensor, per_tensor_bits: int, per_channel_bits: int, target_db: float = 30.0) -> bool:
    """Exercise 2: the fewest bits that reach ``target_db`` on ``w``, per tensor and per output channel."""
    tensor, channel = smallest_bits(w, target_db), smallest_bits(w, target_db, axis=0)
    problems = []
    if per_tensor_bits != tensor:
        problems.append(f"per tensor: {per_tensor_bits} bits is not the fewest")
    if per_channel_bits != channel:
        problems.append(f"per channel: {per_channel_bits} bits is not the fewest")
    return claims.self_check(problems, f"per-channel scales save {tensor - channel} bit(s) at {target_db:g} dB")


def self_check_observer(observer: observers.Observer, x: torch.Tensor, bits: int = 4, tolerance: float = 0.3) -> bool:
    """Exercise 3: a fresh ``observer``, calibrated like the chapter's, within ``tolerance`` dB of the MSE
    observer at ``bits`` on ``x``."""
    yours = observed_sqnr(x, bits, *observed_range(observer, x))
    mse = observed_sqnr(x, bits, *observed_range(make_observer("mse", bits), x))
    below = yours < mse - tolerance
    problems = [f"{yours:.2f} dB is more than {tolerance} dB below the MSE observer's {mse:.2f}"] if below else []
    return claims.self_check(problems, f"{yours:.2f} dB vs the MSE observer's {mse:.2f}")


def self_check_fp8_winner(x: torch.Tensor, predicted: str) -> bool:
    """Exercise 5: is ``predicted`` (``"int8"`` or ``"e4m3"``) the format with the higher SQNR on ``x``, both
    with a per-tensor scale?"""
    if predicted not in ("int8", "e4m3"):
        raise ValueError(f"predicted must be 'int8' or 'e4m3', got {predicted!r}")
    int8, e4m3 = core.sqnr_db(x, core.fake_quantize(x, 8)), core.sqnr_db(x, core.scaled_cast(x, torch.float8_e4m3fn))
    winner = "int8" if int8 > e4m3 else "e4m3"
    detail = f"int8 {int8:.1f} dB, scaled e4m3 {e4m3:.1f} dB at a crest factor of {crest_factor(x):.1f}"
    return claims.self_check([f"{winner} wins: {detail}"] if predicted != winner else [], detail)


# --- make bench -------------------------------------------------------------------------------


def bench() -> None:
    """The chapter's headline rows: formats, the Δ²/12 model, rounding, granularity, observers, packing."""
    t = tensors()
    sqnr = format_sqnr(t.weights)
    for name, value in sqnr.items():
        claims.measure(f"SQNR of the folded ResNet weights, {name}", value, "dB")
    check_formats(sqnr)
    check_affine(affine_vs_symmetric(t.activations))
    check_noise_model({"ResNet conv": noise_model(t.weights), "GPT linear": noise_model(t.gpt_weights)})
    check_rounding(rounding_bias())
    check_granularity({"ResNet conv": granularity(t.conv), "GPT mlp.0": granularity(t.gpt_linear)})
    check_observers(observer_sweep(t.tail))
    check_packing(packing(t.conv))
