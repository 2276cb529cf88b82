"""Continuous batching for a Hugging Face causal LM (SmolLM2): the running requests share one ``DynamicCache``
whose rows are right-aligned, each request's keys and values ending at the last column, shorter ones padded on the
left and hidden by the attention mask. A decode step appends one column for every row; a request joins by its own
prefill, padded to the batch's length (or the batch padded to its), and leaves by dropping its row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``tensor`` with ``width`` zeros before it along ``dim`` (``dim`` counted from the end, negative)."""
    if width == 0:
        return tensor
    return F.pad(tensor, [0, 0] * (-dim - 1) + [width, 0])


class HFBatch:
    """The running requests of a Hugging Face causal LM, in one right-aligned cache, one row per request."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.cache = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # (rows, columns): 1 where a row has a real token
        self.lengths: list[int] = []  # real tokens per row

    @torch.no_grad()
    def join(self, prompt: torch.Tensor) -> int:
        """Prefill ``prompt`` (1-D) alone, add it as the last row, and return its first new token (greedy)."""
        from transformers import DynamicCache

        own = DynamicCache(config=self.model.config)
        logits = self.model(prompt[None], cache=own, use_cache=True).logits[0, -1]
        mask = torch.ones(1, len(prompt), dtype=torch.long)
        if self.cache is None:
            self.cache, self.mask = own, mask
        else:
            width = max(self.mask.shape[1], len(prompt))
            for mine, theirs in zip(self.cache.layers, own.layers, strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, width - self.mask.shape[1], -2),
                                       _pad_left(theirs.keys, width - len(prompt), -2)])  # fmt: skip
                mine.values = torch.cat([_pad_left(mine.values, width - self.mask.shape[1], -2),
                                         _pad_left(theirs.values, width - len(prompt), -2)])  # fmt: skip
            self.mask = torch.cat([_pad_left(self.mask, width - self.mask.shape[1], -1),
                                   _pad_left(mask, width - len(prompt), -1)])  # fmt: skip
        self.lengths.append(len(prompt))
        return int(logits.argmax())

    @torch.no_grad()
    def decode(self, last: list[int]) -> list[int]:
        """One step for every row, whose last tokens are ``last``: each row's next token (greedy)."""
        self.mask = torch.cat([self.mask, torch.ones(len(last), 1, dtype=torch.long)], dim=1)
        positions = torch.tensor(self.lengths)[:, None]  # each row's own position, whatever the padding
        logits = self.model(torch.tensor(last)[:, None], attention_mask=self.mask, position_ids=positions,
                            cache=self.cache, use_cache=True).logits[:, -1]  # fmt: skip
        self.lengths = [n + 1 for n in self.lengths]
        return logits.argmax(-1).tolist()

    def leave(self, rows: list[int]) -> None:
        """Drop ``rows``; columns no remaining row uses are dropped too."""
        keep = [r for r in range(len(self.lengths)) if r not in rows]
        if not keep:
            self.cache, self.mask, self.lengths = None, self.mask[:0, :0], []
            return
        index = torch.tensor(keep)
        self.mask, self.lengths = self.mask[index], [self.lengths[r] for r in keep]
        start = int((self.mask.sum(0) == 0).int().cumprod(0).sum())  # leading columns that are padding everywhere
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
