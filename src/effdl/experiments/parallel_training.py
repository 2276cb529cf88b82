"""The experiments of ``chap-parallel`` (``notebooks/15_parallel_training.ipynb``): every strategy of
``effdl.parallel`` run for real by ``torchrun --nproc-per-node 2 -m effdl.parallel ...`` as a subprocess of this
process (:func:`effdl.parallel.group.torchrun`: a free port of 127.0.0.1, sockets on the loopback interface, a
timeout, torchrun and every worker it started stopped on the way out), its JSON record read back, and the claims
checked afterwards.

Each worker runs one intra-op thread (``OMP_NUM_THREADS=1``, torchrun's own default): two workers on a 2-core
CPU. The sizes come from :func:`effdl.pick` here and reach the workers as command-line arguments, except the GPT's
shape, which the workers take from the zoo's recipe under the ``EFFDL_FAST`` they inherit.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import tempfile
from pathlib import Path

from effdl import claims
from effdl.config import pick
from effdl.parallel import collectives, cost, data_parallel, group, pipeline

NOTEBOOK = "15_parallel_training"

WORKERS = 2
CORES = os.cpu_count() or 2  # the pitfall's threads per worker: every core, in each
TIMEOUT_S = pick(fast=240, full=600)  # per torchrun job: far above its normal time, so only a hang hits it
DDP_STEPS = pick(fast=8, full=40)
DDP_BATCH = 16  # global batch of 16 Shakespeare windows: 8 per rank
NODE_STEPS = pick(fast=8, full=10)  # DDP steps of the two-launcher demonstration
ACCUMULATE = 2  # micro-batches per rank per step under no_sync
LR = 1e-3  # AdamW's
SGD_LR = 0.03  # SGD's, momentum 0.9 (0.1 is unstable at the full GPT's size: chaos amplifies rounding)
ZERO_STEPS = 2
MICROBATCHES = (2, 4, 8)
SCHEDULES = ("gpipe", "1f1b")
PIPE_WIDTH = 1024
PIPE_DEPTH = 4
PIPE_BATCH = pick(fast=512, full=2048)  # rows per step, split into micro-batches
PIPE_STEPS = pick(fast=2, full=4)
LOG2_BYTES = pick(fast=(12, 16, 20, 22, 24), full=(10, 12, 14, 16, 18, 20, 22, 24, 26))
REPEATS = pick(fast=3, full=7)
DDP_TARGET = 1e-5  # the targets
ZERO3_TARGET = 0.55
TP_TARGET = 1e-5
BUBBLE_TARGET = 0.05
MODEL_SIZES = (125e6, 1.3e9, 7e9, 70e9, 405e9, 1e12)  # parameters of the cost model's models
GPU_COUNTS = (8, 64, 256, 1024)


def launch(*args: str, nproc: int = WORKERS, threads: int = 1) -> list[dict]:
    """``torchrun --nproc-per-node NPROC -m effdl.parallel ARGS --out FILE``; the records rank 0 wrote, one
    ``{strategy: record}`` per rank."""
    with tempfile.TemporaryDirectory(prefix="effdl-parallel-") as tmp:
        out = Path(tmp) / "record.json"
        group.torchrun([*args, "--out", str(out)], nproc, TIMEOUT_S, threads)
        return json.loads(out.read_text())["ranks"]


def ddp_args(steps: int = DDP_STEPS) -> list[str]:
    return ["--steps", str(steps), "--batch-size", str(DDP_BATCH), "--lr", str(LR), "--sgd-lr", str(SGD_LR),
            "--accumulate", str(ACCUMULATE), "--zero-steps", str(ZERO_STEPS)]  # fmt: skip


def pipeline_args(microbatches: tuple[int, ...], schedules: tuple[str, ...]) -> list[str]:
    return ["--width", str(PIPE_WIDTH), "--depth", str(PIPE_DEPTH), "--pipeline-batch", str(PIPE_BATCH),
            "--pipeline-steps", str(PIPE_STEPS), "--microbatches", *map(str, microbatches),
            "--schedules", *schedules]  # fmt: skip


@functools.cache
def records() -> list[dict]:
    """One torchrun job of two workers that runs every strategy in turn: each rank's ``{strategy: record}``
    (starting the workers costs seconds that a job per strategy would pay again each time)."""
    return launch("ddp", "lr-pitfall", "zero", "tp", "pipeline", "oversubscribed", "collectives", *ddp_args(),
                  *pipeline_args(MICROBATCHES, SCHEDULES), "--crowded-threads", str(CORES),
                  "--log2-bytes", *map(str, LOG2_BYTES),
                  "--repeats", str(REPEATS))  # fmt: skip


# --- data parallel (sec-parallel-ddp) ---------------------------------------------------------------------------


def ddp(optimizer: str = "sgd") -> dict:
    """DDP on 2 processes (2 micro-batches per rank under ``no_sync``) against one process on the global batch,
    both with ``optimizer`` (``"sgd"`` or ``"adamw"``): rank 0's record."""
    return records()[0]["ddp"][optimizer]


