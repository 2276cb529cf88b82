"""The headline table: ``make bench`` runs ``python -m effdl.headline --out results/bench.json``.

Every row is measured in this run on this machine (baselines come from the zoo cache, trained on
first use). Rows with a target say whether it was met; speed targets are ratios from this run.
"""

from __future__ import annotations

import argparse
import copy
import json
import operator
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from effdl import bench, data, prune, train, zoo
from effdl.config import mode, pick
from effdl.models import smollm2
from effdl.quant import QuantConfig, core, llm, quantize_model
from effdl.quant import model as qmodel
from effdl.quant.layers import fold_batchnorms

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
    # issue 3 (quantization)
    ("quant-resnet", "fake-quant vs torch ops, max difference"): ("<=", 0.0),
    ("quant-resnet", "W8A8 PTQ per-channel drop"): ("<=", 0.3),
    ("quant-resnet", "per-tensor minus per-channel accuracy"): ("<", 0.0),
    ("quant-resnet", "W4A8 QAT (2 epochs) gap to fp32"): ("<=", 0.5),
    ("quant-resnet", "int8 engine speed-up (batch 256)"): (">=", 2.0),
    ("quant-resnet", "int8 file / fp32 file"): ("<=", 0.27),
    ("quant-gpt", "int8 weight-only perplexity change"): ("<=", 0.5),
    ("quant-gpt", "int4-g128 GPTQ perplexity change"): ("<=", 3.0),
    ("quant-gpt", "GPTQ minus RTN perplexity, int4-g128"): ("<", 0.0),
    ("quant-gpt", "GPTQ minus RTN perplexity, int3-g128"): ("<", 0.0),
    ("quant-smollm2", "int8 weight-only perplexity change"): ("<=", 0.5),
    ("quant-smollm2", "int4-g128 GPTQ perplexity change"): ("<=", 3.0),
    ("quant-smollm2", "GPTQ minus RTN perplexity, int4-g128"): ("<", 0.0),
    ("quant-smollm2", "GPTQ minus RTN perplexity, int3-g128"): ("<", 0.0),
    ("quant-smollm2", "int8 weight-only decode speed-up"): (">=", 1.5),
    # issue 4 (pruning)
    ("prune-resnet", "iterative global sparsity"): (">=", 0.90),
    ("prune-resnet", "iterative 90% accuracy drop"): ("<=", 1.0),
    ("prune-cnn", "iterative global sparsity"): (">=", 0.90),
    ("prune-cnn", "iterative 90% accuracy drop"): ("<=", 1.0),
    ("prune-resnet", "one-shot 90%: best of Taylor/OBD - magnitude"): (">=", 0.0),
    ("prune-cnn", "ticket (20% weights) gap to dense"): ("<=", 0.5),
    ("prune-cnn", "ticket minus random reinit"): (">", 0.0),
    ("prune-resnet", "structured speed-up (batch 256)"): (">=", 1.8),
    ("prune-resnet", "structured accuracy drop"): ("<=", 1.5),
    ("prune-resnet", "ours minus Torch-Pruning accuracy"): (">=", -0.5),
    ("prune-resnet", "Torch-Pruning MACs / ours"): ("<=", 1.0),
    ("prune-gpt", "Wanda - magnitude perplexity, 50%"): ("<", 0.0),
    ("prune-gpt", "Wanda - magnitude perplexity, 2:4"): ("<", 0.0),
    ("prune-smollm2", "Wanda - magnitude perplexity, 50%"): ("<", 0.0),
    ("prune-smollm2", "Wanda - magnitude perplexity, 2:4"): ("<", 0.0),
}
_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}


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


def _accuracy(model: torch.nn.Module, loader) -> float:
    return 100 * train.evaluate(model, loader, device=torch.device("cpu"))["accuracy"]


def _difference_from_torch(weight: torch.Tensor) -> float:
    """Largest gap between our per-channel int8 fake-quantization and ``torch.fake_quantize_per_channel_affine``."""
    scale = core.qparams(*core.minmax(weight, 0))[0].flatten()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32)
    theirs = torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -128, 127)
    return (core.fake_quantize(weight, 8, axis=0) - theirs).abs().max().item()


