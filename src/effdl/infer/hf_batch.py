"""Continuous batching for a Hugging Face causal LM (SmolLM2): the running requests share one ``DynamicCache``
whose rows are right-aligned, each request's keys and values ending at the last column, shorter ones padded on the
left and hidden by the attention mask. A decode step appends one column for every row; a request joins by its own
prefill (one forward pass per joining request), padded to the batch's length (or the batch padded to its), and
leaves by dropping its row. Full-attention caches only (Llama, SmolLM2): a sliding-window layer keeps offsets this
layout does not update.
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
        self.model, self.device = model, next(model.parameters()).device
        self.cache = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # 1 where a row has a real token
        self.lengths: list[int] = []  # real tokens per row

    @torch.no_grad()
    def join(self, prompt: torch.Tensor) -> int:
        """Prefill ``prompt`` (1-D) alone, add it as the last row, and return its first new token (greedy)."""
        from transformers import DynamicCache

        own = DynamicCache(config=self.model.config)
        if any(getattr(layer, "is_sliding", False) for layer in own.layers):
            raise ValueError("model: sliding-window attention layers are not supported by this right-aligned cache")
        logits = self.model(prompt[None].to(self.device), cache=own, use_cache=True).logits[0, -1]
        mask = torch.ones(1, len(prompt), dtype=torch.long, device=self.device)
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
    def forward(self, last: list[int]) -> torch.Tensor:
        """One step for every row, whose last tokens are ``last``: each row's next-token logits ``(rows, vocab)``."""
        ones = torch.ones(len(last), 1, dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        positions = torch.tensor(self.lengths, device=self.device)[:, None]  # each row's own, whatever the padding
        tokens = torch.tensor(last, device=self.device)[:, None]
        logits = self.model(tokens, attention_mask=self.mask, position_ids=positions, cache=self.cache,
                            use_cache=True).logits[:, -1]  # fmt: skip
        self.lengths = [n + 1 for n in self.lengths]
        return logits

    def decode(self, last: list[int]) -> list[int]:
        """:meth:`forward`, greedy: each row's next token."""
        return self.forward(last).argmax(-1).tolist()

    def leave(self, rows: list[int]) -> None:
        """Drop ``rows``; columns no remaining row uses are dropped too."""
        gone = set(rows)
        keep = [r for r in range(len(self.lengths)) if r not in gone]
        if not keep:
            self.cache, self.mask, self.lengths = None, self.mask[:0, :0], []
            return
        index = torch.tensor(keep, device=self.device)
        self.mask, self.lengths = self.mask[index], [self.lengths[r] for r in keep]
        start = int((self.mask.sum(0) == 0).int().cumprod(0).sum())  # leading columns that are padding everywhere
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
