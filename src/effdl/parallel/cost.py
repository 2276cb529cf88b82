"""A cost model that extrapolates the strategies to many GPUs (``sec-parallel-cost``): memory per GPU from
ZeRO's accounting, communication from the ring collectives' alpha-beta costs over published interconnects.

Mixed-precision AdamW keeps, per parameter, 2 bytes of fp16/bf16 weights, 2 of gradients and 12 of optimizer
state (an fp32 master copy and two fp32 moments): 16 bytes in all (ZeRO's ``K = 12``). DDP holds all 16 on every
GPU; ZeRO-1 shards the 12, ZeRO-2 the 12 + 2, ZeRO-3 all 16. DDP, ZeRO-1 and ZeRO-2 move the gradients once per
step (an all-reduce, or a reduce-scatter plus an all-gather: the same bytes); ZeRO-3 all-gathers the weights for
the forward and again for the backward pass, 1.5 times DDP's traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
BYTES_PER_PARAM = {"weights": 2, "gradients": 2, "optimizer": 12}


@dataclass(frozen=True)
class Link:
    """An interconnect as the alpha-beta model sees it: latency per message and bandwidth per GPU, one way."""

    name: str
    bandwidth: float  # bytes/s per GPU, one direction
    latency: float  # s per message


NVLINK4 = Link("NVLink 4 (H100 SXM)", 450e9, 3e-6)  # 900 GB/s both ways per H100
INFINIBAND_NDR = Link("InfiniBand NDR", 50e9, 5e-6)  # 400 Gb/s per port, one port per GPU
GPUS_PER_NODE = 8
H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak of an H100 SXM
H100_MEMORY = 80e9


def link_for(gpus: int) -> Link:
    """The slowest link of a ring over ``gpus`` GPUs: NVLink inside one 8-GPU node, InfiniBand across nodes."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    return NVLINK4 if gpus <= GPUS_PER_NODE else INFINIBAND_NDR


def ring_all_reduce_s(nbytes: float, gpus: int, link: Link) -> float:
    """Seconds of a ring all-reduce of ``nbytes``: ``2 (p - 1) alpha + 2 (p - 1) / p * n / B``."""
    return 2 * (gpus - 1) * link.latency + 2 * (gpus - 1) / gpus * nbytes / link.bandwidth


def ring_all_gather_s(nbytes: float, gpus: int, link: Link) -> float:
    """Seconds of a ring all-gather (or reduce-scatter) of ``nbytes`` in all: ``(p - 1) alpha + (p - 1) / p * n
    / B``."""
    return (gpus - 1) * link.latency + (gpus - 1) / gpus * nbytes / link.bandwidth


def _check(strategy: str, params: float, gpus: int) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if params <= 0 or gpus < 1:
        raise ValueError(f"params must be positive and gpus >= 1, got params={params}, gpus={gpus}")


def memory_per_gpu(strategy: str, params: float, gpus: int) -> float:
    """Bytes of weights, gradients and optimizer state per GPU (activations not included)."""
    _check(strategy, params, gpus)
    sharded = {"ddp": (), "zero1": ("optimizer",), "zero2": ("optimizer", "gradients"),
               "zero3": ("optimizer", "gradients", "weights")}[strategy]  # fmt: skip
    return sum(params * b / (gpus if kind in sharded else 1) for kind, b in BYTES_PER_PARAM.items())


def comm_per_step_s(strategy: str, params: float, gpus: int) -> float:
    """Seconds of gradient (and, for ZeRO-3, weight) communication per step, none of it overlapped."""
    _check(strategy, params, gpus)
    if gpus == 1:
        return 0.0
    link, grad_bytes = link_for(gpus), params * BYTES_PER_PARAM["gradients"]
    all_reduce = ring_all_reduce_s(grad_bytes, gpus, link)
    return all_reduce * (1.5 if strategy == "zero3" else 1.0)


def compute_per_step_s(params: float, tokens_per_gpu: float, mfu: float = 0.4,
                       flops: float = H100_BF16_FLOPS) -> float:  # fmt: skip
    """Seconds of one training step's arithmetic on one GPU: ``6 * params * tokens`` at ``mfu`` of ``flops``."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    return 6 * params * tokens_per_gpu / (mfu * flops)


def scaling_efficiency(strategy: str, params: float, gpus: int, tokens_per_gpu: float = 16384,
                       mfu: float = 0.4) -> float:  # fmt: skip
    """The share of a step spent computing when communication does not overlap it (weak scaling: each GPU
    keeps ``tokens_per_gpu``): ``compute / (compute + communication)``."""
    compute = compute_per_step_s(params, tokens_per_gpu, mfu)
    return compute / (compute + comm_per_step_s(strategy, params, gpus))


def strategy_for(params: float, gpus: int, gpu_memory: float = H100_MEMORY, activations: float = 0.25) -> str:
    """The least-sharded strategy whose weights, gradients and optimizer state fit in the share of
    ``gpu_memory`` that ``activations`` leaves; ``"zero3+tp/pp"`` if not even ZeRO-3 fits (the model itself must
    then be split: tensor or pipeline parallelism)."""
    if not 0 <= activations < 1:
        raise ValueError(f"activations must be in [0, 1), got {activations}")
    budget = gpu_memory * (1 - activations)
    fits = [s for s in STRATEGIES if memory_per_gpu(s, params, gpus) <= budget]
    return fits[0] if fits else "zero3+tp/pp"
