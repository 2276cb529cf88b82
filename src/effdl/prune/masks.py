"""Which weights to keep: importance scores, top-k and N:M masks, and masks that stay applied
(``chap-prune-unstructured``).

A *score* is a tensor shaped like the weight it ranks (higher = more important); a *mask* is a
0/1 tensor of the same shape. Scores and masks are dicts keyed by the weight's module name, over
the layers :func:`prunable` returns, so layer-wise and global selection work on the same objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

Scores = dict[str, torch.Tensor]
Masks = dict[str, torch.Tensor]


def check_sparsity(sparsity: float, name: str = "sparsity") -> None:
    """Raise ``ValueError`` naming the argument unless ``0 <= sparsity < 1``."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"{name} must be in [0, 1), got {sparsity}")


def prunable(model: nn.Module) -> dict[str, nn.Conv2d | nn.Linear]:
    """The layers whose weights are pruned: every ``Conv2d`` and ``Linear`` (biases and BN stay dense)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


# --- importance scores (sec-prune-unstructured-scores) ----------------------------------------


def magnitude_scores(model: nn.Module) -> Scores:
    """|w|: small weights matter least, the oldest criterion (Han et al., 2015)."""
    return {n: m.weight.detach().abs() for n, m in prunable(model).items()}


def random_scores(model: nn.Module, seed: int = 0) -> Scores:
    """Uniform random scores: the baseline any criterion must beat."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.weight.shape, generator=gen).to(m.weight.device) for n, m in prunable(model).items()}


def _loss_gradients(model: nn.Module, batches: Iterable) -> Iterable[dict[str, torch.Tensor]]:
    layers, dev = prunable(model), next(model.parameters()).device
    model.eval()
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x.to(dev)), y.to(dev)).backward()
        yield {n: m.weight.grad for n, m in layers.items()}
    model.zero_grad(set_to_none=True)


def taylor_scores(model: nn.Module, batches: Iterable) -> Scores:
    """First-order Taylor |w · ∂L/∂w|, summed over batches (Molchanov et al., 2017): the loss change
    predicted by a linear model when w is set to zero."""
    layers = prunable(model)
    scores = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    for grads in _loss_gradients(model, batches):
        for n, g in grads.items():
            scores[n] += (layers[n].weight.detach() * g).abs()
    return scores


