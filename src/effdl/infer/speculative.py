"""Speculative decoding (Leviathan et al., 2023), greedy: a cheap draft model proposes ``gamma`` tokens one by
one, the target checks them all in one forward pass, and the longest prefix it agrees with is kept, plus the
target's own next token. The output is exactly the target's greedy output; the speed-up depends on how many
proposals are accepted and on how much cheaper the draft's step is than the target's.

Both models keep a :class:`~effdl.infer.kv_cache.KVCache` holding every token but the last one emitted; a
rejected proposal is undone by moving the cache's length back (its keys are overwritten later, never seen).
"""

from __future__ import annotations

import dataclasses

import torch

from effdl.infer.kv_cache import KVCache, forward_cached
from effdl.models import GPT


@dataclasses.dataclass(frozen=True)
class Speculated:
    """The new tokens, and how many the draft proposed, how many the target accepted, and the target's passes."""

    tokens: torch.Tensor
    proposed: int
    accepted: int
    target_passes: int

    @property
    def acceptance(self) -> float:
        """Accepted over proposed tokens (the α of the speed-up formula, estimated)."""
        return self.accepted / self.proposed if self.proposed else 0.0


def _check(target: GPT, draft: GPT, idx: torch.Tensor, new_tokens: int, gamma: int) -> None:
    if target.cfg.vocab_size != draft.cfg.vocab_size:
        raise ValueError(f"draft must share the target's vocabulary ({target.cfg.vocab_size}), "
                         f"got {draft.cfg.vocab_size}")  # fmt: skip
    if idx.ndim != 2 or idx.shape[0] != 1 or idx.shape[1] == 0:
        raise ValueError(f"idx must be one prompt, (1, time>=1), got {tuple(idx.shape)}")
    if new_tokens < 1 or gamma < 1:
        raise ValueError(f"new_tokens and gamma must be >= 1, got {new_tokens}, {gamma}")
    if idx.shape[1] + new_tokens + gamma > min(target.cfg.context, draft.cfg.context):
        raise ValueError(f"new_tokens: the prompt, {new_tokens} new tokens and gamma={gamma} proposals exceed the "
                         f"context ({min(target.cfg.context, draft.cfg.context)})")  # fmt: skip


def _caches(models: tuple[GPT, ...], idx: torch.Tensor, size: int) -> list[KVCache]:
    """A cache per model holding the prompt but its last token."""
    caches = []
    for model in models:
        weight = model.tok_emb.weight
        cache = KVCache(model.cfg, 1, size, dtype=weight.dtype, device=weight.device)
        if idx.shape[1] > 1:
            forward_cached(model, idx[:, :-1], cache)
        caches.append(cache)
    return caches


@torch.no_grad()
def speculative_generate(target: GPT, draft: GPT, idx: torch.Tensor, new_tokens: int, gamma: int) -> Speculated:
    """``new_tokens`` greedy tokens of ``target`` after the prompt ``idx`` ``(1, time)``, with ``draft`` proposing
    ``gamma`` tokens per target pass."""
    _check(target, draft, idx, new_tokens, gamma)
    size = idx.shape[1] + new_tokens + gamma
    target_cache, draft_cache = _caches((target, draft), idx, size)
    last, out = idx[:, -1:], []
    proposed = accepted = passes = 0
    while len(out) < new_tokens:
        g = min(gamma, new_tokens - len(out))
        before = int(target_cache.lengths[0])
        guesses, token = [], last
        for _ in range(g):  # the draft's cache ends up holding last and the first g - 1 guesses
            token = forward_cached(draft, token, draft_cache)[:, -1:].argmax(-1)
            guesses.append(token)
        checked = forward_cached(target, torch.cat([last, *guesses], dim=1), target_cache).argmax(-1)
        agree = int((torch.cat(guesses, dim=1) == checked[:, :g]).int().cumprod(-1).sum())
        if agree == g:  # the draft has not seen its last guess yet
            forward_cached(draft, guesses[-1], draft_cache)
        target_cache.lengths[0] = draft_cache.lengths[0] = before + agree + 1
        out += [t.item() for t in guesses[:agree]] + [checked[0, agree].item()]
        last = checked[:, agree : agree + 1]
        proposed, accepted, passes = proposed + g, accepted + agree, passes + 1
    return Speculated(torch.tensor(out[:new_tokens]), proposed, accepted, passes)
