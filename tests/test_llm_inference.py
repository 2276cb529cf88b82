"""The inference chapter's own code (``effdl.experiments.llm_inference``): the speed-up formula, the workload, the
schedulers' comparison, the recorded paged cache and the exercises' self-checks. The techniques themselves are
tested in ``test_infer.py``."""

import pytest
import torch

from effdl import infer
from effdl.experiments import llm_inference as ex
from effdl.models import GPT, GPTConfig


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=128, context=64, n_layer=2, n_head=4, n_embd=32)).eval()  # any char of the text


def test_speedup_formula_at_its_limits_and_with_a_verify_cost():
    assert ex.speedup_formula(0.0, 4, 0.1) == pytest.approx(1 / 1.4)  # nothing accepted: one token per pass
    assert ex.speedup_formula(1.0, 3, 0.0) == 4  # everything accepted, a free draft: gamma + 1 tokens per pass
    assert ex.speedup_formula(0.5, 1, 0.0) == pytest.approx(1.5)
    assert ex.speedup_formula(0.5, 1, 0.0, verify=1.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="alpha"):
        ex.speedup_formula(1.5, 2, 0.1)
    with pytest.raises(ValueError, match="verify"):
        ex.speedup_formula(0.5, 2, 0.1, verify=0)


def test_formula_self_check_accepts_the_formula_and_rejects_a_wrong_one():
    assert ex.self_check_formula(lambda a, g, c: ex.speedup_formula(a, g, c))
    assert not ex.self_check_formula(lambda a, g, c: (1 - a ** (g + 1)) / (1 - a) if a < 1 else g + 1.0)  # no cost


@pytest.mark.slow
def test_kv_bytes_self_check():
    right = 2 * 30 * 3 * 64 * 8192 * 8 * 2  # SmolLM2: 30 layers, 3 key/value heads of 64, fp16
    assert ex.self_check_kv_bytes(right) and not ex.self_check_kv_bytes(right // 2)


def test_workload_fits_the_context_with_short_and_long_answers():
    requests = ex.workload(64, context=128)
    assert len(requests) == 64
    assert all(8 <= len(r.prompt) <= 32 and 4 <= r.max_new_tokens <= 96 for r in requests)
    assert all(len(r.prompt) + r.max_new_tokens <= 128 for r in requests)
    lengths = sorted(r.max_new_tokens for r in requests)
    assert lengths[len(lengths) // 2] < 40 < lengths[-1]  # most answers short, some long
    assert [r.max_new_tokens for r in ex.workload(64, context=128)] == [r.max_new_tokens for r in requests]


def test_compare_schedules_keeps_the_median_round_and_refuses_different_tokens():
    model = _gpt()
    requests = ex.workload(6, context=64)
    results = ex.compare_schedules({"static": lambda: infer.static_batching(model, requests, 3),
                                    "continuous": lambda: infer.ContinuousBatcher(model, 3, 48).run(requests)},
                                   rounds=3)  # fmt: skip
    assert results["static"].tokens == results["continuous"].tokens == sum(r.max_new_tokens for r in requests)
    assert results["static"].percentile("finished_s", 1.0) <= results["static"].seconds
    shorter = [infer.Request(r.prompt, 1) for r in requests]
    with pytest.raises(AssertionError, match="different tokens"):
        ex.compare_schedules({"a": lambda: infer.static_batching(model, requests, 3),
                              "b": lambda: infer.static_batching(model, shorter, 3)}, rounds=1)  # fmt: skip


def test_recorded_paged_cache_never_holds_a_block_more_than_each_sequence_needs():
    model, block = _gpt(), 8
    cache = ex.RecordedPagedCache(model.cfg, 4, blocks=4 * 64 // block, block_size=block)
    requests = ex.workload(10, context=64)
    served = infer.ContinuousBatcher(model, 4, 64, cache=cache).run(requests)
    assert [len(s.tokens) for s in served] == [r.max_new_tokens for r in requests]
    assert cache.history and all(0 <= held * block - filled < 4 * block for held, filled in cache.history)
    assert max(filled for _, filled in cache.history) <= 4 * 64
    assert cache.free and len(cache.free) == cache.blocks  # every block back at the end


def test_memory_waste_shares():
    memory = ex.Memory(reserved=400, held=[40, 100, 80], filled=[30, 90, 70], block=10)
    assert memory.paged_waste == pytest.approx(0.1)  # at the pass holding the most blocks
    assert memory.contiguous_waste == pytest.approx(1 - 90 / 400)

