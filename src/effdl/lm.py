"""Language models on the shared floor: perplexity, token windows, the transformer's blocks and linears,
and the statistics of the inputs each linear layer sees.

Every chapter that changes a language model (quantization, pruning, distillation, inference)
measures it with these, on the book's char-level GPT and on SmolLM2 (``LlamaForCausalLM``) alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the book's GPT (a tensor) or of a Hugging Face causal LM (``.logits``)."""
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@torch.no_grad()
def perplexity(model: nn.Module, batches: Iterable[Batch]) -> float:
    """``exp`` of the mean next-token cross-entropy over ``(inputs, targets)`` batches
    (``sec-quant-llm-perplexity``)."""
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in batches:
        logits = logits_of(model, x.to(dev)).float()
        total += F.cross_entropy(logits.flatten(0, 1), y.to(dev).flatten(), reduction="sum").item()
        count += y.numel()
    if count == 0:
        raise ValueError("batches must not be empty")
    return math.exp(total / count)


@torch.no_grad()
def window_losses(model: nn.Module, batches: Iterable[Batch]) -> torch.Tensor:
    """Mean next-token loss (nats) of each window in ``batches``, as float64: ``exp`` of their mean is
    :func:`perplexity` when every window has the same length, and their spread gives a perplexity
    difference its standard error (``sec-prune-structured-llm``)."""
    dev = next(model.parameters()).device
    losses = []
    for x, y in batches:
        logits = logits_of(model, x.to(dev)).float()
        token = F.cross_entropy(logits.transpose(1, 2), y.to(dev), reduction="none")
        losses.append(token.mean(1).cpu())
    return torch.cat(losses).double()


def token_windows(ids: torch.Tensor, seq_len: int, n_windows: int, batch_size: int = 8) -> list[Batch]:
    """The first ``n_windows`` non-overlapping windows of a 1-D token stream, as LM batches."""
    if seq_len <= 0 or n_windows <= 0 or batch_size <= 0:
        raise ValueError(f"seq_len, n_windows, batch_size must be positive, got {seq_len}, {n_windows}, {batch_size}")
    available = (ids.numel() - 1) // seq_len
    if n_windows > available:
        raise ValueError(f"n_windows must be <= {available} for {ids.numel()} tokens of windows {seq_len}")
    starts = torch.arange(n_windows) * seq_len
    windows = torch.stack([ids[s : s + seq_len + 1] for s in starts.tolist()])
    return [(w[:, :-1], w[:, 1:]) for w in windows.split(batch_size)]


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers inside the transformer blocks: everything but the embedding/output head."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n}


@dataclass
class InputStats:
    """What calibration learns about one layer's inputs ``X`` (``n`` rows): the per-channel mean square
    ``diag(XᵀX) / n`` (Wanda), the per-channel max |x| (SmoothQuant), and, when asked for, ``XᵀX / n`` (GPTQ)."""

    mean_square: torch.Tensor
    absmax: torch.Tensor
    hessian: torch.Tensor | None = None
    rows: int = 0


@torch.no_grad()
def input_stats(model: nn.Module, names: Iterable[str], batches: Iterable, call: bool = False,
                hessian: bool = False) -> dict[str, InputStats]:  # fmt: skip
    """Run ``batches`` through ``model`` and accumulate :class:`InputStats` for the named linears; the
    ``d × d`` Hessian ``XᵀX / n`` only with ``hessian=True`` (it costs a matmul as large as the layer's own).

    Batches are ``(inputs, targets)`` pairs, or with ``call=True`` ``(args, kwargs)`` to call ``model`` with.
    """
    stats: dict[str, InputStats] = {}
    hooks = []
    layers = dict(model.named_modules())

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().flatten(0, -2).float()
            s = stats.get(name)
            if s is None:
                zeros = torch.zeros(x.shape[1], device=x.device)
                square = torch.zeros(x.shape[1], x.shape[1], device=x.device) if hessian else None
                s = stats[name] = InputStats(zeros, zeros.clone(), square)
            s.mean_square += x.pow(2).sum(0)
            s.absmax = torch.maximum(s.absmax, x.abs().amax(0))
            if s.hessian is not None:
                s.hessian += x.T @ x
            s.rows += x.shape[0]

        return record

    for name in names:
        hooks.append(layers[name].register_forward_pre_hook(hook(name)))
    dev = next(model.parameters()).device
    try:
        for first, second in batches:
            model(*first, **second) if call else model(first.to(dev))
    finally:
        for h in hooks:
            h.remove()
    for s in stats.values():
        s.mean_square /= max(s.rows, 1)
        if s.hessian is not None:
            s.hessian /= max(s.rows, 1)
    return stats


def transformer_blocks(model: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The stack of transformer blocks: ``model.blocks`` (the book's GPT) or ``model.model.layers`` (Llama)."""
    if hasattr(model, "blocks"):
        return model.blocks
    if hasattr(model, "model") and hasattr(model.model, "layers"):
        return model.model.layers
    raise ValueError(f"model must be the book's GPT or a Llama-style model, got {type(model).__name__}")


def kv_cache_bytes(config, tokens: int, batch: int = 1, bytes_per_value: int = 2) -> int:
    """Bytes a KV cache holds for ``batch`` sequences of ``tokens`` tokens: a key and a value vector per key/value
    head, layer and token, ``2 · layers · kv_heads · head_dim · tokens · batch · bytes_per_value`` (fp16 by
    default). ``config`` is the book's ``GPTConfig`` or a Hugging Face Llama config."""
    if tokens <= 0 or batch <= 0 or bytes_per_value <= 0:
        raise ValueError(f"tokens, batch, bytes_per_value must be positive, got {tokens}, {batch}, {bytes_per_value}")
    if hasattr(config, "kv_heads"):  # the book's GPT
        layers, kv_heads, head_dim = config.n_layer, config.kv_heads, config.n_embd // config.n_head
    else:  # transformers' LlamaConfig
        layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * layers * kv_heads * head_dim * tokens * batch * bytes_per_value
