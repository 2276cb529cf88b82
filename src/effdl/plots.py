"""Plots that several chapters draw: the roofline and the accuracy/cost frontier (``chap-measuring``)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from effdl.bench import Ceilings, pareto_front


def roofline(ceilings: Ceilings, points: dict[str, tuple[float, float]], ax: plt.Axes | None = None) -> plt.Axes:
    """Draw the roofline of ``ceilings`` (log-log) and place measured ``points`` on it.

    ``points`` maps a label to ``(arithmetic intensity in FLOP/byte, achieved GFLOP/s)``.
    Each dtype's matmul peak is a flat roof; the slanted lines are memory bandwidth, a copy's
    (the roof: most operators read and write) and a read's (dotted: what a kernel that only reads,
    such as a decode step, can approach).
    """
    if not points:
        raise ValueError("points must name at least one measured kernel")
    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    intensities = [i for i, _ in points.values()]
    lo, hi = min(intensities + [0.1]) / 3, max(intensities + [1000]) * 3
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    for dtype, peak in ceilings.matmul_gflops.items():
        ax.plot(x, np.minimum(peak, x * ceilings.bandwidth_gbs), label=f"roof: {dtype} matmul {peak:,.0f} GFLOP/s")
    ax.plot(x, x * ceilings.read_gbs, ":", color="grey", label=f"read bandwidth {ceilings.read_gbs:.0f} GB/s")
    for label, (intensity, gflops) in points.items():
        ax.scatter(intensity, gflops, zorder=3)
        ax.annotate(label, (intensity, gflops), textcoords="offset points", xytext=(5, -12), fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)",
           ylabel="GFLOP/s", title=f"Roofline of {ceilings.device}")  # fmt: skip
    ax.set_ylim(top=max(ceilings.matmul_gflops.values()) * 3)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def frontier(costs: Sequence[float], scores: Sequence[float], labels: Sequence[str],
             ax: plt.Axes | None = None, xlabel: str = "cost") -> plt.Axes:  # fmt: skip
    """Scatter models by cost and score and draw their Pareto frontier (best score per cost)."""
    if not len(costs) == len(scores) == len(labels):
        raise ValueError("costs, scores and labels must have equal length")
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    ax.scatter(costs, scores, color="tab:grey")
    for c, s, label in zip(costs, scores, labels, strict=True):
        ax.annotate(label, (c, s), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front(costs, scores)
    ax.plot([costs[i] for i in front], [scores[i] for i in front], "o-", color="tab:red", label="Pareto frontier")
    ax.set(xscale="log", xlabel=xlabel, ylabel="test accuracy")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor-tick labels overlap on short log ranges
    ax.legend()
    return ax
