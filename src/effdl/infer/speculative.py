"""Speculative decoding (Leviathan et al., 2023): a cheap draft model proposes ``gamma`` tokens one by one, the
target scores them all in one forward pass, and a prefix of them is kept, plus one token of the target's own.
Greedy, the kept prefix is the one the target agrees with, so the output is exactly the target's greedy output.
Sampling, proposal ``x`` (drawn from the draft's ``q``) is kept with probability ``min(1, p(x) / q(x))`` under
the target's ``p``, and the first rejected one is replaced by a draw from ``max(0, p - q)``, normalized: the
tokens are distributed exactly as the target's own samples. The speed-up depends on how many proposals are
accepted and on how much cheaper the draft's step is than the target's.

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
    """The new tokens, how many the draft proposed and the target accepted, the target's passes, and the passes that
    rejected a proposal (the proposals after a rejection in its pass are never judged)."""

    tokens: torch.Tensor
    proposed: int
    accepted: int
    target_passes: int
    rejections: int

    @property
    def acceptance(self) -> float:
        """The α of the speed-up formula, estimated: the share of *judged* proposals that were accepted, accepted /
        (accepted + rejections). (Accepted over proposed would count the proposals after a rejection as failures,
        and fall with gamma even when each proposal's chance stays the same.)"""
        judged = self.accepted + self.rejections
        return self.accepted / judged if judged else 0.0


def _check(target: GPT, draft: GPT, idx: torch.Tensor, new_tokens: int, gamma: int) -> None:
    if target.cfg.vocab_size != draft.cfg.vocab_size:
        raise ValueError(f"draft must share the target's vocabulary ({target.cfg.vocab_size}), "
                         f"got {draft.cfg.vocab_size}")  # fmt: skip
    if idx.ndim != 2 or idx.shape[0] != 1 or idx.shape[1] == 0:
        raise ValueError(f"idx must be one prompt, (1, time>=1), got {tuple(idx.shape)}")
    if new_tokens < 1 or gamma < 1:
        raise ValueError(f"new_tokens and gamma must be >= 1, got {new_tokens}, {gamma}")
    if idx.shape[1] + new_tokens > min(target.cfg.context, draft.cfg.context):
        raise ValueError(f"new_tokens: the prompt ({idx.shape[1]}) and {new_tokens} new tokens exceed the context "
                         f"({min(target.cfg.context, draft.cfg.context)})")  # fmt: skip


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


def _verify(scores: torch.Tensor, guesses: list[torch.Tensor], draft_probs: list[torch.Tensor],
            temperature: float) -> tuple[int, torch.Tensor]:  # fmt: skip
    """How many of the ``guesses`` to keep, given the target's ``scores`` ``(len(guesses) + 1, vocab)``, and the
    target's own token ``(1, 1)`` that follows them."""
    if temperature == 0:
        agree = int((torch.cat(guesses, dim=1)[0] == scores[:-1].argmax(-1)).int().cumprod(0).sum())
        return agree, scores[agree].argmax(-1).view(1, 1)
    p = torch.softmax(scores / temperature, -1)
    for i, (guess, q) in enumerate(zip(guesses, draft_probs, strict=True)):
        x = guess.item()
        if torch.rand(()) >= p[i, x] / q[x]:  # rejected: draw from what the target wants beyond the draft
            residual = (p[i] - q).clamp_min(0)
            return i, torch.multinomial(residual / residual.sum(), 1).view(1, 1)
    return len(guesses), torch.multinomial(p[-1], 1).view(1, 1)


def _propose(draft: GPT, cache: KVCache, last: torch.Tensor, g: int,
             temperature: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """``g`` draft tokens after ``last`` and, when sampling, the draft's distribution for each; the draft's cache
    ends up holding ``last`` and the first ``g - 1`` guesses."""
    guesses, probs, token = [], [], last
    for _ in range(g):
        logits = forward_cached(draft, token, cache)[0, -1]
        if temperature == 0:
            token = logits.argmax(-1).view(1, 1)
        else:
            probs.append(torch.softmax(logits / temperature, -1))
            token = torch.multinomial(probs[-1], 1).view(1, 1)
        guesses.append(token)
    return guesses, probs


@torch.no_grad()
def speculative_generate(target: GPT, draft: GPT, idx: torch.Tensor, new_tokens: int, gamma: int,
                         temperature: float = 0.0) -> Speculated:  # fmt: skip
    """``new_tokens`` tokens of ``target`` after the prompt ``idx`` ``(1, time)``, with ``draft`` proposing
    ``gamma`` tokens per target pass: greedy at temperature 0, else sampled at ``temperature``."""
    _check(target, draft, idx, new_tokens, gamma)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    size = idx.shape[1] + new_tokens  # proposals never pass the last new token's position
    target_cache, draft_cache = _caches((target, draft), idx, size)
    last, out = idx[:, -1:], []
    proposed = accepted = passes = rejections = 0
    while len(out) < new_tokens:
        g = min(gamma, new_tokens - len(out))
        before = int(target_cache.lengths[0])
        guesses, draft_probs = _propose(draft, draft_cache, last, g, temperature)
        scores = forward_cached(target, torch.cat([last, *guesses], dim=1), target_cache)[0]
        agree, last = _verify(scores, guesses, draft_probs, temperature)
        if agree == g:  # the draft has not seen its last guess yet
            forward_cached(draft, guesses[-1], draft_cache)
        target_cache.lengths[0] = draft_cache.lengths[0] = before + agree + 1
        out += [t.item() for t in guesses[:agree]] + [last.item()]
        proposed, accepted, passes, rejections = proposed + g, accepted + agree, passes + 1, rejections + (agree < g)
    return Speculated(torch.tensor(out[:new_tokens], device=idx.device), proposed, accepted, passes, rejections)
