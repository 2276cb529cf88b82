"""Is a difference real? Standard errors over seeds and test images, and McNemar's paired test.

The book's rule (``sec-measuring-noise``): a difference under two standard errors is
"no measurable difference". What the prose calls a win is either measured over several seeds
(:func:`spread`, :func:`difference_of_means`) or, for one pair of models on the same test set,
checked with McNemar's test on the images where exactly one of them is right (:func:`mcnemar`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.stats import binomtest
from scipy.stats import t as student_t

NO_DIFFERENCE = "no measurable difference"


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and standard error of the mean of repeated runs."""

    mean: float
    std: float
    se: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.std:.2g} (n={self.n})"


@dataclass(frozen=True)
class Difference:
    """``a - b`` with its standard error; measurable when at least two standard errors from zero.

    Two standard errors is the many-sample form of a two-sided 95 % test. When the standard error comes
    from few samples (``dof`` degrees of freedom, e.g. 3 seeds or 4 windows), Student's t critical value
    replaces the 2 (4.3 for 2 degrees of freedom, 12.7 for 1), so a handful of samples cannot call a win.
    """

    value: float
    se: float
    dof: int | None = None  # degrees of freedom of ``se``; None: many samples

    @property
    def threshold(self) -> float:
        """How many standard errors make the difference measurable: 2, or Student's t for few samples."""
        return 2.0 if self.dof is None else max(2.0, float(student_t.ppf(0.975, self.dof)))

    @property
    def measurable(self) -> bool:
        return abs(self.value) >= self.threshold * self.se

    def verdict(self, positive: str = "higher", negative: str = "lower") -> str:
        """``positive`` or ``negative`` by the sign of a measurable difference, else "no measurable difference"."""
        if not self.measurable:
            return NO_DIFFERENCE
        return positive if self.value > 0 else negative


@dataclass(frozen=True)
class Paired:
    """McNemar's exact test for two classifiers on the same examples."""

    only_a: int  # examples that only model a gets right
    only_b: int
    n: int
    p_value: float

    @property
    def difference(self) -> float:
        """Accuracy of a minus accuracy of b (a fraction)."""
        return (self.only_a - self.only_b) / self.n

    @property
    def measurable(self) -> bool:
        return self.p_value < 0.05

    def verdict(self, positive: str = "higher", negative: str = "lower") -> str:
        if not self.measurable:
            return NO_DIFFERENCE
        return positive if self.difference > 0 else negative


def spread(values: Sequence[float]) -> Spread:
    """:class:`Spread` of ``values`` (one per seed); needs at least two values."""
    if len(values) < 2:
        raise ValueError(f"values must hold at least 2 runs, got {len(values)}")
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return Spread(mean, std, std / math.sqrt(len(values)), len(values))


def difference_of_means(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Mean of ``a`` minus mean of ``b`` (independent runs), with the standard error of that difference
    (and, conservatively, the degrees of freedom of the smaller sample)."""
    sa, sb = spread(a), spread(b)
    return Difference(sa.mean - sb.mean, math.hypot(sa.se, sb.se), min(sa.n, sb.n) - 1)


def accuracy_se(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy (a fraction) measured on ``n`` independent test examples."""
    if not 0 <= accuracy <= 1 or n <= 0:
        raise ValueError(f"accuracy must be in [0, 1] and n positive, got {accuracy}, {n}")
    return math.sqrt(accuracy * (1 - accuracy) / n)


def mcnemar(correct_a: torch.Tensor, correct_b: torch.Tensor) -> Paired:
    """McNemar's exact two-sided test from per-example correctness (bool tensors of equal shape)."""
    if correct_a.shape != correct_b.shape or correct_a.dtype != torch.bool or correct_b.dtype != torch.bool:
        raise ValueError("correct_a and correct_b must be bool tensors of the same shape")
    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((correct_b & ~correct_a).sum())
    p_value = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue
    return Paired(only_a, only_b, correct_a.numel(), float(p_value))
