"""Uniform quantization from scratch: ranges, scales, zero-points, rounding and fake-quantization.

``chap-quant-basics`` (``02_quant_basics``) teaches every function here. A ``b``-bit integer grid
``[q_min, q_max]`` stands for the real values ``(q - z) * s``; :func:`qparams` picks the scale
``s`` and zero-point ``z`` from a real range, :func:`quantize` rounds onto the grid and
:func:`dequantize` maps back. *Granularity* says which elements share one ``(s, z)``: the whole
tensor (``axis=None``), each slice along ``axis`` (per channel), or each run of ``group_size``
consecutive elements of a row (per group, the LLM weight format).
"""

from __future__ import annotations

import math

import torch

ROUNDINGS = ("nearest", "stochastic")


def check_bits(bits: int, low: int = 1, high: int = 16) -> None:
    if not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"bits must be an int in [{low}, {high}], got {bits!r}")


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """The grid of a ``bits``-wide two's-complement (``signed``) or unsigned integer (``sec-quant-basics-grid``)."""
    check_bits(bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """View ``x`` as ``(rows, groups, group_size)``; row ``i`` is ``x[i]`` flattened (``sec-quant-basics-granularity``).

    When ``group_size`` does not divide a row, the last group is padded by repeating the row's
    last value, which leaves that group's min and max unchanged.
    """
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    rows = x.reshape(x.shape[0] if x.dim() > 1 else 1, -1)
    pad = -rows.shape[1] % group_size
    if pad:
        rows = torch.cat([rows, rows[:, -1:].expand(-1, pad)], 1)
    return rows.reshape(rows.shape[0], -1, group_size)


def _reduce_dims(x: torch.Tensor, axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.dim()))
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be in [{-x.dim()}, {x.dim() - 1}] for a {x.dim()}-d tensor, got {axis}")
    axis %= x.dim()
    return tuple(d for d in range(x.dim()) if d != axis)