def quant_cnn_rows() -> list[Row]:
    """Chapter 3's targets on the ResNet: PTQ, QAT, the int8 engine's speed and file size."""
    group, resnet = "quant-resnet", zoo.pretrained("resnet-fmnist").model.eval().cpu()
    weights = [m.weight.detach() for m in fold_batchnorms(resnet).modules() if isinstance(m, torch.nn.Conv2d)]
    difference = max(_difference_from_torch(w) for w in weights)
    test = data.loader(data.fashion_mnist("test"), 1000)
    calibration = qmodel.calibration_batches()
    fp32 = _accuracy(resnet, test)
    per_channel = _accuracy(quantize_model(resnet, QuantConfig(), calibration), test)
    per_tensor = _accuracy(quantize_model(resnet, QuantConfig(per_channel=False), calibration), test)
    rows = [_row(group, "fake-quant vs torch ops, max difference", difference, "abs"),
            _row(group, "fp32 test accuracy", fp32, "%"),
            _row(group, "W8A8 PTQ per-channel drop", fp32 - per_channel, "pt"),
            _row(group, "per-tensor minus per-channel accuracy", per_tensor - per_channel, "pt")]  # fmt: skip
    for label, config in [("W4A8", QuantConfig(weight_bits=4, learn_scales=True)),
                          ("ternary", QuantConfig(weight_format="ternary", act_bits=None)),
                          ("binary", QuantConfig(weight_format="binary", act_bits=None))]:  # fmt: skip
        quantized = quantize_model(resnet, config, calibration)
        train.finetune(quantized, pick(fast=1, full=2), lr=0.01, train_limit=pick(fast=2000, full=20000))
        accuracy = _accuracy(quantized, test)
        rows.append(_row(group, "W4A8 QAT (2 epochs) gap to fp32", fp32 - accuracy, "pt") if label == "W4A8"
                    else _row(group, f"{label} QAT (2 epochs) accuracy", accuracy, "%"))  # fmt: skip
    engine = qmodel.int8_engine(resnet, calibration, calibration[0])
    batch = zoo.example_input("resnet-fmnist", BATCH_THROUGHPUT)
    with torch.no_grad():
        speedup = bench.time_fn(lambda: resnet(batch)).median / bench.time_fn(lambda: engine(batch)).median
    with tempfile.TemporaryDirectory() as folder:
        int8_file = qmodel.save_quantized(quantize_model(resnet, QuantConfig(), calibration), Path(folder) / "q")
        save_file(resnet.state_dict(), Path(folder) / "f")
        fp32_file = bench.size_bytes(Path(folder) / "f")
    return rows + [
        _row(group, "int8 engine accuracy minus simulated", _accuracy(engine, test) - per_channel, "pt"),
        _row(group, "int8 engine speed-up (batch 256)", speedup, "x"),
        _row(group, "int8 file / fp32 file", int8_file / fp32_file, "ratio"),
    ]


def quant_llm_rows(group: str, name: str) -> list[Row]:
    """Chapter 4's targets on one model: int8 and int4 perplexity, GPTQ against RTN."""
    model, test, calibration = llm.shakespeare_suite(name)
    model = model.cpu()
    base = llm.perplexity(model, test)

    def change(method: str, bits: int, group_size: int | None) -> float:
        quantized = llm.quantize_weights_(copy.deepcopy(model), method, bits, group_size, calibration=calibration)
        return 100 * (llm.perplexity(quantized, test) / base - 1)

    gptq4, gptq3 = change("gptq", 4, 128), change("gptq", 3, 128)
    return [_row(group, "fp32 perplexity", base, "ppl"),
            _row(group, "int8 weight-only perplexity change", change("rtn", 8, None), "%"),
            _row(group, "int4-g128 GPTQ perplexity change", gptq4, "%"),
            _row(group, "GPTQ minus RTN perplexity, int4-g128", gptq4 - change("rtn", 4, 128), "pt of %"),
            _row(group, "GPTQ minus RTN perplexity, int3-g128", gptq3 - change("rtn", 3, 128), "pt of %")]  # fmt: skip


def quant_decode_rows() -> list[Row]:
    """Chapter 4's decoding speed-ups of SmolLM2 on real low-bit CPU kernels, against fp32 in the same run."""
    model, tokenizer = smollm2()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    fp32 = bench.decode_tokens_per_s(model, ids, new_tokens=32)
    variants = {"int8 weight-only": llm.weight_only(model, 8), "int8 dynamic W8A8": llm.int8_dynamic(model),
                "int4-g64 weight-only": llm.weight_only(model, 4, 64)}  # fmt: skip
    return [_row("quant-smollm2", f"{label} decode speed-up", bench.decode_tokens_per_s(m, ids, 32) / fp32, "x")
            for label, m in variants.items()]  # fmt: skip


def _iterative_rows(group: str, name: str) -> list[Row]:
    """Section 5.4 on one baseline: 90 % global sparsity, iterative against one-shot at the same budget."""
    model = zoo.pretrained(name).model.eval().cpu()
    dense = 100 * prune.experiments.accuracy(model)
    pruned = prune.experiments.iterative_vs_oneshot(model, final=0.9)
    accuracy = {label: 100 * prune.experiments.accuracy(m) for label, m in pruned.items()}
    return [
        _row(group, "dense test accuracy", dense, "%"),
        _row(group, "iterative global sparsity", prune.masks.sparsity(pruned["iterative"]), "fraction"),
        _row(group, "iterative 90% accuracy drop", dense - accuracy["iterative"], "pt"),
        _row(group, "one-shot+FT 90% accuracy drop", dense - accuracy["one-shot"], "pt"),
    ]


