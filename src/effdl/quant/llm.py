"""Quantizing language models: weight-only RTN and GPTQ, outliers and SmoothQuant (Chapter 4).

Works on any model whose projections are ``nn.Linear``: the book's char-level GPT and SmolLM2
(``LlamaForCausalLM``). Weights are replaced by their dequantized values, which is exact for
measuring perplexity; bytes are counted for the packed format; real int8 kernels are the
subject of :func:`int8_dynamic`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from effdl.quant.core import fake_quantize, qparams, qrange
from effdl.quant.pack import packed_bytes

Batch = tuple[torch.Tensor, torch.Tensor]


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the book's GPT (a tensor) or of a Hugging Face causal LM (``.logits``)."""
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@torch.no_grad()
def perplexity(model: nn.Module, batches: Iterable[Batch]) -> float:
    """``exp`` of the mean next-token cross-entropy over ``(inputs, targets)`` batches (section 4.1)."""
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in batches:
        logits = logits_of(model, x.to(dev)).float()
        total += F.cross_entropy(logits.flatten(0, 1), y.to(dev).flatten(), reduction="sum").item()
        count += y.numel()
    if count == 0:
        raise ValueError("batches must not be empty")
    return math.exp(total / count)


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


# --- statistics of the inputs each linear layer sees ------------------------------------------


@dataclass
class InputStats:
    """What calibration learns about one layer's inputs: ``X^T X / n`` and the per-channel max |x|."""

    hessian: torch.Tensor
    absmax: torch.Tensor
    rows: int = 0


@torch.no_grad()
def input_stats(model: nn.Module, names: Iterable[str], batches: Iterable[Batch]) -> dict[str, InputStats]:
    """Run ``batches`` through ``model`` and accumulate :class:`InputStats` for the named linears."""
    stats: dict[str, InputStats] = {}
    hooks = []
    layers = dict(model.named_modules())

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().flatten(0, -2).float()
            s = stats.setdefault(name, InputStats(torch.zeros(x.shape[1], x.shape[1], device=x.device),
                                                  torch.zeros(x.shape[1], device=x.device)))  # fmt: skip
            s.hessian += x.T @ x
            s.absmax = torch.maximum(s.absmax, x.abs().amax(0))
            s.rows += x.shape[0]

        return record

    for name in names:
        hooks.append(layers[name].register_forward_pre_hook(hook(name)))
    dev = next(model.parameters()).device
    try:
        for x, _ in batches:
            model(x.to(dev))
    finally:
        for h in hooks:
            h.remove()
    for s in stats.values():
        s.hessian /= max(s.rows, 1)
    return stats


# --- weight-only quantization: round-to-nearest and GPTQ --------------------------------------


