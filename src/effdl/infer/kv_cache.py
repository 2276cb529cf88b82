"""A key/value cache for the book's GPT: the prompt is run once (prefill), then each new token attends to the
keys and values kept from the positions before it instead of recomputing them (decode).

Each row of the cache is one sequence with a length of its own, so rows can hold prompts of different lengths
(right-padded in one prefill call) and a scheduler can decode some rows while it fills others. The cache holds
``2 · layers · kv_heads · head_dim · tokens · batch`` values, the formula of :func:`effdl.lm.kv_cache_bytes`
(``sec-arch-gqa``), so grouped- and multi-query attention shrink it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from effdl.models import GPT, CausalSelfAttention, GPTConfig


def check_max_tokens(cfg: GPTConfig, max_tokens: int | None) -> int:
    """``max_tokens``, the model's context when ``None``; a clear error outside ``[1, context]``."""
    max_tokens = cfg.context if max_tokens is None else max_tokens
    if not 0 < max_tokens <= cfg.context:
        raise ValueError(f"max_tokens must be in [1, {cfg.context}] (the model's context), got {max_tokens}")
    return max_tokens


def empty_keys_values(cfg: GPTConfig, slots: int, positions: int, dtype: torch.dtype,
                      device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Zeroed keys and values ``(layers, slots, kv_heads, positions, head_dim)`` for ``cfg``'s GPT."""
    shape = (cfg.n_layer, slots, cfg.kv_heads, positions, cfg.n_embd // cfg.n_head)
    return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)


class KVCache:
    """Preallocated keys and values of every layer, ``(layers, batch, kv_heads, max_tokens, head_dim)`` each, and
    ``lengths``, the positions filled in each row."""

    def __init__(self, cfg: GPTConfig, batch: int, max_tokens: int | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        if batch <= 0:
            raise ValueError(f"batch must be positive, got {batch}")
        max_tokens = check_max_tokens(cfg, max_tokens)
        self.keys, self.values = empty_keys_values(cfg, batch, max_tokens, dtype, device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.end = 0  # positions the current forward pass reads (set by prepare)

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    @property
    def max_tokens(self) -> int:
        return self.keys.shape[3]

    def nbytes(self) -> int:
        """Bytes of the key and value tensors, filled or not."""
        return 2 * self.keys.numel() * self.keys.element_size()

    def reset(self, rows: torch.Tensor) -> None:
        """Empty ``rows`` for new sequences (their old keys and values are overwritten as the new ones arrive)."""
        self.lengths[rows] = 0

    def prepare(self, rows: torch.Tensor, ends: torch.Tensor) -> None:
        """Before a forward pass: ``rows`` will hold ``ends`` positions each (the longest sets how far
        :meth:`store` returns keys)."""
        self.end = int(ends.max())

    def store(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, written: torch.Tensor | None,
              keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Write ``layer``'s keys and values ``(len(rows), kv_heads, new, head_dim)`` at ``positions``
        ``(len(rows), new)`` of ``rows`` where ``written`` (the real tokens, not the padding; ``None``: all of
        them); return those rows' keys and values up to the end :meth:`prepare` was given."""
        at = real_tokens(rows[:, None].expand_as(positions), written), real_tokens(positions, written)
        self.keys[layer][at[0], :, at[1]] = real_tokens(keys.transpose(1, 2), written)
        self.values[layer][at[0], :, at[1]] = real_tokens(values.transpose(1, 2), written)
        return self.keys[layer, rows, :, : self.end], self.values[layer, rows, :, : self.end]


def real_tokens(per_token: torch.Tensor, written: torch.Tensor | None) -> torch.Tensor:
    """The entries of ``per_token`` ``(rows, new, ...)`` at the real tokens ``written`` (a mask of its first two
    dimensions), or all of them when ``written`` is ``None``: a decode step has no padding, and skipping the
    boolean mask spares it a device-to-host sync per layer."""
    return per_token if written is None else per_token[written]


def _attend(attn: CausalSelfAttention, x: torch.Tensor, cache: KVCache, layer: int, rows: torch.Tensor,
            positions: torch.Tensor, written: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """``attn`` on the new positions ``x``: each query sees its row's cached positions and the new ones up to its
    own."""
    b, t, c = x.shape
    q, k, v = attn.qkv(x).split([c, attn.kv_width, attn.kv_width], dim=-1)
    q = q.view(b, t, attn.n_head, -1).transpose(1, 2)
    k, v = (z.view(b, t, attn.n_kv_head, -1).transpose(1, 2) for z in (k, v))
    keys, values = cache.store(layer, rows, positions, written, k, v)
    visible = torch.arange(keys.shape[2], device=x.device) <= positions[:, None, :, None]  # (b, 1, t, keys)
    grouped = {"enable_gqa": True} if attn.n_kv_head != attn.n_head else {}
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, **grouped)
    return attn.proj(y.transpose(1, 2).reshape(b, t, c))


@torch.no_grad()
def forward_cached(model: GPT, idx: torch.Tensor, cache: KVCache, rows: torch.Tensor | None = None,
                   valid: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Logits ``(len(rows), time, vocab)`` of the tokens ``idx`` that follow what ``rows`` of the cache hold (all
    rows by default; a :class:`~effdl.infer.paged.PagedKVCache` works too); their keys and values join the
    cache. ``valid`` counts each row's real tokens when ``idx`` is right-padded: the padding is neither stored
    nor attended to, and its logits mean nothing. The first call on a row is its prefill, later ones decode."""
    _check_call(model, idx, cache, rows, valid)
    rows = torch.arange(cache.batch, device=idx.device) if rows is None else rows
    t = idx.shape[1]
    cached = cache.lengths[rows]
    ends = cached + (t if valid is None else valid)
    if int(ends.max()) > cache.max_tokens:
        raise ValueError(f"idx: {(ends - cached).tolist()} new tokens after {cached.tolist()} cached exceed the "
                         f"cache's {cache.max_tokens} positions")  # fmt: skip
    cache.prepare(rows, ends)
    positions = cached[:, None] + torch.arange(t, device=idx.device)
    written = None  # no padding to leave out
    if valid is not None:
        written = positions < ends[:, None]
        positions = torch.where(written, positions, 0)  # padding: any valid position
    x = model.tok_emb(idx) + model.pos_emb(positions)
    for layer, block in enumerate(model.blocks):
        x = x + _attend(block.attn, block.ln1(x), cache, layer, rows, positions, written)
        x = x + block.mlp(block.ln2(x))
    cache.lengths[rows] = ends
    return model.lm_head(model.ln_f(x))


def _check_call(model: GPT, idx: torch.Tensor, cache: KVCache, rows: torch.Tensor | None,
                valid: torch.Tensor | None) -> None:  # fmt: skip
    """A clear error for each bad argument of :func:`forward_cached`; ``rows`` and ``valid`` only when given."""
    if model.training:
        raise ValueError("model must be in eval mode (the cached path has no dropout)")
    count = cache.batch if rows is None else len(rows)
    if idx.ndim != 2 or idx.shape[0] != count or idx.shape[1] == 0:
        raise ValueError(f"idx must be (rows={count}, time>=1), got {tuple(idx.shape)}")
    if rows is not None and not _distinct_rows(rows, cache.batch):
        raise ValueError(f"rows must be distinct row numbers below {cache.batch}, got {rows.tolist()}")
    if valid is not None and (valid.shape != (count,) or bool((valid < 1).any() or (valid > idx.shape[1]).any())):
        raise ValueError(f"valid must count 1 to {idx.shape[1]} real tokens for each of the {count} rows, "
                         f"got {valid.tolist()}")  # fmt: skip


def _distinct_rows(rows: torch.Tensor, batch: int) -> bool:
    """Whether ``rows`` is 1-D and holds distinct row numbers in ``[0, batch)``; read in one copy to the host, so a
    decode step pays one synchronization for the check, not one per test."""
    listed = rows.tolist() if rows.ndim == 1 else [-1]
    return len(set(listed)) == len(listed) and all(0 <= row < batch for row in listed)


def next_token(logits: torch.Tensor, temperature: float = 0.0) -> torch.Tensor:
    """The next token ``(batch, 1)`` from last-position ``logits``: greedy at temperature 0, else sampled."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    return torch.multinomial(F.softmax(logits / temperature, -1), 1)


def _check_lengths(model: GPT, prompt: int, new_tokens: int, temperature: float) -> None:
    if new_tokens < 0 or temperature < 0:
        raise ValueError(f"new_tokens and temperature must be >= 0, got {new_tokens}, {temperature}")
    if prompt + new_tokens > model.cfg.context:
        raise ValueError(f"new_tokens: the prompt ({prompt}) and new tokens ({new_tokens}) exceed the context "
                         f"({model.cfg.context})")  # fmt: skip


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, new_tokens: int, temperature: float = 0.0) -> torch.Tensor:
    """Append ``new_tokens`` tokens with a :class:`KVCache`: one prefill of the prompt, then one position per step
    (greedy when ``temperature == 0``). The same tokens as :meth:`GPT.generate`, which recomputes the whole
    sequence every step; the prompt and the new tokens must fit the model's context."""
    _check_lengths(model, idx.shape[1], new_tokens, temperature)
    weight = model.tok_emb.weight
    cache = KVCache(model.cfg, idx.shape[0], idx.shape[1] + new_tokens, dtype=weight.dtype, device=weight.device)
    out = [idx]
    logits = forward_cached(model, idx, cache)[:, -1]
    for step in range(new_tokens):
        out.append(next_token(logits, temperature))
        if step + 1 < new_tokens:
            logits = forward_cached(model, out[-1], cache)[:, -1]
    return torch.cat(out, dim=1)


def prefill(model: GPT, prompts: list[torch.Tensor], cache: KVCache, rows: torch.Tensor | None = None,
            ) -> torch.Tensor:  # fmt: skip
    """Prompts of different lengths (1-D token tensors) right-padded into one :func:`forward_cached` call on
    ``rows`` of ``cache`` (all rows by default): each prompt's logits at its own last token ``(prompts, vocab)``."""
    device = cache.lengths.device
    valid = torch.tensor([len(p) for p in prompts], device=device)
    padded = torch.stack([F.pad(p, (0, int(valid.max()) - len(p))) for p in prompts]).to(device)
    return forward_cached(model, padded, cache, rows=rows, valid=valid)[torch.arange(len(prompts)), valid - 1]


@torch.no_grad()
def generate_batch(model: GPT, prompts: list[torch.Tensor], new_tokens: int) -> list[torch.Tensor]:
    """Greedy continuations of prompts of different lengths (1-D token tensors) in one batch: right-padded into
    one prefill, each row's logits read at its own last token, then decoded together; each row equals
    :func:`generate` on its prompt alone."""
    if not prompts or any(p.ndim != 1 or len(p) == 0 for p in prompts):
        raise ValueError("prompts must be one or more non-empty 1-D token tensors")
    longest = max(len(p) for p in prompts)
    _check_lengths(model, longest, new_tokens, 0.0)
    weight = model.tok_emb.weight
    cache = KVCache(model.cfg, len(prompts), longest + new_tokens, dtype=weight.dtype, device=weight.device)
    logits = prefill(model, prompts, cache)
    new = []
    for step in range(new_tokens):
        new.append(next_token(logits))
        if step + 1 < new_tokens:
            logits = forward_cached(model, new[-1], cache)[:, -1]
    tails = torch.cat(new, dim=1) if new else torch.zeros(len(prompts), 0, dtype=torch.long, device=weight.device)
    return [torch.cat([p.to(tail.device), tail]) for p, tail in zip(prompts, tails, strict=True)]