def check_ddp(record: dict, adamw: dict) -> None:
    """SGD (an update linear in the gradient) shows DDP's rounding as it is; AdamW enlarges it (see
    ``sec-parallel-ddp``), so its bound is looser, though one a wrong gradient average misses by far."""
    claims.claim("DDP vs one process, SGD: ||dtheta|| / ||theta||", record["relative_difference"], "<=",
                 full=DDP_TARGET, fast=DDP_TARGET)  # fmt: skip
    claims.claim("DDP vs one process, AdamW: ||dtheta|| / ||theta||", adamw["relative_difference"], "<=",
                 full=1e-4, fast=1e-4)  # fmt: skip
    claims.claim("DDP all-reduces per step / buckets (no_sync: one per bucket)", record["allreduces_per_step"], "==",
                 full=1, fast=1)  # fmt: skip
    claims.target("DDP parameters equal one process's, SGD (relative difference)", record["relative_difference"],
                  "<=", DDP_TARGET, section="sec-parallel-ddp")  # fmt: skip
    claims.target("DDP parameters equal one process's, AdamW (relative difference)", adamw["relative_difference"],
                  "<=", DDP_TARGET, section="sec-parallel-ddp")  # fmt: skip


# --- sharded data parallel (sec-parallel-zero) ------------------------------------------------------------------


def zero() -> dict:
    """Bytes per rank of one process, DDP, ZeRO-1, ZeRO-2 and ZeRO-3 on the book's GPT: ``{strategy: {kind:
    bytes}}`` of rank 0 (``parameters``, ``gradients``, ``optimizer``, ``parameters_in_backward``)."""
    return {row["strategy"]: row for row in records()[0]["zero"]}


def state_bytes(row: dict) -> int:
    """Parameter + gradient + optimizer-state bytes of one rank."""
    return row["parameters"] + row["gradients"] + row["optimizer"]


def zero_ratios(table: dict) -> dict[str, float]:
    """Each strategy's state bytes per rank over one process's."""
    return {s: state_bytes(row) / state_bytes(table["single"]) for s, row in table.items()}


def check_zero(table: dict) -> None:
    ratios = zero_ratios(table)
    claims.claim("ZeRO-3 state bytes per rank / one process's", ratios["zero3"], "<=",
                 full=ZERO3_TARGET, fast=ZERO3_TARGET)  # fmt: skip
    claims.claim("ZeRO-1 state bytes per rank / one process's", ratios["zero1"], "<", full=0.8, fast=0.8)
    claims.target("ZeRO-3 state bytes per rank / one process's", ratios["zero3"], "<=", ZERO3_TARGET,
                  section="sec-parallel-zero")  # fmt: skip


# --- tensor parallel (sec-parallel-tp) --------------------------------------------------------------------------


def tp() -> dict:
    """The tensor-parallel GPT against the dense one, rank 0's record."""
    return records()[0]["tp"]


def allreduces_per_block(record: dict, phase: str = "forward") -> float:
    return sum(record[phase].values()) / record["blocks"]


def check_tp(record: dict) -> None:
    claims.claim("TP vs dense GPT: max |logit difference|", record["max_difference"], "<=",
                 full=TP_TARGET, fast=TP_TARGET)  # fmt: skip
    claims.claim("TP all-reduces per block, forward (Megatron: 2)", allreduces_per_block(record), "==",
                 full=2, fast=2)  # fmt: skip
    claims.claim("TP checkpoint gathered = dense checkpoint", float(record["checkpoint_equal"]), "==", full=1, fast=1)
    claims.target("TP outputs equal the dense model's", record["max_difference"], "<=", TP_TARGET,
                  section="sec-parallel-tp")  # fmt: skip


# --- pipeline parallel (sec-parallel-pipeline) ------------------------------------------------------------------


def bubbles() -> list[dict]:
    """The bubble of every schedule and number of micro-batches (the mean of the two stages')."""
    ranks = [r["pipeline"]["bubbles"] for r in records()]
    return [row | {"bubble": statistics.mean(r["bubble"] for r in rows)}
            for rows in zip(*ranks, strict=True) for row in [rows[0]]]  # fmt: skip


