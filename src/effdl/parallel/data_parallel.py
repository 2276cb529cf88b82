"""Data parallelism: every rank holds the whole model and a slice of each batch (``sec-parallel-ddp``).

``DistributedDataParallel`` all-reduces (averages) the gradients during the backward pass, in buckets of about
``bucket_cap_mb`` megabytes that start as soon as their gradients are ready, so communication overlaps the rest
of the backward pass. Under ``no_sync()`` it skips the all-reduce and lets gradients accumulate locally, so
``accumulate`` micro-batches cost one all-reduce per bucket, not one per micro-batch. With the loss a mean over
each rank's slice and equal slices, the averaged gradient is the gradient of the global batch: the parameters
after K steps equal one process's on the global batch, to rounding. How far that rounding travels depends on the
optimizer: SGD's update is linear in the gradient, AdamW divides each entry by the root of its squared average,
which enlarges the rounding of entries whose gradients are tiny.
"""


import contextlib
import copy
import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler

from effdl.parallel.group import rank, world
from effdl.train import backward_and_step, token_cross_entropy

Batch = tuple[torch.Tensor, torch.Tensor]



def local_slice(batch: Batch, rank: int, world: int) -> Batch:
    """Rank ``rank``'s equal, contiguous share of a global batch (``ValueError`` unless ``world`` divides it)."""
    x, y = batch
    if len(x) % world:
        raise ValueError(f"world ({world}) must divide the global batch size {len(x)}")
    return x.chunk(world)[rank], y.chunk(world)[rank]


def relative_difference(a: nn.Module, b: nn.Module) -> float:
    """``||theta_a - theta_b|| / ||theta_b||`` over all parameters."""
    flat_a, flat_b = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (a, b))
    return ((flat_a - flat_b).norm() / flat_b.norm()).item()


OPTIMIZERS = {"sgd": functools.partial(torch.optim.SGD, momentum=0.9), "adamw": torch.optim.AdamW}


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """SGD with momentum 0.9 (``"sgd"``) or AdamW (``"adamw"``) over ``params``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](params, lr=lr)


def train_single(model: nn.Module, batches: Sequence[Batch], lr: float, optimizer: str = "adamw",
                 loss_fn: Callable = token_cross_entropy) -> list[float]:  # fmt: skip
    """The reference: one process, ``optimizer`` on each whole (global) batch; the loss of every step."""
    optimizer = make_optimizer(optimizer, model.parameters(), lr)
    losses = []
    for x, y in batches:
        loss = loss_fn(model(x), y)
        backward_and_step(model, optimizer, loss)
        losses.append(loss.item())
    return losses


@dataclasses.dataclass
class Traffic:
    """What DDP sent: all-reduce calls (one per bucket per synchronized backward pass) and their bytes."""

    calls: int = 0
    bytes: int = 0


def counting_allreduce(traffic: Traffic, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook that counts each bucket's all-reduce in ``traffic``, then does what DDP does by
    default (``allreduce_hook``: average the bucket over the ranks)."""
    traffic.calls += 1
    traffic.bytes += bucket.buffer().numel() * bucket.buffer().element_size()
    return allreduce_hook(None, bucket)


def train_ddp(model: nn.Module, batches: Sequence[Batch], lr: float, accumulate: int = 1, no_sync: bool = True,
              bucket_cap_mb: float = 25.0, optimizer: str = "adamw",
              loss_fn: Callable = token_cross_entropy) -> dict:  # fmt: skip
    """Train ``model`` wrapped in DDP on this rank's slice of each global batch, in ``accumulate`` micro-batches
    (all but the last under ``no_sync()`` unless ``no_sync=False``); the global loss of every step (the mean of the
    ranks'), and the all-reduces and bytes DDP sent per optimizer step."""
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    ddp = DDP(model, bucket_cap_mb=bucket_cap_mb)
    traffic = Traffic()
    ddp.register_comm_hook(traffic, counting_allreduce)
    optimizer = make_optimizer(optimizer, ddp.parameters(), lr)
    losses = []
    for batch in batches:
        x, y = local_slice(batch, rank(), world())
        optimizer.zero_grad()
        total = torch.zeros((), device=x.device)  # NCCL all-reduces GPU tensors only
        for i, (xm, ym) in enumerate(zip(x.chunk(accumulate), y.chunk(accumulate), strict=True)):
            last = i == accumulate - 1
            with ddp.no_sync() if no_sync and not last else contextlib.nullcontext():
                loss = loss_fn(ddp(xm), ym) / accumulate
                loss.backward()
            total += loss.detach()
        optimizer.step()
        dist.all_reduce(total, op=dist.ReduceOp.AVG)
        losses.append(total.item())
    steps = len(batches)
    return {"losses": losses, "allreduces_per_step": traffic.calls / steps, "bytes_per_step": traffic.bytes / steps}


def ddp_versus_single(model: nn.Module, batches: Sequence[Batch], lr: float, accumulate: int = 1,
                      no_sync: bool = True, single_lr: float | None = None, bucket_cap_mb: float = 25.0,
                      optimizer: str = "adamw", loss_fn: Callable = token_cross_entropy) -> dict:  # fmt: skip
    """DDP on every rank, and on rank 0 also one process on the global batches from the same start (at
    ``single_lr``, default ``lr``): both loss curves and the parameters' relative difference (rank 0's record;
    the other ranks return their DDP record only). ``model`` itself is trained: pass a copy to keep it."""
    reference = copy.deepcopy(model)
    result = train_ddp(model, batches, lr, accumulate, no_sync, bucket_cap_mb, optimizer, loss_fn)
    if rank() == 0:
        result["single_losses"] = train_single(reference, batches, single_lr or lr, optimizer, loss_fn)
        result["relative_difference"] = relative_difference(model, reference)
    return result


def epoch_orders(size: int, world: int, rank: int, epochs: int, set_epoch: bool = True) -> list[list[int]]:
    """The indices a ``DistributedSampler`` gives rank ``rank`` of ``world`` in each of ``epochs`` epochs, with or
    without ``set_epoch(epoch)`` before each (a common mistake: without it every epoch repeats the first one's
    shuffle)."""
    sampler = DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=True, seed=0)
    orders = []
    for epoch in range(epochs):
        if set_epoch:
            sampler.set_epoch(epoch)
        orders.append(list(sampler))
    return orders
