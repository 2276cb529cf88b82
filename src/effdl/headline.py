"""The headline table: ``make bench`` runs ``python -m effdl.headline --out results/bench.json``.

Every row is measured in this run on this machine (baselines come from the zoo cache, trained on
first use). Rows with a target say whether it was met; speed targets are ratios from this run.
"""

from __future__ import annotations

import argparse
import json
import operator
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from effdl import bench, zoo
from effdl.config import mode
from effdl.models import smollm2

BATCH_LATENCY, BATCH_THROUGHPUT = 1, 256
TARGETS = {  # (comparison, bound) per (group, metric); issue 2's targets, full mode on a 2-core CPU
    ("cnn-fmnist", "test accuracy"): (">=", 0.910),
    ("resnet-fmnist", "test accuracy"): (">=", 0.925),
    ("gpt-shakespeare", "val loss"): ("<=", 1.70),
    ("cnn-fmnist", "train time"): ("<=", 300.0),
    ("resnet-fmnist", "train time"): ("<=", 300.0),
    ("gpt-shakespeare", "train time"): ("<=", 600.0),
    ("smollm2-135m", "share of bandwidth bound"): (">=", 0.50),
    ("smollm2-135m", "load from cache"): ("<=", 5.0),
}
_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Row:
    group: str
    metric: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None


def _row(group: str, metric: str, value: float, unit: str) -> Row:
    if (group, metric) not in TARGETS:
        return Row(group, metric, value, unit)
    op, bound = TARGETS[(group, metric)]
    return Row(group, metric, value, unit, f"{op} {bound:g}", _OPS[op](value, bound))


def baseline_rows(name: str) -> list[Row]:
    baseline = zoo.pretrained(name)
    model, metrics = baseline.model, baseline.metrics
    quality = (("val loss", metrics["val_loss"], "nats/char") if "val_loss" in metrics
               else ("test accuracy", metrics["test_accuracy"], "fraction"))  # fmt: skip
    one = zoo.example_input(name, BATCH_LATENCY)
    return [
        _row(name, *quality),
        _row(name, "train time", metrics["train_seconds"], "s"),
        _row(name, "parameters", bench.param_count(model), "count"),
        _row(name, "size", bench.size_bytes(model), "bytes"),
        _row(name, "forward FLOPs (batch 1)", bench.flops(model, one), "FLOP"),
        _row(name, "latency (batch 1, median)", bench.latency(model, one).median * 1e3, "ms"),
        _row(name, f"throughput (batch {BATCH_THROUGHPUT})",
             bench.throughput(model, zoo.example_input(name, BATCH_THROUGHPUT)), "examples/s"),
    ]  # fmt: skip


def machine_rows() -> list[Row]:
    ceil = bench.machine()
    rows = [_row("machine", "memory bandwidth", ceil.bandwidth_gbs, "GB/s")]
    rows += [_row("machine", f"matmul {dtype}", g, "GFLOP/s") for dtype, g in ceil.matmul_gflops.items()]
    return rows


def smollm2_rows() -> list[Row]:
    start = time.perf_counter()
    model, tokenizer = smollm2()
    load_seconds = time.perf_counter() - start
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    tokens_per_s = bench.decode_tokens_per_s(model, ids, new_tokens=32)
    weight_bytes = bench.size_bytes(model)
    bound = bench.machine().bandwidth_gbs * 1e9 / weight_bytes
    return [
        _row("smollm2-135m", "weight bytes (fp32)", weight_bytes, "bytes"),
        _row("smollm2-135m", "decode speed (fp32, batch 1)", tokens_per_s, "tokens/s"),
        _row("smollm2-135m", "bandwidth bound (bytes / bandwidth)", bound, "tokens/s"),
        _row("smollm2-135m", "share of bandwidth bound", tokens_per_s / bound, "fraction"),
        _row("smollm2-135m", "time per token beyond weight reads", (1 / tokens_per_s - 1 / bound) * 1e3, "ms"),
        _row("smollm2-135m", "load from cache", load_seconds, "s"),
    ]


def format_table(rows: list[Row]) -> str:
    lines = [f"{'group':<16} {'metric':<38} {'value':>14} {'unit':<10} {'target':<9} met"]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"{r.group:<16} {r.metric:<38} {r.value:>14,.4g} {r.unit:<10} {r.target:<9} {met}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/bench.json"))
    args = parser.parse_args()
    rows = machine_rows()
    for name in zoo.NAMES:
        rows += baseline_rows(name)
    rows += smollm2_rows()
    print(f"Efficient Models headline table ({mode()} mode, {torch.get_num_threads()} threads)")
    print(format_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"mode": mode(), "threads": torch.get_num_threads(), "rows": [asdict(r) for r in rows]}
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