def pipeline_gradient_difference() -> float:
    """The largest ``||dg|| / ||g||`` of a stage's gradients after a pipelined step against one process's, over
    both stages and schedules."""
    return max(d for r in records() for d in r["pipeline"]["gradient_difference"].values())


def bubble_gaps(rows: list[dict]) -> dict[tuple[str, int], float]:
    """Measured minus ideal bubble, per (schedule, micro-batches)."""
    return {(r["schedule"], r["microbatches"]): r["bubble"] - r["ideal"] for r in rows}


def check_bubbles(rows: list[dict]) -> None:
    """Stage gradients equal one process's; with 2 micro-batches (few hand-offs) the bubble is the formula's; no
    bubble is far below the formula, which counts arithmetic only (a lower bound for equal stages)."""
    gaps = bubble_gaps(rows)
    few = max(abs(g) for (_, m), g in gaps.items() if m == min(MICROBATCHES))
    worst = max(abs(g) for g in gaps.values())
    claims.claim("pipeline vs one process: stage gradients ||dg|| / ||g||", pipeline_gradient_difference(), "<=",
                 full=1e-5, fast=1e-5)  # fmt: skip
    claims.claim("|measured - ideal bubble|, 2 micro-batches", few, "<=", full=0.1, fast=0.15)
    claims.claim("lowest measured - ideal bubble", min(gaps.values()), ">=", full=-0.1, fast=-0.1)
    claims.target("largest |measured - ideal bubble|, m in {2, 4, 8}", worst, "<=", BUBBLE_TARGET,
                  section="sec-parallel-pipeline")  # fmt: skip


# --- collectives and the cost model (sec-parallel-collectives, sec-parallel-cost) -----------------------------


def collective_timings() -> dict:
    """The collectives' seconds against message size, and the straggler timings, rank 0's record."""
    return records()[0]["collectives"]


def alpha_beta(record: dict) -> dict[str, tuple[float, float]]:
    """Fitted ``(alpha s, beta s/byte)`` per collective."""
    fits = {}
    for name in collectives.COLLECTIVES:
        rows = [r for r in record["sweep"] if r["collective"] == name]
        fits[name] = collectives.fit_alpha_beta([r["bytes"] for r in rows], [r["seconds"] for r in rows])
    return fits


def check_collectives(record: dict) -> None:
    alpha, beta = alpha_beta(record)["all_reduce"]
    claims.claim("gloo all-reduce bandwidth 1/beta", 1 / beta / 1e9, ">", full=0.05, fast=0.02, unit="GB/s")
    claims.measure("gloo all-reduce latency alpha", alpha * 1e6, "us")


def cost_table() -> list[dict]:
    """The cost model for every model size and GPU count: the strategy it needs, memory per GPU and the scaling
    efficiency of DDP and ZeRO-3."""
    return [{"params": p, "gpus": g, "needs": cost.strategy_for(p, g),
             "ddp_gb": cost.memory_per_gpu("ddp", p, g) / 1e9, "zero3_gb": cost.memory_per_gpu("zero3", p, g) / 1e9,
             "ddp_efficiency": cost.scaling_efficiency("ddp", p, g),
             "zero3_efficiency": cost.scaling_efficiency("zero3", p, g)}
            for p in MODEL_SIZES for g in GPU_COUNTS]  # fmt: skip


# --- several machines (sec-parallel-nodes) ----------------------------------------------------------------------


@functools.cache
def two_nodes() -> dict:
    """The DDP job as two launchers ("nodes") of one process each, meeting at a rendezvous on 127.0.0.1."""
    with tempfile.TemporaryDirectory(prefix="effdl-parallel-") as tmp:
        out = Path(tmp) / "record.json"
        group.torchrun_nodes(["ddp", *ddp_args(NODE_STEPS), "--optimizers", "sgd", "--out", str(out)], nnodes=2,
                             nproc=1, timeout_s=TIMEOUT_S)  # fmt: skip
        return json.loads(out.read_text())["ranks"][0]["ddp"]["sgd"]


# --- pitfalls (sec-parallel-pitfalls) ---------------------------------------------------------------------------


def repeated_epoch_share(set_epoch: bool, size: int = 1000, epochs: int = 3) -> float:
    """The share of later epochs whose order on rank 0 repeats the first epoch's exactly."""
    orders = data_parallel.epoch_orders(size, WORKERS, 0, epochs, set_epoch)
    return sum(order == orders[0] for order in orders[1:]) / (epochs - 1)


def scaled_lr() -> dict:
    """DDP with its learning rate multiplied by the world size, against one process at the base rate."""
    return records()[0]["lr-pitfall"]


