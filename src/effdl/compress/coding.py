"""Entropy coding of integer symbols: the empirical entropy bound, Huffman code lengths, canonical codes and a
bit stream (``sec-combine-huffman``).

Deep Compression's last stage stores each layer's cluster indices and the gaps between its non-zero positions
with a Huffman code: frequent symbols get short codes. A canonical code is fixed by its code lengths alone, so a
file stores one length per symbol, not the code table.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np


def _counts(symbols: Sequence[int] | Mapping[int, int]) -> Mapping[int, int]:
    counts = symbols if isinstance(symbols, Mapping) else Counter(int(s) for s in symbols)
    if not counts or min(counts.values()) <= 0:
        raise ValueError("symbols must be non-empty (and every count positive)")
    return counts


def entropy_bits(symbols: Sequence[int] | Mapping[int, int]) -> float:
    """``n * H``: the fewest bits any code of one symbol at a time can spend on these symbols on average,
    where ``H = -sum p log2 p`` over their empirical frequencies (Shannon's bound; Huffman is within one bit
    per symbol of it). Takes the symbols or their counts."""
    counts = _counts(symbols)
    total = sum(counts.values())
    return -sum(c * math.log2(c / total) for c in counts.values())


def huffman_lengths(symbols: Sequence[int] | Mapping[int, int]) -> dict[int, int]:
    """Code length of each distinct symbol in a Huffman code for these symbols (or their counts): merge the
    two rarest subtrees until one is left; every merge adds one bit to the codes below it. A lone symbol gets
    a one-bit code."""
    counts = _counts(symbols)
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    order = itertools.count()  # breaks ties between equal counts without comparing the lists
    heap = [(c, next(order), [s]) for s, c in counts.items()]
    heapq.heapify(heap)
    lengths = dict.fromkeys(counts, 0)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, next(order), s1 + s2))
    return lengths


def coded_bits(symbols: Sequence[int] | Mapping[int, int], lengths: Mapping[int, int]) -> int:
    """Bits of these symbols (or counts) under a code with these ``lengths``."""
    return sum(c * lengths[s] for s, c in _counts(symbols).items())


def canonical_codes(lengths: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """The canonical prefix code with these lengths, ``{symbol: (code, length)}``: symbols sorted by
    (length, symbol) take consecutive codes, shifted left whenever the length grows."""
    if any(n <= 0 for n in lengths.values()):
        raise ValueError("lengths must be positive")
    if sum(2.0**-n for n in lengths.values()) > 1:
        raise ValueError("lengths violate Kraft's inequality: no prefix code has them")
    codes, code, previous = {}, 0, 0
    for symbol, n in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= n - previous
        codes[symbol] = (code, n)
        code, previous = code + 1, n
    return codes


def encode(symbols: Sequence[int], lengths: Mapping[int, int]) -> bytes:
    """``symbols`` as the canonical code of ``lengths``, packed most significant bit first, the last byte
    padded with zeros."""
    codes = canonical_codes(lengths)
    try:
        bits = "".join(format(code, f"0{n}b") for code, n in (codes[int(s)] for s in symbols))
    except KeyError as missing:
        raise ValueError(f"symbol {missing} has no code length") from None
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def decode(data: bytes, lengths: Mapping[int, int], count: int) -> list[int]:
    """The first ``count`` symbols of ``data`` (the inverse of :func:`encode`)."""
    table = {(n, code): s for s, (code, n) in canonical_codes(lengths).items()}
    longest = max(lengths.values())
    bits = "".join(format(byte, "08b") for byte in data)
    out, code, n = [], 0, 0
    for bit in bits:
        if len(out) == count:
            break
        code, n = (code << 1) | (bit == "1"), n + 1
        if (n, code) in table:
            out.append(table[(n, code)])
            code, n = 0, 0
        elif n == longest:
            raise ValueError("data is not a stream of this code")
    if len(out) < count:
        raise ValueError(f"data holds {len(out)} symbols, fewer than count={count}")
    return out


def encode_fixed(symbols: Sequence[int], width: int) -> bytes:
    """``symbols`` as ``width``-bit unsigned integers, most significant bit first, packed into bytes."""
    values = np.asarray(symbols, dtype=np.int64)
    if not 1 <= width <= 62:
        raise ValueError(f"width must be in [1, 62], got {width}")
    if values.size and (values.min() < 0 or values.max() >= 2**width):
        raise ValueError(f"symbols must be in [0, 2**{width}), got [{values.min()}, {values.max()}]")
    bits = (values[:, None] >> np.arange(width - 1, -1, -1)) & 1
    return np.packbits(bits.astype(np.uint8).ravel()).tobytes()


def decode_fixed(data: bytes, width: int, count: int) -> list[int]:
    """The first ``count`` ``width``-bit integers of ``data`` (the inverse of :func:`encode_fixed`)."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits.size < count * width:
        raise ValueError(f"data holds {bits.size // width} symbols, fewer than count={count}")
    rows = bits[: count * width].reshape(count, width).astype(np.int64)
    return (rows << np.arange(width - 1, -1, -1)).sum(1).tolist()


def width_for(largest: int) -> int:
    """Bits of the narrowest fixed width that holds ``0..largest``."""
    return max(1, int(largest).bit_length())
