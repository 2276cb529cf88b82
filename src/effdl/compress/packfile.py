"""One file that holds a compressed model, stage by stage of Deep Compression (``sec-combine-deep``).

Every tensor of a state dict is stored: a weight with zeros as the gaps between its non-zero positions plus
its non-zero values, the values either as float32 or as indices into a float32 codebook when they take few
distinct values (after :func:`effdl.compress.sharing.share_weights_`); the gaps and indices are written at a
fixed width or with a Huffman code (:mod:`effdl.compress.coding`); everything else (biases, norms) as raw
bytes. A JSON header names each tensor's shape, dtype and parts, so :func:`load` rebuilds the state dict
exactly, without pickle.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effdl.compress import coding

MAGIC = b"EFDC"
MAX_CODEBOOK = 256  # values per weight tensor an index can address (8-bit indices at most)
PARTS = ("header", "dense", "values", "codebooks", "indices", "positions", "tables")


def _is_sparse_weight(tensor: torch.Tensor) -> bool:
    return tensor.dim() >= 2 and tensor.is_floating_point() and bool((tensor == 0).any())


def gap_symbols(gaps: list[int], limit: int) -> list[int]:
    """Gaps between non-zeros as symbols in ``[0, limit]``: ``g < limit`` is "``g`` zeros, then a non-zero";
    ``limit`` is a filler, "``limit`` zeros and no non-zero" (Han et al.'s relative index with filler zeros),
    so that a few long gaps do not widen every symbol."""
    out = []
    for gap in gaps:
        out += [limit] * (gap // limit) + [gap % limit]
    return out


def positions_of(symbols: list[int], limit: int) -> torch.Tensor:
    """Positions of the non-zeros from :func:`gap_symbols` (its inverse, summed)."""
    steps = torch.tensor(symbols, dtype=torch.long)
    step = torch.where(steps == limit, limit, steps + 1)
    return (step.cumsum(0) - 1)[steps != limit]


class _Writer:
    def __init__(self, huffman: bool):
        self.huffman, self.blobs, self.bytes_by_part = huffman, [], Counter()

    def blob(self, data: bytes, part: str) -> int:
        self.blobs.append(data)
        self.bytes_by_part[part] += len(data)
        return len(data)

    def symbols(self, values: list[int], part: str) -> dict[str, Any]:
        """Integer symbols at a fixed width, or Huffman-coded with their code-length table."""
        if not self.huffman:
            width = coding.width_for(max(values, default=0))
            return {"width": width, "size": self.blob(coding.encode_fixed(values, width), part)}
        lengths = coding.huffman_lengths(values)
        table = bytes(lengths.get(s, 0) for s in range(max(lengths) + 1))
        return {"table": self.blob(table, "tables"), "size": self.blob(coding.encode(values, lengths), part)}


def _write_tensor(writer: _Writer, tensor: torch.Tensor, share: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
    if not _is_sparse_weight(tensor):
        entry["dense"] = writer.blob(tensor.contiguous().numpy().tobytes(), "dense")
        return entry
    flat = tensor.flatten()
    positions = flat.nonzero().flatten()
    values = flat[positions].float()
    gaps = (torch.diff(positions, prepend=torch.tensor([-1])) - 1).tolist()  # zeros before each non-zero
    gap_bits = min(range(1, 17), key=lambda bits: bits * len(gap_symbols(gaps, 2**bits - 1)))
    symbols = gap_symbols(gaps, 2**gap_bits - 1)
    entry["nnz"], entry["gap_limit"], entry["gap_symbols"] = positions.numel(), 2**gap_bits - 1, len(symbols)
    entry["gaps"] = writer.symbols(symbols, "positions")
    if not share:
        entry["values"] = writer.blob(values.numpy().tobytes(), "values")
        return entry
    codebook, index = torch.unique(values, return_inverse=True)
    if codebook.numel() > MAX_CODEBOOK:
        raise ValueError(f"share=True needs at most {MAX_CODEBOOK} distinct values per weight, "
                         f"a tensor of shape {tuple(tensor.shape)} has {codebook.numel()}")  # fmt: skip
    entry["codebook"] = writer.blob(codebook.numpy().tobytes(), "codebooks")
    entry["indices"] = writer.symbols(index.tolist(), "indices")
    return entry


def save(state: Mapping[str, torch.Tensor], path: str | Path, *, share: bool = True, huffman: bool = True,
         meta: dict[str, Any] | None = None) -> dict[str, int]:  # fmt: skip
    """Write ``state`` (a state dict on the CPU) to ``path`` and return its bytes by part (:data:`PARTS`;
    they sum to the file's size). ``share`` stores non-zero weights as codebook indices, ``huffman`` codes
    gaps and indices with Huffman codes instead of a fixed width; ``meta`` (e.g. the architecture) goes in
    the header."""
    writer = _Writer(huffman)
    tensors = {name: _write_tensor(writer, t.detach().cpu(), share) for name, t in state.items()}
    header = json.dumps({"meta": meta or {}, "tensors": tensors}, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(header)) + header)
        for blob in writer.blobs:
            f.write(blob)
    sizes = {part: writer.bytes_by_part[part] for part in PARTS[1:]}
    return {"header": len(MAGIC) + 4 + len(header), **sizes}


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        chunk, self.at = self.data[self.at : self.at + size], self.at + size
        return chunk

    def symbols(self, spec: dict[str, Any], count: int) -> list[int]:
        if "width" in spec:
            return coding.decode_fixed(self.take(spec["size"]), spec["width"], count)
        lengths = {s: n for s, n in enumerate(self.take(spec["table"])) if n}
        return coding.decode(self.take(spec["size"]), lengths, count)


def _read_tensor(reader: _Reader, entry: dict[str, Any]) -> torch.Tensor:
    dtype, shape = getattr(torch, entry["dtype"]), entry["shape"]
    if "dense" in entry:
        raw = np.frombuffer(reader.take(entry["dense"]), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
        return torch.from_numpy(raw.copy()).reshape(shape)
    nnz = entry["nnz"]
    positions = positions_of(reader.symbols(entry["gaps"], entry["gap_symbols"]), entry["gap_limit"])
    if "values" in entry:
        values = torch.from_numpy(np.frombuffer(reader.take(entry["values"]), dtype=np.float32).copy())
    else:
        codebook = torch.from_numpy(np.frombuffer(reader.take(entry["codebook"]), dtype=np.float32).copy())
        values = codebook[torch.tensor(reader.symbols(entry["indices"], nnz), dtype=torch.long)]
    flat = torch.zeros(int(np.prod(shape)), dtype=torch.float32)
    flat[positions] = values
    return flat.to(dtype).reshape(shape)


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state dict, meta)`` from a file written by :func:`save`."""
    data = Path(path).read_bytes()
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path} is not a packed model file (it does not start with {MAGIC!r})")
    (length,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    header = json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + length])
    reader = _Reader(data[len(MAGIC) + 4 + length :])
    state = {name: _read_tensor(reader, entry) for name, entry in header["tensors"].items()}
    return state, header["meta"]
