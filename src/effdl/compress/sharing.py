"""Weight sharing (Han et al. 2016): each layer's non-zero weights replaced by the nearest of ``2**bits``
centroids found by k-means, the centroids then fine-tuned (``sec-combine-sharing``).

A shared layer stores a small index per weight and one codebook. Its weight is rebuilt as
``codebook[index] * mask`` by a parametrization (:mod:`torch.nn.utils.parametrize`), so autograd sums the
gradients of every weight in a cluster into its centroid: the paper's centroid fine-tuning, with the
pruned zeros kept at zero.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from effdl.prune.masks import prunable

INITS = ("linear", "random", "density")


def _initial_centroids(values: torch.Tensor, k: int, init: str, seed: int) -> torch.Tensor:
    if init == "linear":  # evenly spaced over the range: large, rare weights keep their own centroids
        return torch.linspace(values.min().item(), values.max().item(), k)
    if init == "density":  # evenly spaced over the CDF: centroids crowd where the weights are
        return torch.quantile(values, torch.linspace(0, 1, k))
    gen = torch.Generator().manual_seed(seed)
    return values[torch.randperm(values.numel(), generator=gen)[:k]].sort().values


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted 1-D ``centroids`` for each value (the boundaries are midpoints)."""
    return torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)


def kmeans_1d(values: torch.Tensor, k: int, init: str = "linear", iters: int = 30,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Lloyd's k-means on scalars: ``(sorted centroids, index of each value's centroid)``. ``init`` is
    ``linear`` (Han et al.'s choice), ``density`` or ``random``; an empty cluster keeps its centroid."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(k, int) or not 1 <= k <= values.numel():
        raise ValueError(f"k must be an int in [1, {values.numel()}] (the number of values), got {k!r}")
    values = values.detach().flatten().float()
    centroids = _initial_centroids(values, k, init, seed).float()
    for _ in range(iters):
        index = assign(values, centroids)
        sums = torch.zeros(k).index_add_(0, index, values)
        sizes = torch.bincount(index, minlength=k)
        moved = torch.where(sizes > 0, sums / sizes.clamp(min=1), centroids).sort().values
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids, assign(values, centroids)


class SharedWeight(nn.Module):
    """A parametrization that ignores the stored weight and returns ``codebook[index] * mask``; only the
    codebook is a parameter."""

    def __init__(self, codebook: torch.Tensor, index: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.codebook = nn.Parameter(codebook.clone())
        self.register_buffer("index", index)
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.codebook[self.index] * self.mask


def share_weights_(model: nn.Module, bits: int | dict[str, int], init: str = "linear") -> nn.Module:
    """Replace the weight of every linear and convolution layer by ``2**bits`` shared values (``bits`` may
    differ per layer name): k-means on the layer's non-zero weights, zeros kept as zeros. Train the model to
    fine-tune the centroids; :func:`bake_` turns the layers back into plain ones."""
    for name, layer in prunable(model).items():
        width = bits[name] if isinstance(bits, dict) else bits
        if not isinstance(width, int) or not 1 <= width <= 8:
            raise ValueError(f"bits must be an int in [1, 8] (for {name}), got {width!r}")
        weight = layer.weight.detach()
        mask = weight != 0
        k = min(2**width, int(mask.sum()))
        codebook, index = kmeans_1d(weight[mask], k, init)
        full_index = torch.zeros_like(weight, dtype=torch.long)
        full_index[mask] = index
        parametrize.register_parametrization(layer, "weight", SharedWeight(codebook, full_index, mask.float()))
    return model


def shared_layers(model: nn.Module) -> dict[str, SharedWeight]:
    """The :class:`SharedWeight` of every shared layer, by layer name."""
    found = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            first = module.parametrizations.weight[0]
            if isinstance(first, SharedWeight):
                found[name] = first
    return found


def bake_(model: nn.Module) -> nn.Module:
    """Make every shared layer a plain one again, its weight the current ``codebook[index] * mask``."""
    for name in shared_layers(model):
        parametrize.remove_parametrizations(model.get_submodule(name), "weight", leave_parametrized=True)
    return model
