"""Sharded data parallelism: ZeRO's three stages with PyTorch's own engines (``sec-parallel-zero``).

Plain DDP keeps on every rank the parameters, the gradients and the optimizer state (AdamW: two moments per
parameter). ZeRO-1 (``ZeroRedundancyOptimizer``) shards the optimizer state: each rank updates 1/N of the
parameters and broadcasts them. ZeRO-2 also shards the gradients (a reduce-scatter instead of an all-reduce):
here FSDP2's ``fully_shard(..., reshard_after_forward=False)``, which keeps the gathered parameters from the
forward pass to the backward pass. ZeRO-3 (``fully_shard``) shards the parameters too, all-gathering each block
just before it runs and freeing it after. Bytes are counted from the tensors each rank holds (a DTensor's local
shard), not from a formula.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from effdl.parallel.data_parallel import Batch, local_slice
from effdl.parallel.group import rank, world
from effdl.train import backward_and_step, token_cross_entropy

STRATEGIES = ("single", "ddp", "zero1", "zero2", "zero3")


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this rank stores for ``tensors``: a DTensor's local shard, each storage counted once."""
    storages = {}
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        storages[local.untyped_storage().data_ptr()] = local.untyped_storage().nbytes()
    return sum(storages.values())


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The state tensors of ``optimizer`` (AdamW's moments; its step counters too), of the shard it updates."""
    inner = optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer
    return [v for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def rank_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Parameter, gradient and optimizer-state bytes held by this rank now."""
    params = list(model.parameters())
    return {"parameters": local_bytes(params), "gradients": local_bytes(p.grad for p in params if p.grad is not None),
            "optimizer": local_bytes(optimizer_tensors(optimizer))}  # fmt: skip


def wrap(model: nn.Module, strategy: str, lr: float, blocks: str = "") -> tuple[nn.Module, torch.optim.Optimizer]:
    """``model`` prepared for ``strategy`` (one of :data:`STRATEGIES`) and its AdamW: FSDP2 shards each child of
    submodule ``blocks`` (default: of the model itself; ``"blocks"`` for the GPT's transformer blocks) as a unit
    of its own, then the rest of the model as one more."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy in ("ddp", "zero1"):
        model = DDP(model)
    if strategy in ("zero2", "zero3"):
        for block in model.get_submodule(blocks).children():
            fully_shard(block, reshard_after_forward=strategy == "zero3")
        fully_shard(model, reshard_after_forward=strategy == "zero3")
    if strategy == "zero1":
        return model, ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=lr)
    return model, torch.optim.AdamW(model.parameters(), lr=lr)


def memory_per_rank(model: nn.Module, batches: Sequence[Batch], strategy: str, lr: float = 1e-3,
                    blocks: str = "", loss_fn: Callable = token_cross_entropy) -> dict:  # fmt: skip
    """Train a copy of ``model`` under ``strategy`` on ``batches`` (``single``: one process on the whole batch);
    the bytes this rank holds after the last step (before ``zero_grad``), the parameter bytes it held between
    forward and backward (where ZeRO-2 and ZeRO-3 differ), and the losses."""
    model, optimizer = wrap(copy.deepcopy(model), strategy, lr, blocks)
    losses, held = [], 0
    for batch in batches:
        x, y = batch if strategy == "single" else local_slice(batch, rank(), world())
        loss = loss_fn(model(x), y)
        held = max(held, local_bytes(model.parameters()))  # parameters only: clearing gradients later changes none
        backward_and_step(model, optimizer, loss)
        losses.append(loss.item())
    return {"strategy": strategy, **rank_bytes(model, optimizer), "parameters_in_backward": held, "losses": losses}
