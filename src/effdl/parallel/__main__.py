"""Run one strategy of ``effdl.parallel`` on the book's Shakespeare GPT (or, for the pipeline and the
collectives, on plain tensors) with every process of a torchrun job::

    torchrun --nproc-per-node 2 -m effdl.parallel ddp --steps 20 --out ddp.json
    torchrun --nproc-per-node 2 -m effdl.parallel ddp zero tp      # several strategies, one job
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 1 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m effdl.parallel ddp        # and --node-rank 1 on the second machine

Strategies: ``ddp`` (DDP against one process on the global batch, with SGD and with AdamW), ``lr-pitfall`` (SGD
with DDP's learning rate multiplied by the world size, a common mistake), ``zero`` (bytes per rank of one process,
DDP, ZeRO-1, ZeRO-2 and ZeRO-3), ``tp`` (tensor parallel against the dense model), ``pipeline`` (the bubble of
GPipe and 1F1B), ``oversubscribed`` (one GPipe setting with ``--crowded-threads`` intra-op threads per worker,
a common mistake), ``collectives`` (all-reduce, all-gather and reduce-scatter against message size). The GPT's
shape is the zoo's (``EFFDL_FAST=1`` in the environment gives the small one). Rank 0 prints a summary and, with
``--out``, writes every rank's records as JSON: ``{"world", "seconds", "ranks": [{strategy: record}, ...]}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from effdl import data, zoo
from effdl.models import GPT, GPTConfig
from effdl.parallel import collectives, data_parallel, pipeline, sharded, tensor
from effdl.parallel.group import process_group, rank, worker_device, world

STRATEGIES = ("ddp", "lr-pitfall", "zero", "tp", "pipeline", "oversubscribed", "collectives")


def book_gpt(seed: int = 0) -> GPT:
    """The zoo's Shakespeare GPT shape, freshly initialized with ``seed`` (the same on every rank)."""
    arch = {k: v for k, v in zoo.recipe("gpt-shakespeare").arch.items() if k != "kind"}
    torch.manual_seed(seed)
    return GPT(GPTConfig(**arch))


def book_batches(model: GPT, batch_size: int, steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` global batches of random windows of the Shakespeare train split (the same on every rank), on this
    worker's device."""
    tokens, device = data.shakespeare().split("train"), worker_device()
    windows = data.LMBatches(tokens, batch_size, model.cfg.context, steps, seed=seed)
    return [(x.to(device), y.to(device)) for x, y in windows]


def run(strategy: str, args: argparse.Namespace) -> object:
    """This rank's record of ``strategy``."""
    if strategy == "pipeline":
        shape = (args.width, args.depth, args.pipeline_batch)
        return {"bubbles": pipeline.bubble_sweep(*shape, args.microbatches, args.schedules, args.pipeline_steps),
                "gradient_difference": {s: pipeline.gradient_difference(*shape, args.microbatches[-1], s)
                                        for s in args.schedules}}  # fmt: skip
    if strategy == "oversubscribed":
        return pipeline.crowded(args.crowded_threads, args.width, args.depth, args.pipeline_batch,
                                args.microbatches[-1], args.pipeline_steps)  # fmt: skip
    if strategy == "collectives":
        sweep = collectives.collective_sweep([2**k for k in args.log2_bytes], args.repeats)
        return {"sweep": sweep, "straggler": collectives.straggler_timings(2**16)}
    model = book_gpt().to(worker_device())  # a GPU of its own under NCCL, the CPU under gloo
    batches = book_batches(model, args.batch_size, args.zero_steps if strategy == "zero" else args.steps)
    if strategy == "lr-pitfall":
        return data_parallel.ddp_versus_single(model, batches, args.sgd_lr * world(), args.accumulate,
                                               single_lr=args.sgd_lr, optimizer="sgd")  # fmt: skip
    if strategy == "ddp":
        rates = {"sgd": args.sgd_lr, "adamw": args.lr}
        return {name: data_parallel.ddp_versus_single(copy.deepcopy(model), batches, rates[name], args.accumulate,
                                                      optimizer=name) for name in args.optimizers}  # fmt: skip
    if strategy == "zero":
        return [sharded.memory_per_rank(model, batches, s, args.lr, blocks="blocks") for s in sharded.STRATEGIES]
    return tensor.tp_versus_dense(model, batches[0][0])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchrun ... -m effdl.parallel", description=__doc__.split("::")[0])
    parser.add_argument("strategies", nargs="+", choices=STRATEGIES, metavar="STRATEGY",
                        help=f"one or more of {', '.join(STRATEGIES)}")  # fmt: skip
    parser.add_argument("--steps", type=int, default=10, help="DDP training steps")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch of Shakespeare windows")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's learning rate")
    parser.add_argument("--sgd-lr", type=float, default=0.03, help="SGD's learning rate (momentum 0.9)")
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"], choices=["sgd", "adamw"],
                        help="ddp: train with each")  # fmt: skip
    parser.add_argument("--accumulate", type=int, default=1, help="DDP micro-batches per rank and step (no_sync)")
    parser.add_argument("--zero-steps", type=int, default=2, help="training steps of each ZeRO stage")
    parser.add_argument("--width", type=int, default=1024, help="pipeline: units per layer")
    parser.add_argument("--depth", type=int, default=4, help="pipeline: layers per stage")
    parser.add_argument("--pipeline-batch", type=int, default=512, help="pipeline: rows per step")
    parser.add_argument("--pipeline-steps", type=int, default=3, help="pipeline: timed steps")
    parser.add_argument("--microbatches", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--schedules", nargs="+", default=["gpipe", "1f1b"], choices=sorted(pipeline.SCHEDULES))
    parser.add_argument("--crowded-threads", type=int, default=2, help="oversubscribed: threads per worker")
    parser.add_argument("--log2-bytes", type=int, nargs="+", default=list(range(10, 25, 2)))
    parser.add_argument("--repeats", type=int, default=5, help="collectives: timed calls per size")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a collective waits for a peer")
    parser.add_argument("--out", type=Path, help="rank 0 writes every rank's record here (JSON)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    start = time.perf_counter()
    with process_group(args.timeout):
        record = {strategy: run(strategy, args) for strategy in args.strategies}
        records: list[object] = [None] * world()
        dist.all_gather_object(records, record)
        if rank() == 0:
            result = {"world": world(), "seconds": time.perf_counter() - start, "ranks": records}
            if args.out:
                args.out.write_text(json.dumps(result))
            print(f"{' '.join(args.strategies)} on {world()} processes: {json.dumps(records[0])[:300]}")

if __name__ == "__main__":
    main()
