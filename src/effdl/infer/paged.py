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

from effdl.infer.kv_cache import check_max_tokens, empty_keys_values, real_tokens
from effdl.models import GPTConfig


class PagedKVCache:
    """``blocks`` blocks of ``block_size`` positions for ``batch`` sequences of up to ``max_tokens`` each."""

    def __init__(self, cfg: GPTConfig, batch: int, blocks: int, block_size: int = 16, max_tokens: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:  # fmt: skip
        if batch <= 0 or blocks <= 0 or block_size <= 0:
            raise ValueError(f"batch, blocks and block_size must be positive, got {batch}, {blocks}, {block_size}")
        self.keys, self.values = empty_keys_values(cfg, blocks, block_size, dtype, device)
        self.block_size, self.max_tokens = block_size, check_max_tokens(cfg, max_tokens)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.tables: list[list[int]] = [[] for _ in range(batch)]
        self.free = list(range(blocks))
        self.table, self.end = torch.zeros(batch, 0, dtype=torch.long), 0  # the current pass's (set by prepare)

    @property
    def batch(self) -> int:
        return len(self.tables)

    @property
    def blocks(self) -> int:
        """Blocks in the pool, free or not."""
        return self.keys.shape[1]

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

    def prepare(self, rows: torch.Tensor, ends: torch.Tensor) -> None:
        """Before a forward pass: give each of ``rows`` the blocks for ``ends`` positions (all or none, so a failure
        leaves the cache as it was) and lay out their block tables once for every layer."""
        row_list, needs = rows.tolist(), [math.ceil(e / self.block_size) for e in ends.tolist()]
        missing = [max(n - len(self.tables[r]), 0) for r, n in zip(row_list, needs, strict=True)]
        if sum(missing) > len(self.free):
            raise RuntimeError(f"blocks: {sum(missing)} more needed, {len(self.free)} free; give the cache more blocks")
        for row, count in zip(row_list, missing, strict=True):
            self.tables[row] += [self.free.pop() for _ in range(count)]
        width = max(len(self.tables[r]) for r in row_list)  # shorter rows padded with block 0, hidden by the mask
        self.table = torch.tensor([self.tables[r] + [0] * (width - len(self.tables[r])) for r in row_list],
                                  device=self.lengths.device)  # fmt: skip
        self.end = int(ends.max())

    def store(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, written: torch.Tensor | None,
              keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Write ``layer``'s keys and values at ``positions`` of ``rows`` where ``written``, into their blocks; return
        those rows' keys and values up to the end :meth:`prepare` was given, gathered block by block."""
        block = real_tokens(self.table.gather(1, positions // self.block_size), written)
        offset = real_tokens(positions % self.block_size, written)
        self.keys[layer][block, :, offset] = real_tokens(keys.transpose(1, 2), written)
        self.values[layer][block, :, offset] = real_tokens(values.transpose(1, 2), written)
        return self._gathered(self.keys[layer]), self._gathered(self.values[layer])

    def _gathered(self, pool: torch.Tensor) -> torch.Tensor:
        """``(rows, heads, end, dim)`` from the pool's ``(blocks, heads, block, dim)`` along the block tables."""
        per_row = pool[self.table].permute(0, 2, 1, 3, 4)
        return per_row.reshape(*per_row.shape[:2], -1, per_row.shape[-1])[:, :, : self.end]
