"""Chapter 1's experiments (``notebooks/01_measuring.ipynb``): the baselines' quality and cost, this
machine's ceilings, and SmolLM2's decode speed against its bandwidth bound."""

from __future__ import annotations

import time

from effdl import bench as measure_bench
from effdl import claims, zoo
from effdl.models import smollm2

NOTEBOOK = "01_measuring"
BATCH_LATENCY, BATCH_THROUGHPUT = 1, 256
TARGETS = {  # the foundation's goals, full mode on a 2-core CPU: (metric, op, bound)
    "cnn-fmnist": ("test accuracy", ">=", 0.910, 300.0),
    "resnet-fmnist": ("test accuracy", ">=", 0.925, 300.0),
    "gpt-shakespeare": ("val loss", "<=", 1.70, 600.0),
}


def baseline_rows(name: str) -> None:
    baseline = zoo.pretrained(name)
    model, metrics = baseline.model, baseline.metrics
    metric, op, bound, seconds = TARGETS[name]
    value = metrics["val_loss"] if metric == "val loss" else metrics["test_accuracy"]
    claims.target(f"{name} {metric}", value, op, bound)
    claims.target(f"{name} train time", metrics["train_seconds"], "<=", seconds, unit="s")
    one = zoo.example_input(name, BATCH_LATENCY)
    claims.measure(f"{name} parameters", measure_bench.param_count(model))
    claims.measure(f"{name} size", measure_bench.size_bytes(model), "bytes")
    claims.measure(f"{name} forward FLOPs (batch 1)", measure_bench.flops(model, one), "FLOP")
    claims.measure(f"{name} latency (batch 1, median)", measure_bench.latency(model, one).median * 1e3, "ms")
    batch = zoo.example_input(name, BATCH_THROUGHPUT)
    claims.measure(f"{name} throughput (batch 256)", measure_bench.throughput(model, batch), "examples/s")


def machine_rows() -> None:
    ceil = measure_bench.machine()
    claims.measure("memory bandwidth", ceil.bandwidth_gbs, "GB/s")
    for dtype, gflops in ceil.matmul_gflops.items():
        claims.measure(f"matmul {dtype}", gflops, "GFLOP/s")


def smollm2_rows() -> None:
    start = time.perf_counter()
    model, tokenizer = smollm2()
    load_seconds = time.perf_counter() - start
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    tokens_per_s = measure_bench.decode_tokens_per_s(model, ids, new_tokens=32)
    weight_bytes = measure_bench.size_bytes(model)
    bound = measure_bench.machine().bandwidth_gbs * 1e9 / weight_bytes
    claims.measure("smollm2 weight bytes (fp32)", weight_bytes, "bytes")
    claims.measure("smollm2 decode speed (fp32, batch 1)", tokens_per_s, "tokens/s")
    claims.measure("smollm2 bandwidth bound (bytes / bandwidth)", bound, "tokens/s")
    claims.target("smollm2 share of bandwidth bound", tokens_per_s / bound, ">=", 0.50)
    claims.measure("smollm2 time per token beyond weight reads", (1 / tokens_per_s - 1 / bound) * 1e3, "ms")
    claims.target("smollm2 load from cache", load_seconds, "<=", 5.0, unit="s")


def bench() -> None:
    """The foundation rows: the machine, the three baselines, SmolLM2."""
    machine_rows()
    for name in zoo.NAMES:
        baseline_rows(name)
    smollm2_rows()
