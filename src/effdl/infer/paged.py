"""A paged key/value cache (Kwon et al., 2023, "vLLM"): keys and values live in fixed-size blocks of one shared
pool; each sequence has a block table (its blocks in order) and takes a block from the free list only when it
fills the last one, and gives its blocks back when it ends. A contiguous cache reserves the longest possible
sequence for every row; a paged one wastes at most one partly filled block per sequence.

:class:`PagedKVCache` has the interface :func:`effdl.infer.kv_cache.forward_cached` uses (``lengths``,
``store``, ``reset``), so the same forward pass, generation and batching run on it. A contiguous cache's bytes are
:func:`effdl.lm.kv_cache_bytes` of the longest sequence, times the rows.
"""

from __future__ import annotations

import math

import torch

from effdl.models import GPTConfig


class PagedKVCache:
    """``blocks`` blocks of ``block_size`` positions for ``batch`` sequences of up to ``max_tokens`` each."""

    def __init__(self, cfg: GPTConfig, batch: int, blocks: int, block_size: int = 16, max_tokens: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:  # fmt: skip
        max_tokens = cfg.context if max_tokens is None else max_tokens
        if batch <= 0 or blocks <= 0 or block_size <= 0:
            raise ValueError(f"batch, blocks and block_size must be positive, got {batch}, {blocks}, {block_size}")
        if not 0 < max_tokens <= cfg.context:
            raise ValueError(f"max_tokens must be in [1, {cfg.context}] (the model's context), got {max_tokens}")
        shape = (cfg.n_layer, blocks, cfg.kv_heads, block_size, cfg.n_embd // cfg.n_head)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size, self.max_tokens = block_size, max_tokens
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.tables: list[list[int]] = [[] for _ in range(batch)]
        self.free = list(range(blocks))

    @property
    def batch(self) -> int:
        return len(self.tables)

    def block_bytes(self) -> int:
        """Bytes of one block's keys and values across the layers."""
        return 2 * self.keys[:, 0].numel() * self.keys.element_size()

    def used_bytes(self) -> int:
        """Bytes of the blocks the sequences hold now."""
        return sum(len(t) for t in self.tables) * self.block_bytes()

    def reset(self, rows: torch.Tensor) -> None:
        """End the sequences in ``rows``: their blocks go back to the free list."""
        for row in rows.tolist():
            self.free += self.tables[row]
            self.tables[row] = []
            self.lengths[row] = 0

    def _reserve(self, rows: list[int], end: list[int]) -> None:
        for row, last in zip(rows, end, strict=True):
            needed = math.ceil(last / self.block_size) - len(self.tables[row])
            if needed > len(self.free):
                raise RuntimeError(f"blocks: {needed} more needed, {len(self.free)} free; give the cache more blocks")
            self.tables[row] += [self.free.pop() for _ in range(max(needed, 0))]

    def store(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor,
              values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Write ``layer``'s keys and values at ``positions`` of ``rows`` (taking blocks as needed on the first
        layer) and return those rows' keys and values up to the last position written, gathered block by block
        (rows with fewer blocks are padded with block 0, which the causal mask hides)."""
        row_list = rows.tolist()
        if layer == 0:
            self._reserve(row_list, (positions.max(dim=1).values + 1).tolist())
        width = max(len(self.tables[r]) for r in row_list)
        table = torch.tensor([self.tables[r] + [0] * (width - len(self.tables[r])) for r in row_list],
                             device=positions.device)  # fmt: skip
        block = table.gather(1, positions // self.block_size)
        offset = positions % self.block_size
        self.keys[layer][block, :, offset] = keys.transpose(1, 2)
        self.values[layer][block, :, offset] = values.transpose(1, 2)
        end = int(positions.max()) + 1

        def gathered(pool: torch.Tensor) -> torch.Tensor:  # (rows, blocks, heads, block, dim) -> (rows, heads, t, dim)
            per_row = pool[layer][table].permute(0, 2, 1, 3, 4)
            return per_row.reshape(*per_row.shape[:2], -1, per_row.shape[-1])[:, :, :end]

        return gathered(self.keys), gathered(self.values)