def rtn(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Round-to-nearest, asymmetric min-max per output row or per ``group_size`` inputs (section 4.2)."""
    if group_size is None:
        return fake_quantize(weight, bits, signed=False, symmetric=False, axis=0)
    return fake_quantize(weight, bits, signed=False, symmetric=False, group_size=group_size)


def _affine_params(cols: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row asymmetric scale and zero-point of a block of columns ``(rows, k)``."""
    return qparams(cols.amin(1, keepdim=True), cols.amax(1, keepdim=True), bits, signed=False, symmetric=False)


def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None = None,
         block_size: int = 128, damp: float = 0.01) -> torch.Tensor:  # fmt: skip
    """GPTQ (Frantar et al., 2023): quantize columns one by one, pushing each error onto the rest.

    Minimises ``||W X - W_hat X||^2`` with ``H = X^T X / n``: after quantizing column ``j`` the
    remaining columns absorb ``err_j * H^-1[j, j:] / H^-1[j, j]``, read from the upper Cholesky
    factor of ``H^-1``. ``damp`` (a fraction of the mean diagonal) keeps ``H`` invertible; updates
    to later columns are applied once per block of ``block_size`` columns (section 4.3).
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must be ({cols}, {cols}) to match weight, got {tuple(hessian.shape)}")
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0):
        raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
    if damp < 0 or block_size <= 0:
        raise ValueError(f"damp must be >= 0 and block_size positive, got {damp}, {block_size}")
    if group_size is not None:
        block_size = max(block_size // group_size, 1) * group_size  # a group never straddles two blocks
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    dead = torch.diag(h) == 0  # inputs that were always zero: their columns cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(cols, device=h.device)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q_min, q_max = qrange(bits, signed=False)
    scale, zero = _affine_params(w, bits) if group_size is None else (None, None)
    out = torch.zeros_like(w)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, errors = w[:, start:end].clone(), torch.zeros(rows, end - start, device=w.device)
        h_block = h_inv[start:end, start:end]
        for i in range(end - start):
            if group_size is not None and (start + i) % group_size == 0:
                scale, zero = _affine_params(block[:, i : i + group_size], bits)
            column = block[:, i : i + 1]
            q = (torch.clamp(torch.round(column / scale) + zero, q_min, q_max) - zero) * scale
            out[:, start + i] = q.flatten()
            err = (column - q) / h_block[i, i]
            block[:, i:] -= err @ h_block[i : i + 1, i:]
            errors[:, i : i + 1] = err
        w[:, end:] -= errors @ h_inv[start:end, end:]
    return out.to(weight.dtype)


@torch.no_grad()
def quantize_weights_(model: nn.Module, method: str, bits: int, group_size: int | None = None,
                      stats: dict[str, InputStats] | None = None,
                      names: Iterable[str] | None = None) -> nn.Module:  # fmt: skip
    """Replace the weights of the block linears (or ``names``) in place by their RTN or GPTQ values."""
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
    layers = block_linears(model)
    for name in names if names is not None else list(layers):
        weight = layers[name].weight
        if method == "gptq":
            if stats is None or name not in stats:
                raise ValueError(f"gptq needs calibration stats for {name!r}: pass stats=input_stats(...)")
            weight.copy_(gptq(weight, stats[name].hessian.to(weight.device), bits, group_size))
        else:
            weight.copy_(rtn(weight, bits, group_size))
    return model


def weight_only_bytes(model: nn.Module, bits: int | None, group_size: int | None = None,
                      scale_bytes: int = 2) -> int:  # fmt: skip
    """Bytes of all parameters with the block linears stored as packed ``bits``-bit codes (``None``: as is).

    Each row (or group) adds a scale and a zero-point of ``scale_bytes`` (fp16) each; biases,
    norms and embeddings stay in their own dtype. Tied weights are counted once.
    """
    linears = block_linears(model)
    quantized = {id(m.weight) for m in linears.values()} if bits is not None else set()
    total = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()
                if id(p) not in quantized)  # fmt: skip
    for m in linears.values() if bits is not None else ():
        rows, cols = m.weight.shape
        groups = rows * (-(-cols // group_size) if group_size else 1)
        total += packed_bytes(m.weight.numel(), bits) + 2 * scale_bytes * groups
    return total


# --- activations: outliers, W8A8 and SmoothQuant ---------------------------------------------


def norm_linear_pairs(model: nn.Module) -> list[tuple[nn.Module, list[str]]]:
    """Each pre-norm and the linears that read its output: where SmoothQuant can move scales (section 4.5)."""
    names = {m: n for n, m in model.named_modules()}
    pairs = []
    for module in model.modules():
        if hasattr(module, "ln1") and hasattr(module, "attn"):  # the book's GPT block
            pairs += [(module.ln1, [names[module.attn.qkv]]), (module.ln2, [names[module.mlp[0]]])]
        elif hasattr(module, "input_layernorm") and hasattr(module, "self_attn"):  # Llama decoder layer
            attn, mlp = module.self_attn, module.mlp
            pairs += [(module.input_layernorm, [names[attn.q_proj], names[attn.k_proj], names[attn.v_proj]]),
                      (module.post_attention_layernorm, [names[mlp.gate_proj], names[mlp.up_proj]])]  # fmt: skip
    return pairs


@torch.no_grad()
def smooth_(model: nn.Module, stats: dict[str, InputStats], alpha: float = 0.5) -> nn.Module:
    """SmoothQuant (Xiao et al., 2023): divide activations by ``s``, multiply weights by ``s``, per channel.

    ``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)``; dividing the preceding norm's weight by
    ``s`` leaves the network's function unchanged while flattening activation outliers.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    layers = dict(model.named_modules())
    for norm, names in norm_linear_pairs(model):
        act = stats[names[0]].absmax
        w_max = torch.stack([layers[n].weight.abs().amax(0) for n in names]).amax(0)
        s = (act.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5).to(norm.weight.dtype)
        norm.weight.div_(s)
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(s)
        for n in names:
            layers[n].weight.mul_(s)
    return model


def quantize_activation(x: torch.Tensor, per_token: bool = False, bits: int = 8) -> torch.Tensor:
    """Symmetric dynamic fake-quantization of activations: one scale per tensor or per token (row)."""
    if not per_token:
        return fake_quantize(x, bits)
    return fake_quantize(x.reshape(-1, x.shape[-1]), bits, axis=0).reshape(x.shape)


@torch.no_grad()
def w8a8_(model: nn.Module, per_token: bool = False) -> nn.Module:
    """Simulated W8A8 on the block linears: int8 per-channel weights, int8 dynamic activations (section 4.5)."""
    for layer in block_linears(model).values():
        layer.weight.copy_(fake_quantize(layer.weight, 8, axis=0))
        layer.register_forward_pre_hook(lambda _m, args: (quantize_activation(args[0], per_token),))
    return model


def int8_dynamic(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers run real int8 kernels (FBGEMM/oneDNN, CPU).

    Weights are stored as int8 per channel; each call quantizes its input per tensor on the fly
    (dynamic quantization), so no calibration is needed (section 4.6). The API,
    ``torch.ao.quantization.quantize_dynamic``, is deprecated in favour of torchao's
    ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``, which is the faster route on GPU
    and with ``torch.compile``; in eager mode on CPU this is the one with fast kernels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), {nn.Linear}, dtype=torch.qint8)


def smollm2_windows(tokenizer, split: str, seq_len: int, n_windows: int, batch_size: int = 8) -> list[Batch]:
    """Shakespeare ``split`` in SmolLM2 tokens, cut into :func:`token_windows` (calibrate on train, test on test)."""
    from effdl.data import shakespeare

    text = shakespeare().text(split)
    ids = torch.tensor(tokenizer(text[: 6 * seq_len * (n_windows + 1)])["input_ids"])
    return token_windows(ids, seq_len, n_windows, batch_size)
