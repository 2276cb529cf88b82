"""Pipeline parallelism with ``torch.distributed.pipelining``: each rank holds a consecutive slice of the layers
(a stage) and the batch flows through them in micro-batches (``sec-parallel-pipeline``).

With ``p`` equal stages and ``m`` micro-batches, a GPipe step runs every micro-batch's forward, then every
backward; each stage waits ``p - 1`` micro-batch slots while the pipeline fills and ``p - 1`` while it drains, so
the idle share of the step (the bubble) is ``(p - 1) / (m + p - 1)``. 1F1B interleaves one forward and one
backward in the steady state: the same bubble, but at most ``p`` micro-batches' activations held instead of
``m``. Here the stages are given static example inputs and outputs (``input_args`` / ``output_args``, marked as
needing gradients where a gradient travels back): on gloo, ``PipelineStage``'s runtime shape inference waits
forever.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from effdl.parallel.group import rank, worker_device, world

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def ideal_bubble(stages: int, microbatches: int) -> float:
    """The idle share of a GPipe or 1F1B step with equal stages: ``(p - 1) / (m + p - 1)``."""
    if stages < 1 or microbatches < 1:
        raise ValueError(f"stages and microbatches must be >= 1, got {stages} and {microbatches}")
    return (stages - 1) / (microbatches + stages - 1)


def stage_layers(width: int, depth: int, seed: int) -> nn.Sequential:
    """One stage: ``depth`` Linear + ReLU layers of ``width`` units (seeded, so every stage is built alike)."""
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)])


class _Edge(torch.autograd.Function):
    """Identity whose backward reads the clock: at a stage's output it marks where the stage's backward starts,
    at its input where it ends."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stopwatch: Stopwatch, start: bool) -> torch.Tensor:
        ctx.stopwatch, ctx.start = stopwatch, start
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        ctx.stopwatch.backward_edge(ctx.start)
        return grad, None, None


class Stopwatch(nn.Module):
    """Wraps a stage and adds up the seconds it computes, forward and backward, while the schedule runs it."""

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self.layers, self.busy, self._backward_start = layers, 0.0, 0.0

    def backward_edge(self, start: bool) -> None:
        if start:
            self._backward_start = time.perf_counter()
        else:
            self.busy += time.perf_counter() - self._backward_start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        x = x if x.requires_grad else x.detach().requires_grad_()  # the first stage: time its backward too
        out = _Edge.apply(self.layers(_Edge.apply(x, self, False)), self, True)
        self.busy += time.perf_counter() - start
        return out


def measure_bubble(width: int, depth: int, batch: int, microbatches: int, schedule: str = "gpipe",
                   steps: int = 3) -> dict:  # fmt: skip
    """Run ``steps`` training steps of a pipeline of ``world()`` stages (this rank's is :func:`stage_layers`) on
    a random batch in ``microbatches`` micro-batches; this rank's measured bubble ``1 - busy / wall`` (busy: the
    seconds its stage computed during the step, read by :class:`Stopwatch`; the median over steps after one
    warm-up step), the wall seconds of a step and the ideal bubble."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if batch % microbatches:
        raise ValueError(f"microbatches ({microbatches}) must divide batch ({batch})")
    stages, device = world(), worker_device()
    timed = Stopwatch(stage_layers(width, depth, seed=rank()).to(device))
    micro = torch.randn(batch // microbatches, width, device=device)
    received = micro.clone().requires_grad_(rank() > 0)  # a later stage sends the gradient of what it receives
    stage = PipelineStage(timed, rank(), stages, device, input_args=(received,),
                          output_args=(micro.clone().requires_grad_(),))  # fmt: skip
    runner = SCHEDULES[schedule](stage, n_microbatches=microbatches, loss_fn=F.mse_loss)
    x, target = torch.randn(batch, width, device=device), torch.randn(batch, width, device=device)
    bubbles, walls = [], []
    for step in range(steps + 1):
        dist.barrier()
        timed.busy, start = 0.0, time.perf_counter()
        _step(runner, x, target)
        dist.barrier()
        wall = time.perf_counter() - start
        if step:  # the first step warms up
            bubbles.append(1 - timed.busy / wall)
            walls.append(wall)
    return {"schedule": schedule, "microbatches": microbatches, "stages": stages,
            "bubble": statistics.median(bubbles), "wall_s": statistics.median(walls),
            "ideal": ideal_bubble(stages, microbatches)}  # fmt: skip


def _step(runner: object, x: torch.Tensor, target: torch.Tensor) -> None:
    """One schedule step: the first stage feeds the batch, the last computes the loss against ``target``."""
    if rank() == 0:
        runner.step(x)
    elif rank() == world() - 1:
        runner.step(target=target)
    else:
        runner.step()


def gradient_difference(width: int, depth: int, batch: int, microbatches: int, schedule: str = "gpipe") -> float:
    """This stage's gradients after one pipelined step against those of the whole model (every stage, built
    alike) run in one process on the whole batch: ``||dg|| / ||g||``. The schedule averages the micro-batches'
    gradients, so the two must agree to rounding."""
    device, stages = worker_device(), world()
    torch.manual_seed(1234)
    x, target = torch.randn(batch, width, device=device), torch.randn(batch, width, device=device)
    whole = nn.Sequential(*[stage_layers(width, depth, seed=s) for s in range(stages)]).to(device)
    F.mse_loss(whole(x), target).backward()
    mine = stage_layers(width, depth, seed=rank()).to(device)
    micro = torch.zeros(batch // microbatches, width, device=device)
    stage = PipelineStage(mine, rank(), stages, device, input_args=(micro.clone().requires_grad_(rank() > 0),),
                          output_args=(micro.clone().requires_grad_(),))  # fmt: skip
    _step(SCHEDULES[schedule](stage, n_microbatches=microbatches, loss_fn=F.mse_loss), x, target)
    expected = torch.cat([p.grad.flatten() for p in whole[rank()].parameters()])
    got = torch.cat([p.grad.flatten() for p in mine.parameters()])
    return ((got - expected).norm() / expected.norm()).item()


def bubble_sweep(width: int, depth: int, batch: int, microbatches: list[int], schedules: list[str],
                 steps: int = 3) -> list[dict]:  # fmt: skip
    """:func:`measure_bubble` for every schedule and number of micro-batches."""
    return [measure_bubble(width, depth, batch, m, s, steps) for s in schedules for m in microbatches]


def crowded(threads: int, width: int, depth: int, batch: int, microbatches: int, steps: int = 3) -> dict:
    """:func:`measure_bubble` (GPipe) with ``threads`` intra-op threads in this worker, as ``OMP_NUM_THREADS``
    would set them (a common mistake: every worker given all the cores), then the threads it had."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure_bubble(width, depth, batch, microbatches, "gpipe", steps)
    finally:
        torch.set_num_threads(before)
