"""Two updates written out, to read and to check against ``torch.optim`` (``sec-optim-zoo``)."""

from __future__ import annotations

import torch

# the quintic's coefficients of Keller Jordan's Muon, as torch.optim.Muon uses them
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def adamw_step(param: torch.Tensor, grad: torch.Tensor, state: dict, *, lr: float, betas=(0.9, 0.999),
               eps: float = 1e-8, weight_decay: float = 0.01) -> None:  # fmt: skip
    """One AdamW step on ``param`` in place; ``state`` holds the moments and the step count between calls.
    Decoupled weight decay: the parameter shrinks by ``lr * weight_decay`` of itself, outside the
    normalized gradient step (Adam's L2 ``weight_decay`` adds ``weight_decay * param`` to the gradient
    instead, and the normalization then rescales it)."""
    if lr < 0 or weight_decay < 0:
        raise ValueError(f"lr and weight_decay must be >= 0, got {lr}, {weight_decay}")
    beta1, beta2 = betas
    state.setdefault("m", torch.zeros_like(param))
    state.setdefault("v", torch.zeros_like(param))
    state["t"] = t = state.get("t", 0) + 1
    state["m"].lerp_(grad, 1 - beta1)  # m <- beta1 m + (1 - beta1) g
    state["v"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    m_hat, v_hat = state["m"] / (1 - beta1**t), state["v"] / (1 - beta2**t)
    param.mul_(1 - lr * weight_decay)
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def newton_schulz(g: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = 1e-7) -> torch.Tensor:
    """An approximately orthogonal matrix with the singular vectors of ``g`` (``U V^T`` of its SVD, with every
    singular value pushed near 1), by ``steps`` iterations of Muon's quintic Newton-Schulz map
    ``X <- a X + b (X X^T) X + c (X X^T)^2 X``, in ``g``'s dtype."""
    if g.ndim != 2:
        raise ValueError(f"g must be a 2-D matrix, got shape {tuple(g.shape)}")
    if not 0 < steps < 100:
        raise ValueError(f"steps must be in [1, 99], got {steps}")
    a, b, c = coefficients
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g  # iterate on the wide side: X X^T is the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)  # Frobenius norm >= spectral norm: every singular value <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x
