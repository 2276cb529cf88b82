"""Quantizing language models: weight-only RTN and GPTQ, outliers and SmoothQuant (``chap-quant-llm``).

Works on any model whose projections are ``nn.Linear``: the book's char-level GPT and SmolLM2
(``LlamaForCausalLM``). For perplexity, weights are replaced by their dequantized values (exact
for measuring quality) and bytes are counted for the packed format; for speed,
:class:`WeightOnlyLinear` and :func:`int8_dynamic` run PyTorch's real int8/int4 CPU kernels.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from effdl.bench import tensor_bytes
from effdl.lm import Batch, InputStats, block_linears, input_stats, transformer_blocks
from effdl.quant.core import fake_quantize, grouped, qparams, qrange, quantize
from effdl.quant.pack import packed_bytes

# --- weight-only quantization: round-to-nearest and GPTQ --------------------------------------


def rtn(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Round-to-nearest, asymmetric min-max per output row or per ``group_size`` inputs
    (``sec-quant-llm-weight-only``)."""
    if group_size is None:
        return fake_quantize(weight, bits, signed=False, symmetric=False, axis=0)
    return fake_quantize(weight, bits, signed=False, symmetric=False, group_size=group_size)


def _affine_params(cols: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row asymmetric scale and zero-point of a block of columns ``(rows, k)``."""
    return qparams(cols.amin(1, keepdim=True), cols.amax(1, keepdim=True), bits, signed=False, symmetric=False)


def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None = None,
         block_size: int = 128, damp: float = 0.01, act_order: bool = False) -> torch.Tensor:  # fmt: skip
    """GPTQ (Frantar et al., 2023): quantize columns one by one, pushing each error onto the rest.

    Minimises ``||W X - W_hat X||^2`` over calibration inputs ``X`` (``cols x n``, tokens as columns),
    whose curvature for every row of ``W`` is ``H = X X^T`` (here divided by ``n``; ``hessian`` comes
    from tokens stored as rows, ``x.T @ x``). With ``U`` the upper Cholesky factor of ``H^-1``, after
    quantizing column ``j`` the remaining columns absorb ``err_j * U[j, j:] / U[j, j]``: row ``j`` of
    ``U`` is row ``j`` of the inverse Hessian of the columns not yet quantized, over the square root
    of its diagonal, so one factorisation replaces an update of ``H^-1`` per column.

    ``damp`` (a fraction of the mean diagonal) keeps ``H`` invertible; updates to later columns are
    applied once per block of ``block_size`` columns. ``act_order`` visits
    columns by decreasing ``H[j, j]`` (the inputs with the most energy first) with each group's
    grid fixed from the original weights, so groups stay contiguous in storage (``sec-quant-llm-gptq``).
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must be ({cols}, {cols}) to match weight, got {tuple(hessian.shape)}")
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0):
        raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
    if damp < 0 or block_size <= 0:
        raise ValueError(f"damp must be >= 0 and block_size positive, got {damp}, {block_size}")
    q_min, q_max = qrange(bits, signed=False)
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    dead = torch.diag(h) == 0  # inputs that were always zero: their columns cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(cols, device=h.device)
    order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(cols, device=h.device)
    w, h = w[:, order], h[order][:, order]
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    width = group_size or cols
    static = group_size is None or act_order  # grids fixed up front, from the original weights
    if static:
        view = grouped(weight.detach().float(), width)
        scales, zeros = qparams(view.amin(-1), view.amax(-1), bits, signed=False, symmetric=False)
        group_of = (order // width).tolist()
    elif group_size is not None:
        block_size = max(block_size // group_size, 1) * group_size  # a group never straddles two blocks
    out = torch.zeros_like(w)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, errors = w[:, start:end].clone(), torch.zeros(rows, end - start, device=w.device)
        h_block = h_inv[start:end, start:end]
        for i in range(end - start):
            if static:
                g = group_of[start + i]
                scale, zero = scales[:, g : g + 1], zeros[:, g : g + 1]
            elif i % width == 0:
                scale, zero = _affine_params(block[:, i : i + width], bits)
            column = block[:, i : i + 1]
            q = (torch.clamp(torch.round(column / scale) + zero, q_min, q_max) - zero) * scale
            out[:, start + i] = q.flatten()
            err = (column - q) / h_block[i, i]
            block[:, i:] -= err @ h_block[i : i + 1, i:]
            errors[:, i : i + 1] = err
        w[:, end:] -= errors @ h_inv[start:end, end:]
    return out[:, torch.argsort(order)].to(weight.dtype)


class _Captured(Exception):
    """Raised by a hook to stop a forward pass once the first block's inputs are recorded."""


@torch.no_grad()
def _first_block_inputs(model: nn.Module, blocks, batches: Iterable[Batch]) -> list[tuple[tuple, dict]]:
    captured = []

    def capture(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _Captured

    hook = blocks[0].register_forward_pre_hook(capture, with_kwargs=True)
    dev = next(model.parameters()).device
    try:
        for x, _ in batches:
            try:
                model(x.to(dev), **({} if hasattr(model, "blocks") else {"use_cache": False}))
            except _Captured:
                pass
    finally:
        hook.remove()
    return captured


@torch.no_grad()
def gptq_sequential_(model: nn.Module, batches: Iterable[Batch], bits: int, group_size: int | None = None,
                     act_order: bool = True, damp: float = 0.01, blocks: int | None = None) -> nn.Module:  # fmt: skip
    """GPTQ block by block: each block is calibrated on the outputs of the already-quantized blocks before it.

    Errors of early blocks then show up in the Hessians of later ones, which can compensate
    for them; one forward pass per block over the calibration set (``sec-quant-llm-gptq``). Linears that
    read the same input (q, k and v; gate and up) share one Hessian and GPTQ treats rows independently,
    so they are quantized as one stacked matrix: the same result, one column loop instead of several.
    ``blocks`` quantizes only the first ``blocks`` transformer blocks (``None``: all of them).
    """
    stack = list(transformer_blocks(model))[:blocks]
    inputs = _first_block_inputs(model, stack, batches)
    if not inputs:
        raise ValueError("batches must not be empty")
    for block in stack:
        linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        stats = input_stats(block, linears, [(args, kwargs) for args, kwargs in inputs], call=True, hessian=True)
        for names in _same_input(stats):
            weights = [linears[n].weight for n in names]
            stacked = gptq(torch.cat(weights), stats[names[0]].hessian, bits, group_size, damp=damp,
                           act_order=act_order)  # fmt: skip
            for weight, part in zip(weights, stacked.split([w.shape[0] for w in weights]), strict=True):
                weight.copy_(part)
        inputs = [_with_hidden(block(*args, **kwargs), args, kwargs) for args, kwargs in inputs]
    return model


def _same_input(stats: dict[str, InputStats]) -> list[list[str]]:
    """Layer names grouped by identical input statistics: the layers that read one tensor (q, k, v)."""
    groups: list[list[str]] = []
    for name, s in stats.items():
        same = next((g for g in groups if torch.equal(stats[g[0]].hessian, s.hessian)), None)
        if same is None:
            groups.append([name])
        else:
            same.append(name)
    return groups


def _with_hidden(output, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The next block's call: this block's output as the hidden states, everything else unchanged."""
    hidden = output[0] if isinstance(output, tuple) else output
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@torch.no_grad()
def quantize_weights_(model: nn.Module, method: str, bits: int, group_size: int | None = None,
                      calibration: Iterable[Batch] | None = None, blocks: int | None = None) -> nn.Module:  # fmt: skip
    """Replace the weights of the block linears in place by their RTN or (sequential) GPTQ values.

    ``blocks`` limits both to the linears of the first ``blocks`` transformer blocks (``None``: every block).
    """
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
    if blocks is not None and (not isinstance(blocks, int) or blocks <= 0):
        raise ValueError(f"blocks must be a positive int or None, got {blocks!r}")
    if method == "gptq":
        if calibration is None:
            raise ValueError("gptq needs calibration batches: pass calibration=...")
        return gptq_sequential_(model, calibration, bits, group_size, blocks=blocks)
    chosen = block_linears(model).values() if blocks is None else [
        m for block in list(transformer_blocks(model))[:blocks] for m in block.modules() if isinstance(m, nn.Linear)]
    for layer in chosen:
        layer.weight.copy_(rtn(layer.weight, bits, group_size))
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


def smoothing_pairs(model: nn.Module) -> list[tuple[nn.Module, list[str]]]:
    """Where SmoothQuant can move scales: a module whose output channels can absorb ``1/s``, and its readers.

    Pre-norms feed the attention and MLP input projections; in a Llama MLP, ``up_proj``'s output
    rows also scale the input of ``down_proj`` exactly (``silu(gate) * up / s``), which is where
    SmolLM2's largest activations live (``sec-quant-llm-outliers``).
    """
    names = {m: n for n, m in model.named_modules()}
    pairs = []
    for module in model.modules():
        if hasattr(module, "ln1") and hasattr(module, "attn"):  # the book's GPT block
            pairs += [(module.ln1, [names[module.attn.qkv]]), (module.ln2, [names[module.mlp[0]]])]
        elif hasattr(module, "input_layernorm") and hasattr(module, "self_attn"):  # Llama decoder layer
            attn, mlp = module.self_attn, module.mlp
            pairs += [(module.input_layernorm, [names[attn.q_proj], names[attn.k_proj], names[attn.v_proj]]),
                      (module.post_attention_layernorm, [names[mlp.gate_proj], names[mlp.up_proj]]),
                      (mlp.up_proj, [names[mlp.down_proj]])]  # fmt: skip
    return pairs


@torch.no_grad()
def smooth_(model: nn.Module, stats: dict[str, InputStats], alpha: float = 0.5) -> nn.Module:
    """SmoothQuant (Xiao et al., 2023): divide activations by ``s``, multiply weights by ``s``, per channel.

    ``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)``; dividing the output channels of the module
    that produces ``x`` (a norm's weight, or a linear's rows) by ``s`` leaves the network's function
    unchanged while flattening activation outliers. Pairs are visited in order, so a linear is
    rescaled as a reader before it is rescaled as a source.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    layers = dict(model.named_modules())
    for source, names in smoothing_pairs(model):
        act = stats[names[0]].absmax.to(source.weight.device)
        w_max = torch.stack([layers[n].weight.abs().amax(0) for n in names]).amax(0)
        s = (act.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5).to(source.weight.dtype)
        source.weight.div_(s[:, None] if isinstance(source, nn.Linear) else s)
        if getattr(source, "bias", None) is not None:
            source.bias.div_(s)
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
    """Simulated W8A8 on the block linears: int8 per-channel weights, int8 dynamic activations
    (``sec-quant-llm-w8a8``)."""
    for layer in block_linears(model).values():
        layer.weight.copy_(fake_quantize(layer.weight, 8, axis=0))
        layer.register_forward_pre_hook(lambda _m, args: (quantize_activation(args[0], per_token),))
    return model


def int8_dynamic(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers run real int8 kernels (FBGEMM/oneDNN, CPU).

    Weights are stored as int8 per channel; each call quantizes its input per tensor on the fly
    (dynamic quantization), so no calibration is needed (``sec-quant-llm-speed``). The API,
    ``torch.ao.quantization.quantize_dynamic``, is deprecated in favour of torchao's
    ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``, which is the faster route on GPU
    and with ``torch.compile``; in eager mode on CPU this is the one with fast kernels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qconfig = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), qconfig, dtype=torch.qint8)


def int4_compatible(shape: torch.Size, group_size: int) -> bool:
    """Whether PyTorch's CPU int4 kernel accepts a ``rows x cols`` weight of this shape with ``group_size``."""
    rows, cols = shape
    return group_size > 0 and cols % group_size == 0 and rows % 16 == 0


def int4_group_codes(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit codes (0..15, one per int32 element, the layout the CPU int4 kernel packs) of the
    ``rows x cols`` weight ``w`` in groups of ``group_size`` consecutive inputs, with each group's scale and
    zero-point of shape ``(rows, cols / group_size, 1)`` (``sec-quant-llm-weight-only``)."""
    view = grouped(w, group_size)
    scale, zero = qparams(view.amin(-1, keepdim=True), view.amax(-1, keepdim=True), 4, False, False)
    return quantize(view, scale, zero, 4, signed=False).reshape(w.shape), scale, zero


class WeightOnlyLinear(nn.Module):
    """A linear layer with int8 (per-channel) or int4 (per-group) weights on PyTorch's CPU kernels.

    The input is cast to bf16, multiplied by the dequantized-on-the-fly weight inside the kernel
    (``torch._weight_int8pack_mm`` / ``aten._weight_int4pack_mm_for_cpu``), and cast back: only
    the small integer codes are read from memory, which is what makes decoding faster (``sec-quant-llm-speed``).
    """

    def __init__(self, linear: nn.Linear, bits: int = 8, group_size: int = 64) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits!r}")
        w = linear.weight.detach().float().cpu()
        rows, cols = w.shape
        self.bits, self.group_size, self.out_features = bits, group_size, rows
        if bits == 8:
            scale = (w.abs().amax(1) / 127).clamp(min=torch.finfo(torch.float32).eps)
            self.register_buffer("codes", torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8))
            self.register_buffer("scales", scale.to(torch.bfloat16))
        else:
            if not int4_compatible(w.shape, group_size):
                raise ValueError(
                    f"the int4 kernel needs group_size dividing in_features ({cols}) and out_features "
                    f"({rows}) divisible by 16; got group_size {group_size}"
                )
            codes, scale, zero = int4_group_codes(w, group_size)
            self.register_buffer("codes", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
            offset = (8 - zero) * scale  # the kernel computes (q - 8) * scale + offset
            packed = torch.stack([scale.squeeze(-1), offset.squeeze(-1)], -1).transpose(0, 1).contiguous()
            self.register_buffer("scales", packed.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().cpu().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if self.bits == 8:
            y = torch._weight_int8pack_mm(flat, self.codes, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.codes, self.group_size, self.scales)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"int{self.bits}" + (f", group {self.group_size}" if self.bits == 4 else ", per channel")


def weight_only(model: nn.Module, bits: int = 8, group_size: int = 64) -> nn.Module:
    """A CPU copy of ``model`` with every ``nn.Linear`` (the output head too) as a :class:`WeightOnlyLinear`.

    With ``bits=4``, a layer whose shape the int4 kernel rejects (e.g. a 90-token output head) gets int8.
    """
    quantized = copy.deepcopy(model).cpu()
    for name, layer in list(quantized.named_modules()):
        if isinstance(layer, nn.Linear):
            parent, _, attr = name.rpartition(".")
            layer_bits = 8 if bits == 4 and not int4_compatible(layer.weight.shape, group_size) else bits
            setattr(quantized.get_submodule(parent) if parent else quantized, attr,
                    WeightOnlyLinear(layer, layer_bits, group_size))  # fmt: skip
    return quantized


def torchao_weight_only(model: nn.Module, bits: int = 8, group_size: int = 64) -> nn.Module:
    """A bf16 CPU copy of ``model`` with every ``nn.Linear`` quantized by torchao's ``quantize_``
    (``sec-quant-llm-speed``): ``Int8WeightOnlyConfig`` (one scale per row), or at 4 bits the CPU prototype
    ``PrototypeInt4WeightOnlyConfig`` (groups of ``group_size``; in torchao 0.18 ``Int4WeightOnlyConfig``'s
    packing formats are for GPU, XPU and NPU kernels). bf16, as torchao's CPU recipes use it: the int4 kernel's
    activations are the model's dtype. Layers the int4 format rejects keep bf16. Eager mode, as measured here;
    torchao's int8 weight-only path is fast only through ``torch.compile``."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if bits == 4:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        config = PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)
    else:
        config = Int8WeightOnlyConfig(set_inductor_config=False)
    quantized = copy.deepcopy(model).cpu().to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "skipping" notices for the layers a format rejects
        quantize_(quantized, config)
    return quantized


def decode_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights one decoding step reads: every linear layer's weights (codes and scales)."""
    total = 0
    for m in model.modules():
        if isinstance(m, WeightOnlyLinear):
            total += m.codes.numel() * m.codes.element_size() + m.scales.numel() * m.scales.element_size()
        elif isinstance(m, nn.Linear):
            total += tensor_bytes(m.weight)  # a torchao weight counts its codes and scales
        elif isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            total += m.weight().numel() + m.weight().q_per_channel_scales().numel() * 8  # fp64 scale, int64 zero
    return total
