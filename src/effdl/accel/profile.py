"""Where a training step's time goes (``sec-hw-profile``): ``torch.profiler`` over a few steps after warm-up, the
operators ranked by their own time, and a Chrome trace that https://ui.perfetto.dev opens.

An operator's *self* time excludes the operators it calls, so self times add up to the profiled time without
counting anything twice; what is left between operators (Python, the dispatcher) shows up as the self time of
the enclosing ``record_function`` range, here ``train_step``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity

STEP_RANGE = "train_step"
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")
ATTENTION_OPS = ("scaled_dot_product",)


def profile_steps(step: Callable[[], Any], steps: int = 3, warmup: int = 1, trace: str | Path | None = None,
                  device: torch.device | str = "cpu") -> torch.profiler.profile:  # fmt: skip
    """Run ``step()`` ``warmup + steps`` times under ``torch.profiler`` with a schedule that records only the last
    ``steps``, each inside a ``train_step`` range; write a Chrome trace to ``trace`` if given."""
    if steps <= 0 or warmup < 0:
        raise ValueError(f"steps must be positive and warmup >= 0, got {steps}, {warmup}")
    activities = [ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    schedule = torch.profiler.schedule(wait=0, warmup=warmup, active=steps, repeat=1)
    with torch.profiler.profile(activities=activities, schedule=schedule) as prof:
        for _ in range(warmup + steps):
            with torch.profiler.record_function(STEP_RANGE):
                step()
            prof.step()
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    return prof


@dataclass(frozen=True)
class OpTime:
    """One operator's own time per profiled step, its calls per step and its share of all self time."""

    name: str
    self_ms: float
    calls: float
    share: float


def _events(prof: torch.profiler.profile) -> list[Any]:
    """The averaged events that own time: every CPU-side operator and range except the profiler's step markers.

    On a GPU the profile also lists each kernel and each range's device-side copy as rows of their own; a CPU
    operator's self device time already includes the kernels it launched, so those rows would count it twice."""
    cpu = torch.autograd.DeviceType.CPU
    return [e for e in prof.key_averages() if e.device_type == cpu and not e.key.startswith("ProfilerStep")]


def _device_us(event: Any) -> float:
    return getattr(event, "self_device_time_total", 0.0)


def op_table(prof: torch.profiler.profile, steps: int, top: int | None = None) -> list[OpTime]:
    """Operators by self time per step over ``steps`` profiled steps, largest first: time on the GPU where the
    profile recorded GPU kernels (the CPU only launches them there), otherwise time on the CPU."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    events = _events(prof)
    on_device = sum(_device_us(e) for e in events) > 0
    self_us = [_device_us(e) if on_device else e.self_cpu_time_total for e in events]
    total = sum(self_us)
    rows = [OpTime(e.key, us / steps / 1e3, e.count / steps, us / total) for e, us in zip(events, self_us, strict=True)]
    return sorted(rows, key=lambda row: row.self_ms, reverse=True)[:top]


def share_of(table: Sequence[OpTime], patterns: Sequence[str]) -> float:
    """Fraction of all self time in the operators whose name contains one of ``patterns``."""
    if not patterns:
        raise ValueError("patterns must name at least one operator")
    return sum(row.share for row in table if any(p in row.name for p in patterns))