def oversubscribed_slowdown() -> float:
    """How many times longer a GPipe step takes when each of the two workers runs as many intra-op threads as
    the CPU has cores (the last micro-batch count of the sweep) than with one thread each."""
    crowded = records()[0]["oversubscribed"]
    one = next(r for r in records()[0]["pipeline"]["bubbles"] if r["schedule"] == "gpipe"
               and r["microbatches"] == crowded["microbatches"])  # fmt: skip
    return crowded["wall_s"] / one["wall_s"]


def lateness_counted() -> float:
    """How much of the last rank's lateness rank 0's clock adds to an all-reduce timed without a barrier:
    ``(without - with) / late_s``."""
    late = collective_timings()["straggler"]
    return (late["without_barrier"] - late["with_barrier"]) / late["late_s"]


def lr_drift(lr_record: dict, ddp_record: dict) -> float:
    """How many times further than correct DDP the run at ``lr x world`` ends from one process."""
    return lr_record["relative_difference"] / max(ddp_record["relative_difference"], 1e-12)


def check_pitfalls(lr_record: dict, ddp_record: dict) -> None:
    claims.claim("epochs repeated without set_epoch (share)", repeated_epoch_share(False), "==", full=1, fast=1)
    claims.claim("epochs repeated with set_epoch (share)", repeated_epoch_share(True), "==", full=0, fast=0)
    claims.claim("DDP (SGD) at lr x world: ||dtheta|| / ||theta|| from one process", lr_record["relative_difference"],
                 ">", full=100 * DDP_TARGET, fast=100 * DDP_TARGET)  # fmt: skip
    claims.measure("DDP (SGD) at lr x world: drift over correct DDP's", lr_drift(lr_record, ddp_record), "x")
    claims.claim("unbarriered all-reduce clock: share of the straggler's lateness counted", lateness_counted(), ">=",
                 full=0.5, fast=0.5)  # fmt: skip
    claims.claim("oversubscribed / one thread per worker, step time", oversubscribed_slowdown(), ">",
                 full=1.0, fast=1.0)  # fmt: skip


def check_two_nodes(record: dict, one_node: dict) -> float:
    """Two launchers compute what one launcher of two processes does: the largest loss difference over the steps
    both ran."""
    gap = max(abs(a - b) for a, b in zip(record["losses"], one_node["losses"], strict=False))
    claims.claim("two 'nodes' vs one: max |loss difference|", gap, "<=", full=1e-6, fast=1e-6)
    claims.claim("two 'nodes': DDP vs one process ||dtheta|| / ||theta||", record["relative_difference"], "<=",
                 full=DDP_TARGET, fast=DDP_TARGET)  # fmt: skip
    return gap


# --- exercises --------------------------------------------------------------------------------------------------


def self_check_bubble(answer: float, stages: int = 4, microbatches: int = 12) -> bool:
    """Exercise 1: is ``answer`` the ideal bubble of a GPipe step with ``stages`` stages and ``microbatches``?"""
    right = pipeline.ideal_bubble(stages, microbatches)
    problems = [] if abs(answer - right) <= 1e-6 else [f"{answer:.4f} is not (p - 1) / (m + p - 1)"]
    return claims.self_check(problems, f"bubble = {right:.4f}")


def self_check_zero_bytes(answer: float, strategy: str = "zero2", params: float = 7e9, gpus: int = 64) -> bool:
    """Exercise 2: is ``answer`` the bytes per GPU of weights, gradients and AdamW state under ``strategy``?"""
    right = cost.memory_per_gpu(strategy, params, gpus)
    problems = [] if abs(answer - right) <= 1e-6 * right else [f"{answer:,.0f} is not {right:,.0f}"]
    return claims.self_check(problems, f"{right / 1e9:.2f} GB per GPU")


def self_check_strategy(answer: str, params: float = 13e9, gpus: int = 16) -> bool:
    """Exercise 3: is ``answer`` the least-sharded strategy that fits that model on H100s (80 GB, a quarter kept
    for activations)?"""
    right = cost.strategy_for(params, gpus)
    problems = [] if answer == right else [f"{answer!r} is not the least-sharded strategy that fits"]
    return claims.self_check(problems, right)


def bench() -> None:
    """The chapter's rows: DDP = one process (on one and on two launchers), ZeRO bytes, TP equality and traffic,
    the pipeline bubble, gloo's collectives, the pitfalls."""
    check_ddp(ddp(), ddp("adamw"))
    check_zero(zero())
    check_tp(tp())
    check_bubbles(bubbles())
    check_collectives(collective_timings())
    check_pitfalls(scaled_lr(), ddp())
    check_two_nodes(two_nodes(), ddp())
