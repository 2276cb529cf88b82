"""Speculative decoding on a Hugging Face causal LM (SmolLM2), through its forward pass and its ``DynamicCache``:
each pass verifies a few proposed tokens and keeps the prefix the model agrees with, plus one token of its own, so
the output is exactly its greedy output (``generate(...)``'s, up to and including the first ``stop`` token when
one is given). Two proposers:

- prompt lookup (Saxena, 2023): the tokens that followed an earlier occurrence of the sequence's last n-gram, no
  draft model at all; it pays where outputs copy their input (summaries, code edits, quoted text), and matches
  ``generate(..., prompt_lookup_num_tokens=k)``;
- a draft model (Leviathan et al., 2023) sharing the target's tokenizer, greedy, whose own cache follows the
  sequence (:class:`DraftProposer`); ``generate(..., assistant_model=draft)`` is the library's version.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from effdl.infer.speculative import Speculated

Proposer = Callable[[torch.Tensor, int], torch.Tensor]  # (sequence so far, at most how many) -> proposed tokens


def lookup_candidates(ids: torch.Tensor, k: int, max_ngram: int = 2) -> torch.Tensor:
    """Up to ``k`` tokens that followed the earliest earlier occurrence of the last ``n`` tokens of ``ids``
    (1-D), for ``n`` from ``max_ngram`` down to 1; empty when none occurs."""
    if k < 1 or max_ngram < 1:
        raise ValueError(f"k and max_ngram must be >= 1, got {k}, {max_ngram}")
    for n in range(min(max_ngram, len(ids) - 1), 0, -1):
        windows = ids.unfold(0, n, 1)[:-1]  # every n-gram but the last one itself
        starts = (windows == ids[-n:]).all(dim=1).nonzero().flatten()
        if len(starts):  # the earliest, as Hugging Face's candidate generator takes
            return ids[int(starts[0]) + n : int(starts[0]) + n + k]
    return ids[:0]


class DraftProposer:
    """Greedy proposals of a small Hugging Face causal LM ``draft`` that shares the target's tokenizer. Its cache
    holds the sequence as of the last call (cropped back before each call, so rejected guesses are forgotten),
    and each call first feeds it the tokens accepted since."""

    def __init__(self, draft: nn.Module) -> None:
        from transformers import DynamicCache

        self.draft, self.cache, self.held = draft, DynamicCache(config=draft.config), 0

    @torch.no_grad()
    def __call__(self, sequence: torch.Tensor, room: int) -> torch.Tensor:
        extra = self.cache.get_seq_length() - self.held
        if extra > 0:
            self.cache.crop(-extra)
        logits = self.draft(sequence[self.held :][None], cache=self.cache, use_cache=True).logits[0, -1]
        self.held, guesses = len(sequence), []
        for i in range(room):
            guesses.append(logits.argmax(-1, keepdim=True))
            if i + 1 < room:  # the last guess is never fed: the next call crops it away anyway
                logits = self.draft(guesses[-1][None], cache=self.cache, use_cache=True).logits[0, -1]
        return torch.cat(guesses) if guesses else sequence[:0]


@torch.no_grad()
def speculative_generate_hf(model: nn.Module, ids: torch.Tensor, new_tokens: int, propose: Proposer, k: int,
                            stop: int | None = None) -> Speculated:  # fmt: skip
    """Up to ``new_tokens`` greedy tokens of the Hugging Face causal LM ``model`` after ``ids`` ``(1, time)``, each
    pass verifying up to ``k`` tokens from ``propose(sequence, room)``; ``stop`` (an end-of-text token) ends the
    output early and is kept."""
    from transformers import DynamicCache

    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise ValueError(f"ids must be one prompt, (1, time>=1), got {tuple(ids.shape)}")
    if new_tokens < 1 or k < 1:
        raise ValueError(f"new_tokens and k must be >= 1, got {new_tokens}, {k}")
    cache = DynamicCache(config=model.config)
    if ids.shape[1] > 1:
        model(ids[:, :-1], cache=cache, use_cache=True)  # the cache holds all but the last token
    sequence, produced, proposed, accepted, passes, rejections = ids[0], 0, 0, 0, 0, 0
    while produced < new_tokens:
        room = min(k, new_tokens - produced - 1)  # proposals past the last new token would be cut anyway
        guesses = propose(sequence, room)[:room] if room > 0 else sequence[:0]
        step = torch.cat([sequence[-1:], guesses])[None]
        checked = model(step, cache=cache, use_cache=True).logits[0].argmax(-1)
        agree = int((guesses == checked[: len(guesses)]).int().cumprod(0).sum())
        if agree < len(guesses):
            cache.crop(-(len(guesses) - agree))  # forget the rejected proposals
        sequence = torch.cat([sequence, guesses[:agree], checked[agree : agree + 1]])
        produced, proposed, accepted = produced + agree + 1, proposed + len(guesses), accepted + agree
        passes, rejections = passes + 1, rejections + (agree < len(guesses))
        new = sequence[ids.shape[1] :]
        if stop is not None and bool((new == stop).any()):
            return Speculated(new[: int((new == stop).nonzero()[0]) + 1], proposed, accepted, passes, rejections)
    return Speculated(sequence[ids.shape[1] :], proposed, accepted, passes, rejections)


def prompt_lookup_generate(model: nn.Module, ids: torch.Tensor, new_tokens: int, k: int = 10, max_ngram: int = 2,
                           stop: int | None = None) -> Speculated:  # fmt: skip
    """:func:`speculative_generate_hf` with up to ``k`` proposals per pass looked up in the sequence so far
    (:func:`lookup_candidates`)."""
    return speculative_generate_hf(model, ids, new_tokens, lambda seq, room: lookup_candidates(seq, room, max_ngram),
                                   k, stop)  # fmt: skip
