"""What a sparse tensor costs: bytes of dense, bitmask and CSR storage, and sparse matmul speed
(``sec-prune-unstructured-storage``)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from effdl.bench import compare_latency, time_fn
from effdl.prune.masks import nm_masks


def dense_bytes(weight: torch.Tensor) -> int:
    """Every element stored, zeros included."""
    return weight.numel() * weight.element_size()


def bitmask_bytes(weight: torch.Tensor) -> int:
    """One bit per position (packed into bytes) plus the non-zero values."""
    return (weight.numel() + 7) // 8 + int(weight.count_nonzero()) * weight.element_size()


def csr(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (flattened to rows x inputs) as a ``torch.sparse_csr`` tensor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CSR support is in beta": it works for what this chapter does
        return weight.detach().flatten(1).to_sparse_csr()


def csr_bytes(weight: torch.Tensor) -> int:
    """Bytes of the three arrays PyTorch's CSR really holds: row pointers, column indices (int64), values."""
    sparse = csr(weight)
    parts = (sparse.crow_indices(), sparse.col_indices(), sparse.values())
    return sum(p.numel() * p.element_size() for p in parts)


def random_sparse(rows: int, cols: int, density: float, seed: int = 0) -> torch.Tensor:
    """A dense ``rows x cols`` matrix with a uniform random fraction ``density`` of non-zeros."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) * (torch.rand(rows, cols, generator=gen) < density)


class MatMul(nn.Module):
    """``weight @ x`` as a module, with ``weight`` dense or a sparse (CSR) tensor (``torch.sparse.mm``)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(self.weight, x) if self.weight.is_sparse_csr else self.weight @ x


def sparse_vs_dense(weight: torch.Tensor, inputs: torch.Tensor, rounds: int = 3,
                    min_run_time: float | None = None) -> tuple[float, float]:  # fmt: skip
    """Median seconds of ``weight @ inputs`` as a dense matmul and as a CSR ``torch.sparse.mm``, timed
    interleaved in ``rounds`` (:func:`effdl.bench.compare_latency`)."""
    pair = {"dense": MatMul(weight.detach()), "sparse": MatMul(csr(weight))}
    times = compare_latency(pair, inputs, rounds=rounds, min_run_time=min_run_time)
    return times["dense"], times["sparse"]


def semi_structured_speedup(features: int = 4096, tokens: int = 4096) -> tuple[float, float]:
    """Median seconds of an fp16 linear layer (``tokens x features`` inputs, square weight), dense and with
    its 2:4-masked weight in PyTorch's semi-structured format (``to_sparse_semi_structured``), same run.

    Needs an NVIDIA GPU of compute capability 8.0 or newer, whose sparse tensor cores skip the zeros.
    """
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        raise RuntimeError("2:4 sparse kernels need an NVIDIA GPU with compute capability >= 8.0 (Ampere or newer)")
    from torch.sparse import to_sparse_semi_structured

    weight = torch.randn(features, features, device="cuda", dtype=torch.float16)
    weight = weight * nm_masks({"w": weight.abs()}, 2, 4)["w"]
    sparse = to_sparse_semi_structured(weight)
    x = torch.randn(tokens, features, device="cuda", dtype=torch.float16)
    dense_t = time_fn(lambda: F.linear(x, weight), device="cuda").median
    sparse_t = time_fn(lambda: F.linear(x, sparse), device="cuda").median
    return dense_t, sparse_t
