"""One training step and its variants (``sec-hw-mixed``, ``sec-hw-accumulate``): autocast to bf16 or fp16, a
gradient scaler against fp16 underflow, and gradient accumulation over micro-batches.

Autocast runs the operators that gain from it (matmuls, convolutions) in the low-precision dtype and keeps
reductions such as softmax and the loss in fp32; the weights, their gradients and the optimizer stay fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from effdl.train import Loss, backward_and_step, token_cross_entropy

LOW_PRECISION = (torch.bfloat16, torch.float16)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
               grad_clip: float | None = None, loss_fn: Loss = token_cross_entropy) -> torch.Tensor:  # fmt: skip
    """Forward (under autocast to ``dtype`` if given), backward (of the loss times the scaler's scale if a scaler
    is given), gradients clipped to a total norm of ``grad_clip`` if given (after unscaling), optimizer step;
    returns the detached loss."""
    if dtype is not None and dtype not in LOW_PRECISION:
        raise ValueError(f"dtype must be None or one of {LOW_PRECISION}, got {dtype}")
    if grad_clip is not None and grad_clip <= 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip}")
    with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = loss_fn(model(x), y)
    if scaler is None:
        backward_and_step(model, optimizer, loss, grad_clip)
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # the true gradients, for clipping; step() does not unscale them again
        _clip(model, grad_clip)
        scaler.step(optimizer)  # skips the step if any gradient is inf or NaN
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _clip(model: nn.Module, grad_clip: float | None) -> None:
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)


def accumulate_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batches: int,
                         loss_fn: Loss = token_cross_entropy) -> torch.Tensor:  # fmt: skip
    """Add to ``.grad`` the gradient of the mean loss over the batch ``x``, computed in ``micro_batches`` equal
    pieces: each piece's mean loss is divided by ``micro_batches``, so the sum is the whole batch's mean. Returns
    the batch's mean loss. Exact only when the loss is a mean over equal pieces and the model treats examples
    independently (BatchNorm does not)."""
    if micro_batches <= 0 or len(x) % micro_batches:
        raise ValueError(f"micro_batches must be a positive divisor of the batch size {len(x)}, got {micro_batches}")
    total = torch.zeros(())
    for xs, ys in zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True):
        loss = loss_fn(model(xs), ys) / micro_batches
        loss.backward()
        total += loss.detach().cpu()
    return total


@dataclass(frozen=True)
class Underflow:
    """What casting values to fp16 does to the nonzero ones: the fractions flushed to zero, kept only as
    subnormals (below ``finfo(float16).tiny``, with fewer significant bits), and overflowed to infinity."""

    zero: float
    subnormal: float
    overflow: float


def fp16_underflow(values: torch.Tensor, scale: float = 1.0) -> Underflow:
    """The :class:`Underflow` of ``values * scale`` cast to fp16, over ``values``' nonzero entries."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    nonzero = values[values != 0].double() * scale
    if not len(nonzero):
        raise ValueError("values must hold at least one nonzero entry")
    half = nonzero.to(torch.float16)
    tiny = torch.finfo(torch.float16).tiny
    zero = (half == 0).double().mean().item()
    subnormal = ((half != 0) & (half.abs() < tiny)).double().mean().item()
    return Underflow(zero, subnormal, half.isinf().double().mean().item())
