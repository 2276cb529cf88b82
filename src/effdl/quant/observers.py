"""Range choice: observers that watch tensors and propose the range ``[lo, hi]`` to quantize
(``sec-quant-basics-observers``).

Every observer has ``update(x)`` (call it on each calibration batch) and ``range()``. ``axis``
keeps one range per slice along that axis (per channel); ``None`` keeps one for the tensor.
Min-max keeps every outlier; the moving average smooths batch-to-batch noise; the percentile
observer drops the extreme tail; the MSE observer searches the clipping that minimises the
quantization error of the values it saw.
"""

from __future__ import annotations

import torch

from effdl.quant.core import fake_quantize, minmax


class Observer:
    """Base class: remembers the axis and answers ``range()`` once it has seen data."""

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None or self.hi is None:
            raise RuntimeError(f"{type(self).__name__} has seen no data: call update() on calibration batches first")
        return self.lo, self.hi


class MinMaxObserver(Observer):
    """The running minimum and maximum over all batches."""

    def update(self, x: torch.Tensor) -> None:
        lo, hi = minmax(x.detach().float(), self.axis)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)


class MovingAverageObserver(Observer):
    """An exponential moving average of each batch's min and max (weight ``momentum`` on the new batch)."""

    def __init__(self, axis: int | None = None, momentum: float = 0.1) -> None:
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        super().__init__(axis)
        self.momentum = momentum

    def update(self, x: torch.Tensor) -> None:
        lo, hi = minmax(x.detach().float(), self.axis)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)


class _SampleObserver(Observer):
    """Keeps up to ``max_samples`` values per channel (a random subset) to choose a range from."""

    def __init__(self, axis: int | None = None, max_samples: int = 2**18, seed: int = 0) -> None:
        super().__init__(axis)
        self.max_samples = max_samples
        self.samples: torch.Tensor | None = None
        self.generator = torch.Generator().manual_seed(seed)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu()
        if self.axis is None:
            return x.reshape(1, -1)
        return x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)

    def update(self, x: torch.Tensor) -> None:
        self.ndim = x.dim()
        rows = self._rows(x)
        self.samples = rows if self.samples is None else torch.cat([self.samples, rows], 1)
        if self.samples.shape[1] > self.max_samples:
            keep = torch.randperm(self.samples.shape[1], generator=self.generator)[: self.max_samples]
            self.samples = self.samples[:, keep]
        self.lo = self.hi = None  # chosen again, from all samples, on the next range()

    def _shape(self, per_row: torch.Tensor) -> torch.Tensor:
        """Per-row values reshaped to broadcast against the observed tensor."""
        shape = [1] * self.ndim
        if self.axis is not None:
            shape[self.axis] = -1
        return per_row.reshape(shape)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None and self.samples is not None:
            lo, hi = self._choose(self.samples)
            self.lo, self.hi = self._shape(lo), self._shape(hi)
        return super().range()

    def _choose(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class PercentileObserver(_SampleObserver):
    """The ``100 - percentile`` and ``percentile`` quantiles of the values seen (e.g. 99.99)."""

    def __init__(self, axis: int | None = None, percentile: float = 99.99, **kwargs) -> None:
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(axis, **kwargs)
        self.percentile = percentile

    def _choose(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
        lo, hi = torch.quantile(samples, q, dim=1)
        return lo, hi


class MSEObserver(_SampleObserver):
    """The clipped range ``alpha * [min, max]`` whose fake-quantization error is smallest.

    ``alpha`` is searched on a grid of ``grid`` values in ``[min_ratio, 1]``, per channel when
    ``axis`` is set. The error depends on the grid, so the observer needs ``bits`` and whether the
    quantizer is symmetric.
    """

    def __init__(self, axis: int | None = None, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
                 grid: int = 50, min_ratio: float = 0.2, **kwargs) -> None:  # fmt: skip
        if grid < 1 or not 0 < min_ratio <= 1:
            raise ValueError(f"grid must be >= 1 and min_ratio in (0, 1], got {grid}, {min_ratio}")
        super().__init__(axis, **kwargs)
        self.bits, self.symmetric, self.grid, self.min_ratio = bits, symmetric, grid, min_ratio
        self.signed = symmetric if signed is None else signed

    def _choose(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = samples.amin(1, keepdim=True), samples.amax(1, keepdim=True)
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for ratio in torch.linspace(self.min_ratio, 1.0, self.grid):
            approx = fake_quantize(samples, self.bits, signed=self.signed, symmetric=self.symmetric,
                                   lo=lo * ratio, hi=hi * ratio)  # fmt: skip
            err = (approx - samples).pow(2).mean(1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo * ratio, best_lo)
            best_hi = torch.where(better, hi * ratio, best_hi)
        return best_lo.flatten(), best_hi.flatten()


OBSERVERS = {"minmax": MinMaxObserver, "moving_average": MovingAverageObserver,
             "percentile": PercentileObserver, "mse": MSEObserver}  # fmt: skip


def make_observer(name: str, axis: int | None = None, **kwargs) -> Observer:
    """An observer by name: one of ``minmax``, ``moving_average``, ``percentile``, ``mse``."""
    if name not in OBSERVERS:
        raise ValueError(f"observer must be one of {sorted(OBSERVERS)}, got {name!r}")
    return OBSERVERS[name](axis, **kwargs)