def minmax(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest value per tensor (``axis=None``) or per slice along ``axis``, kept broadcastable."""
    dims = _reduce_dims(x, axis)
    return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)


def qparams(
    lo: torch.Tensor, hi: torch.Tensor, bits: int = 8, signed: bool = True, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point mapping the real range ``[lo, hi]`` onto the ``bits``-bit grid
    (``sec-quant-basics-affine``).

    Symmetric: ``s = max(|lo|, |hi|) / q_max`` and ``z = 0`` (signed grids only), so real 0 is
    exactly representable and the integer product needs no zero-point terms. Affine: ``s = (hi -
    lo) / (q_max - q_min)`` and ``z = round(q_min - lo / s)``, which spends every level on the
    observed range. The range is widened to include 0 first, so zero (padding, ReLU) stays exact.
    """
    q_min, q_max = qrange(bits, signed)
    lo, hi = torch.as_tensor(lo).float(), torch.as_tensor(hi).float()
    if (lo > hi).any():
        raise ValueError("lo must not exceed hi")
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    tiny = torch.finfo(torch.float32).eps
    if symmetric:
        if not signed:
            raise ValueError("symmetric quantization needs signed=True (an unsigned grid has no negative half)")
        scale = (torch.maximum(-lo, hi) / max(q_max, 1)).clamp(min=tiny)
        return scale, torch.zeros_like(scale)
    scale = ((hi - lo) / (q_max - q_min)).clamp(min=tiny)
    zero_point = (q_min - torch.round(lo / scale)).clamp(q_min, q_max)
    return scale, zero_point


def round_values(x: torch.Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> torch.Tensor:
    """Round to nearest (ties to even) or stochastically: up with probability ``x - floor(x)``
    (``sec-quant-basics-noise``)."""
    if rounding == "nearest":
        return torch.round(x)
    if rounding == "stochastic":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.floor(x + noise)
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int = 8, signed: bool = True,
    rounding: str = "nearest", generator: torch.Generator | None = None,
) -> torch.Tensor:  # fmt: skip
    """``q = clamp(round(x / s) + z, q_min, q_max)`` as an int32 tensor (``sec-quant-basics-affine``)."""
    q_min, q_max = qrange(bits, signed)
    q = round_values(x / scale, rounding, generator) + zero_point
    return q.clamp(q_min, q_max).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``x_hat = (q - z) * s``."""
    return (q.float() - zero_point) * scale


def fake_quantize(
    x: torch.Tensor, bits: int = 8, *, signed: bool = True, symmetric: bool = True, axis: int | None = None,
    group_size: int | None = None, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None,
    rounding: str = "nearest",
) -> torch.Tensor:  # fmt: skip
    """Quantize then dequantize ``x`` in one call: what the model computes with (``sec-quant-basics-affine``).

    The range ``[lo, hi]`` defaults to the min and max of each tensor, channel (``axis``) or group
    (``group_size``); pass a clipped range (from an observer) to trade clipping for rounding error.
    """
    if group_size is not None:
        if axis is not None:
            raise ValueError("pass either axis (per channel) or group_size (per group), not both")
        view = grouped(x, group_size)
        if lo is None or hi is None:
            lo, hi = view.detach().amin(-1, keepdim=True), view.detach().amax(-1, keepdim=True)
        out = fake_quantize(view, bits, signed=signed, symmetric=symmetric, lo=lo, hi=hi, rounding=rounding)
        return out.reshape(view.shape[0], -1)[:, : x.numel() // view.shape[0]].reshape(x.shape)
    if lo is None or hi is None:
        lo, hi = minmax(x.detach(), axis)
    scale, zero_point = qparams(lo, hi, bits, signed, symmetric)
    return dequantize(quantize(x, scale, zero_point, bits, signed, rounding), scale, zero_point).to(x.dtype)


def fixed_point(x: torch.Tensor, frac_bits: int, bits: int = 8) -> torch.Tensor:
    """Fixed point ``Q(x) = round(x * 2^p)``, written as the scale ``s = 2^-p`` (``sec-quant-basics-fixed-point``).

    The integers only mean something together with ``p``: this returns the values they stand for.
    A fixed ``p`` ignores the data's range, so large values clip at ``q_max * 2^-p``.
    """
    if not isinstance(frac_bits, int) or not 0 <= frac_bits <= 30:
        raise ValueError(f"frac_bits must be an int in [0, 30], got {frac_bits!r}")
    scale = torch.tensor(2.0**-frac_bits)
    return dequantize(quantize(x, scale, torch.tensor(0.0), bits, signed=True), scale, torch.tensor(0.0))


def scaled_cast(x: torch.Tensor, dtype: torch.dtype, axis: int | None = None) -> torch.Tensor:
    """``x`` rounded to the float format ``dtype`` after a scale, and back (``sec-quant-basics-formats``).

    The scale maps ``max|x|`` (per tensor, or per slice along ``axis``) to the format's largest
    finite value, as fp8 recipes do: cast as it is, a tensor of small values would use only the
    format's smallest exponents and subnormals. The scale stays in fp32, like an integer format's.
    """
    if not dtype.is_floating_point or torch.finfo(dtype).bits > 16:
        raise ValueError(f"dtype must be a floating-point format of 8 or 16 bits, got {dtype}")
    amax = x.abs().amax(dim=_reduce_dims(x, axis), keepdim=True).float()
    scale = (amax / torch.finfo(dtype).max).clamp(min=torch.finfo(torch.float32).tiny)  # all-zero: 0 stays 0
    return (x / scale).to(dtype).float() * scale


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(E[x^2] / E[(x - x_hat)^2])`` in dB (``sec-quant-basics-noise``)."""
    noise = (x.float() - x_hat.float()).pow(2).mean().item()
    return math.inf if noise == 0 else 10 * math.log10(x.float().pow(2).mean().item() / noise)
