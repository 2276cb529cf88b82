"""Chapter 4's experiments (``notebooks/04_quant_llm.ipynb``): weight-only RTN and GPTQ on the book's GPT
and SmolLM2, and SmolLM2's decode speed on real low-bit CPU kernels."""

from __future__ import annotations

import copy

from effdl import bench as measure_bench
from effdl import claims, lm
from effdl.experiments._shared import lm_suite
from effdl.models import smollm2
from effdl.quant import llm

NOTEBOOK = "04_quant_llm"


def perplexity_change(model, test, calibration, method: str, bits: int, group_size: int | None) -> float:
    """Percent change of held-out perplexity after quantizing ``model``'s block linears (``sec-quant-llm-gptq``)."""
    quantized = llm.quantize_weights_(copy.deepcopy(model), method, bits, group_size, calibration=calibration)
    return 100 * (lm.perplexity(quantized, test) / lm.perplexity(model, test) - 1)


def quality_rows(name: str) -> None:
    model, test, calibration = lm_suite(name)
    model = model.cpu()
    claims.measure(f"{name} fp32 perplexity", lm.perplexity(model, test))

    def change(method: str, bits: int, group_size: int | None) -> float:
        return perplexity_change(model, test, calibration, method, bits, group_size)

    gptq4, gptq3 = change("gptq", 4, 128), change("gptq", 3, 128)
    claims.target(f"{name} int8 weight-only perplexity change", change("rtn", 8, None), "<=", 0.5, unit="%")
    claims.target(f"{name} int4-g128 GPTQ perplexity change", gptq4, "<=", 3.0, unit="%",
                  section="sec-quant-llm-gptq")  # fmt: skip
    claims.target(f"{name} GPTQ minus RTN perplexity, int4-g128", gptq4 - change("rtn", 4, 128), "<", 0.0,
                  unit="pt of %")  # fmt: skip
    claims.target(f"{name} GPTQ minus RTN perplexity, int3-g128", gptq3 - change("rtn", 3, 128), "<", 0.0,
                  unit="pt of %")  # fmt: skip


def decode_rows() -> None:
    """SmolLM2's decode speed-ups on real low-bit CPU kernels, against fp32 in the same run."""
    model, tokenizer = smollm2()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    fp32 = measure_bench.decode_tokens_per_s(model, ids, new_tokens=32)
    variants = {"int8 weight-only": llm.weight_only(model, 8), "int8 dynamic W8A8": llm.int8_dynamic(model),
                "int4-g64 weight-only": llm.weight_only(model, 4, 64)}  # fmt: skip
    for label, quantized in variants.items():
        speedup = measure_bench.decode_tokens_per_s(quantized, ids, 32) / fp32
        if label == "int8 weight-only":
            claims.target(f"smollm2 {label} decode speed-up", speedup, ">=", 1.5, unit="x",
                          section="sec-quant-llm-speed")  # fmt: skip
        else:
            claims.measure(f"smollm2 {label} decode speed-up", speedup, "x")


def bench() -> None:
    """The chapter's headline rows: int8 and int4 perplexity, GPTQ against RTN, decode speed-ups."""
    for name in ("gpt-shakespeare", "smollm2"):
        quality_rows(name)
    decode_rows()