def prune_unstructured_rows() -> list[Row]:
    """Chapter 5's targets: iterative pruning to 90 %, Taylor/OBD against magnitude, the lottery ticket."""
    group, resnet = "prune-resnet", zoo.pretrained("resnet-fmnist").model.eval().cpu()
    batches = prune.experiments.score_batches()
    oneshot = {method: 100 * prune.experiments.accuracy(prune.experiments.prune_oneshot(
        resnet, prune.experiments.scores_for(resnet, method, batches), 0.9, bn_batches=batches))
        for method in ("magnitude", "taylor", "obd")}  # fmt: skip
    ticket = prune.experiments.lottery_ticket("cnn-fmnist", 0.8, epochs=pick(fast=1, full=4))
    return [
        *_iterative_rows(group, "resnet-fmnist"),
        *_iterative_rows("prune-cnn", "cnn-fmnist"),
        *[_row(group, f"one-shot 90% {method} accuracy", acc, "%") for method, acc in oneshot.items()],
        _row(group, "one-shot 90%: best of Taylor/OBD - magnitude",
             max(oneshot["taylor"], oneshot["obd"]) - oneshot["magnitude"], "pt"),
        _row("prune-cnn", "ticket (20% weights) gap to dense", 100 * (ticket["dense"] - ticket["ticket"]), "pt"),
        _row("prune-cnn", "ticket minus random reinit", 100 * (ticket["ticket"] - ticket["random reinit"]), "pt"),
    ]  # fmt: skip


def prune_structured_rows() -> list[Row]:
    """Chapter 6's targets: channel pruning's speed and accuracy, against Torch-Pruning at equal MACs."""
    group, resnet = "prune-resnet", zoo.pretrained("resnet-fmnist").model.eval().cpu()
    ours, theirs = prune.experiments.channel_pruned(resnet), prune.experiments.torch_pruning_pruned(resnet)
    one, batch = zoo.example_input("resnet-fmnist"), zoo.example_input("resnet-fmnist", BATCH_THROUGHPUT)
    dense, ours_acc = prune.experiments.accuracy(resnet), prune.experiments.accuracy(ours)

    def speedup(x: torch.Tensor) -> float:
        times = bench.compare_latency({"dense": resnet, "pruned": ours}, x)
        return times["dense"] / times["pruned"]

    return [
        _row(group, "structured MACs / dense", bench.flops(ours, one) / bench.flops(resnet, one), "ratio"),
        _row(group, "structured speed-up (batch 256)", speedup(batch), "x"),
        _row(group, "structured speed-up (batch 1)", speedup(one), "x"),
        _row(group, "structured accuracy drop", 100 * (dense - ours_acc), "pt"),
        _row(group, "ours minus Torch-Pruning accuracy", 100 * (ours_acc - prune.experiments.accuracy(theirs)), "pt"),
        _row(group, "Torch-Pruning MACs / ours", bench.flops(theirs, one) / bench.flops(ours, one), "ratio"),
    ]  # fmt: skip


def prune_llm_rows(group: str, name: str) -> list[Row]:
    """Chapter 6's LLM targets: Wanda against magnitude at 50 % and 2:4, held-out perplexity."""
    result = prune.experiments.llm_pruning(name)
    rows = [_row(group, f"{label} perplexity", ppl, "ppl") for label, ppl in result.items()]
    for pattern in ("50%", "2:4"):
        gap = result[f"wanda {pattern}"] - result[f"magnitude {pattern}"]
        rows.append(_row(group, f"Wanda - magnitude perplexity, {pattern}", gap, "ppl"))
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'group':<16} {'metric':<38} {'value':>14} {'unit':<10} {'target':<9} met"]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"{r.group:<16} {r.metric:<38} {r.value:>14,.4g} {r.unit:<10} {r.target:<9} {met}")
    return "\n".join(lines)


SECTIONS = {  # one per issue: `python -m effdl.headline --only prune` reruns one part of the table
    "foundation": lambda: machine_rows() + [r for name in zoo.NAMES for r in baseline_rows(name)] + smollm2_rows(),
    "quant": lambda: quant_cnn_rows() + quant_llm_rows("quant-gpt", "gpt-shakespeare")
    + quant_llm_rows("quant-smollm2", "smollm2") + quant_decode_rows(),
    "prune": lambda: prune_unstructured_rows() + prune_structured_rows()
    + prune_llm_rows("prune-gpt", "gpt-shakespeare") + prune_llm_rows("prune-smollm2", "smollm2"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/bench.json"))
    parser.add_argument("--only", choices=tuple(SECTIONS), nargs="+", help="run only these sections")
    args = parser.parse_args()
    rows = []
    for section in args.only or SECTIONS:
        rows += SECTIONS[section]()
    print(f"Efficient Models headline table ({mode()} mode, {torch.get_num_threads()} threads)")
    print(format_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"mode": mode(), "threads": torch.get_num_threads(), "rows": [asdict(r) for r in rows]}
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