def fisher_diagonal(model: nn.Module, batches: Iterable) -> Scores:
    """Empirical Fisher diag: the mean over *samples* of (∂ℓ_i/∂w)², per-sample gradients from ``torch.func``.

    Squaring a mini-batch gradient instead would average before squaring and underestimate it.
    It is not the Hessian. The Hessian is a Gauss-Newton term plus the outputs' second derivatives weighted
    by the loss gradient, which can be negative; the empirical Fisher uses the observed labels' gradients,
    is never negative, and approximates the Gauss-Newton term only near a minimum where the model fits the
    data well (Kunstner et al., 2019).
    """
    model.eval()
    layers = prunable(model)
    names = [f"{n}.weight" for n in layers]
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def sample_loss(weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, ({**params, **weights}, buffers), (x[None],))
        return F.cross_entropy(logits, y[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    dev = next(model.parameters()).device
    fisher, count = {n: torch.zeros_like(m.weight) for n, m in layers.items()}, 0
    for x, y in batches:
        grads = per_sample({k: params[k] for k in names}, x.to(dev), y.to(dev))
        for n in layers:
            fisher[n] += grads[f"{n}.weight"].pow(2).sum(0)
        count += len(x)
    return {n: f / max(count, 1) for n, f in fisher.items()}


def obd_scores(model: nn.Module, batches: Iterable) -> Scores:
    """Optimal Brain Damage saliency ½·h_ii·w² (LeCun et al., 1990), h_ii from :func:`fisher_diagonal`
    (the empirical Fisher: the Hessian's diagonal only near a minimum where the model fits the data)."""
    fisher = fisher_diagonal(model, batches)
    return {n: 0.5 * fisher[n] * m.weight.detach().pow(2) for n, m in prunable(model).items()}


# --- masks (sec-prune-unstructured-masks) -----------------------------------------------------


def _keep_top(score: torch.Tensor, keep: int) -> torch.Tensor:
    mask = torch.zeros(score.numel(), device=score.device)
    mask[score.flatten().topk(keep, sorted=False).indices] = 1
    return mask.view_as(score)


def layer_masks(scores: Scores, sparsity: float) -> Masks:
    """Remove the same fraction ``sparsity`` from every layer (the lowest scores of each)."""
    check_sparsity(sparsity)
    return {n: _keep_top(s, round(s.numel() * (1 - sparsity))) for n, s in scores.items()}


def global_masks(scores: Scores, sparsity: float) -> Masks:
    """Remove the fraction ``sparsity`` of all weights with the lowest scores, compared across layers."""
    check_sparsity(sparsity)
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = round(flat.numel() * (1 - sparsity))
    if keep == 0:
        return {n: torch.zeros_like(s) for n, s in scores.items()}
    threshold = flat.topk(keep).values[-1]
    masks = {n: (s >= threshold).float().contiguous() for n, s in scores.items()}  # contiguous: any weight layout
    excess = int(sum(m.sum().item() for m in masks.values())) - keep  # ties at the threshold
    for n, m in masks.items():
        if excess <= 0:
            break
        tied = ((scores[n] == threshold) & (m > 0)).flatten().nonzero().flatten()[:excess]
        m.view(-1)[tied] = 0
        excess -= len(tied)
    return masks


def row_masks(scores: Scores, sparsity: float) -> Masks:
    """Remove ``sparsity`` of each output row (Wanda's comparison group, ``chap-prune-structured``)."""
    check_sparsity(sparsity)
    masks = {}
    for n, s in scores.items():
        rows = s.flatten(1)
        keep = round(rows.shape[1] * (1 - sparsity))
        mask = torch.zeros_like(rows).scatter_(1, rows.topk(keep, dim=1).indices, 1)
        masks[n] = mask.view_as(s)
    return masks


def nm_masks(scores: Scores, n: int = 2, m: int = 4) -> Masks:
    """Keep the ``n`` highest of every ``m`` consecutive input weights (N:M sparsity, 2:4 on GPUs).

    Groups run along the input dimension (a conv's ``in x kh x kw``), which must divide by ``m``.
    """
    if not 0 < n < m:
        raise ValueError(f"n must be in [1, m), got n={n}, m={m}")
    masks = {}
    for name, s in scores.items():
        rows = s.flatten(1)
        if rows.shape[1] % m:
            raise ValueError(f"layer {name!r}: {rows.shape[1]} inputs do not divide into groups of m={m}")
        groups = rows.reshape(rows.shape[0], -1, m)
        mask = torch.zeros_like(groups).scatter_(2, groups.topk(n, dim=2).indices, 1)
        masks[name] = mask.view_as(s)
    return masks


def nm_compatible(model: nn.Module, m: int = 4) -> list[str]:
    """Names of the prunable layers whose input size divides by ``m``."""
    return [n for n, layer in prunable(model).items() if layer.weight[0].numel() % m == 0]


# --- applying and keeping masks ---------------------------------------------------------------


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Masks) -> nn.Module:
    """Zero the pruned weights in place (the mask itself is not stored)."""
    layers = prunable(model)
    for n, mask in masks.items():
        layers[n].weight.mul_(mask.to(layers[n].weight.device))
    return model


class MaskKeeper:
    """Keeps masked weights at zero while a model trains: re-applies the masks before every forward
    and once more when removed (the last optimizer step comes after the last forward).

    Masking gradients alone is not enough: weight decay or momentum left from before pruning move
    pruned weights again (a pitfall of ``chap-prune-structured``). Use as a context manager or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module, masks: Masks):
        layers = prunable(model)
        self.model, self.masks = model, masks
        self.handles = [layers[n].register_forward_pre_hook(self._hook(mask)) for n, mask in masks.items()]

    @staticmethod
    def _hook(mask: torch.Tensor) -> Callable:
        def reapply(module: nn.Module, args: tuple) -> None:
            with torch.no_grad():
                module.weight.mul_(mask.to(module.weight.device))

        return reapply

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        apply_masks_(self.model, self.masks)

    def __enter__(self) -> MaskKeeper:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def masks_of(model: nn.Module) -> Masks:
    """The masks a pruned model carries implicitly: 1 where a weight is non-zero."""
    return {n: (m.weight.detach() != 0).float() for n, m in prunable(model).items()}


def sparsity(model_or_masks: nn.Module | Masks) -> float:
    """Fraction of zeros among prunable weights, counted from the tensors themselves."""
    tensors = (
        [m.weight.detach() for m in prunable(model_or_masks).values()]
        if isinstance(model_or_masks, nn.Module) else list(model_or_masks.values())
    )  # fmt: skip
    zeros = sum(int((t == 0).sum()) for t in tensors)
    return zeros / max(sum(t.numel() for t in tensors), 1)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zeros in each prunable layer's weight."""
    return {n: float((m.weight == 0).float().mean()) for n, m in prunable(model).items()}


# --- schedules (sec-prune-unstructured-iterative) ---------------------------------------------


def polynomial_sparsity(step: int, total: int, final: float, initial: float = 0.0, power: int = 3) -> float:
    """Gradual pruning (Zhu & Gupta, 2017): s_t = s_f + (s_i − s_f)(1 − t/T)^power, fast early, slow late."""
    check_sparsity(final, "final")
    check_sparsity(initial, "initial")
    if total <= 0 or not 0 <= step <= total:
        raise ValueError(f"step must be in [0, total] with total > 0, got step={step}, total={total}")
    return final + (initial - final) * (1 - step / total) ** power


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """Sparsity after each of ``rounds`` prune/fine-tune cycles, removing the same *fraction of survivors*
    every round: 1 − (1 − final)^(k/rounds) (Han et al., 2015; Frankle & Carbin, 2019)."""
    check_sparsity(final, "final")
    if rounds <= 0:
        raise ValueError(f"rounds must be positive, got {rounds}")
    return [1 - (1 - final) ** (k / rounds) for k in range(1, rounds + 1)]
