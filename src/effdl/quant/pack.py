"""Storing low-bit integers densely: 8 / bits values per byte (``sec-quant-basics-packing``, ``chap-quant-cnn``).

A tensor of int4 codes kept in an int8 (or int32) tensor takes 1 (or 4) bytes per value; the
saving that quantization promises only exists once the codes are packed.
"""

from __future__ import annotations

import torch

PACKABLE_BITS = (1, 2, 4, 8)


def _check(bits: int) -> int:
    if bits not in PACKABLE_BITS:
        raise ValueError(f"bits must be one of {PACKABLE_BITS}, got {bits!r}")
    return 8 // bits


def pack(q: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """Pack integer codes of width ``bits`` into a flat uint8 tensor, ``8 // bits`` per byte.

    Signed codes are offset by ``2^(bits-1)`` first; the last byte is zero-padded.
    """
    per_byte = _check(bits)
    low = -(2 ** (bits - 1)) if signed else 0
    codes = q.flatten().to(torch.int32) - low
    if codes.numel() and (codes.min() < 0 or codes.max() >= 2**bits):
        raise ValueError(f"q has values outside the {'signed' if signed else 'unsigned'} {bits}-bit range")
    codes = torch.nn.functional.pad(codes, (0, -codes.numel() % per_byte)).view(-1, per_byte)
    shifts = torch.arange(per_byte, device=q.device, dtype=torch.int32) * bits
    return (codes << shifts).sum(1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, numel: int, signed: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``numel`` codes as int32."""
    per_byte = _check(bits)
    if not 0 <= numel <= packed.numel() * per_byte:
        raise ValueError(f"numel must be in [0, {packed.numel() * per_byte}], got {numel}")
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32)[:, None] >> shifts) & (2**bits - 1)
    return codes.flatten()[:numel] + (-(2 ** (bits - 1)) if signed else 0)


def storage_bits(bits: int) -> int:
    """Bits a code occupies once packed: 3-bit codes go in 4-bit slots, 5..8 in a byte, wider in 16."""
    for slot in (1, 2, 4, 8, 16):
        if bits <= slot:
            return slot
    raise ValueError(f"bits must be in [1, 16], got {bits!r}")


def packed_bytes(numel: int, bits: int) -> int:
    """Bytes of ``numel`` codes of width ``bits`` in the packed layout."""
    return -(-numel * storage_bits(bits) // 8)
