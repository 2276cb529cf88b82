"""effdl.infer: the KV cache (contiguous or paged) gives the logits and greedy tokens of recomputing the
sequence and its bytes follow the formula; batching serves every request its own continuation; speculative
decoding emits the target's greedy tokens, or samples from the target's distribution; bad sizes are refused."""

import pytest
import torch

from effdl import lm
from effdl.infer import KVCache, forward_cached, generate, generate_batch
from effdl.infer.batching import ContinuousBatcher, Request, static_batching
from effdl.infer.hf_batch import HFBatch
from effdl.infer.lookup import DraftProposer, lookup_candidates, prompt_lookup_generate, speculative_generate_hf
from effdl.infer.paged import PagedKVCache
from effdl.infer.speculative import Speculated, speculative_generate
from effdl.models import GPT, GPTConfig


def _gpt(**overrides) -> GPT:
    """A small GPT with noisy weights: an untrained one repeats its last token whatever it attends to, which would
    let a wrong attention mask pass these tests."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, context=32, n_layer=2, n_head=4, n_embd=32, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_prefill_and_decode_give_the_logits_of_the_whole_sequence(kv_heads):
    model = _gpt(n_kv_head=kv_heads)
    idx = torch.randint(0, 40, (3, 20))
    cache = KVCache(model.cfg, batch=3, max_tokens=20)
    parts = [forward_cached(model, idx[:, :12], cache), forward_cached(model, idx[:, 12:17], cache)]
    parts += [forward_cached(model, idx[:, i : i + 1], cache) for i in range(17, 20)]
    assert cache.lengths.tolist() == [20, 20, 20]
    torch.testing.assert_close(torch.cat(parts, dim=1), model(idx), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kv_heads", [None, 1])
def test_cached_greedy_generation_matches_recomputing_every_step(kv_heads):
    model = _gpt(n_kv_head=kv_heads)
    prompt = torch.randint(0, 40, (2, 5))
    out = generate(model, prompt, 27)
    assert torch.equal(out, model.generate(prompt, 27))
    assert out[:, 5:].unique().numel() >= 3  # not one repeated token: the output depends on the attention
    assert torch.equal(generate(model, prompt, 0), prompt)


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_prompts_of_different_lengths_batched_equal_each_alone(kv_heads):
    model = _gpt(n_kv_head=kv_heads)
    prompts = [torch.randint(0, 40, (n,)) for n in (3, 9, 1, 6)]
    batched = generate_batch(model, prompts, 12)
    for prompt, out in zip(prompts, batched, strict=True):
        assert torch.equal(out, generate(model, prompt[None], 12)[0])
    with pytest.raises(ValueError, match="prompts"):
        generate_batch(model, [torch.zeros(0, dtype=torch.long)], 3)


def test_rows_of_one_cache_advance_on_their_own():
    model = _gpt()
    a, b = torch.randint(0, 40, (1, 7)), torch.randint(0, 40, (1, 4))
    cache = KVCache(model.cfg, batch=2, max_tokens=16)
    forward_cached(model, a, cache, rows=torch.tensor([0]))
    forward_cached(model, b, cache, rows=torch.tensor([1]))
    assert cache.lengths.tolist() == [7, 4]
    nxt = torch.tensor([[5], [6]])
    both = forward_cached(model, nxt, cache)[:, -1]
    torch.testing.assert_close(both[0], model(torch.cat([a, nxt[:1]], 1))[0, -1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both[1], model(torch.cat([b, nxt[1:]], 1))[0, -1], atol=1e-4, rtol=1e-4)
    cache.reset(torch.tensor([0]))
    again = forward_cached(model, b, cache, rows=torch.tensor([0]))
    torch.testing.assert_close(again, model(b), atol=1e-4, rtol=1e-4)


def test_sampling_with_the_same_seed_matches_too():
    model = _gpt()
    prompt = torch.randint(0, 40, (2, 4))
    torch.manual_seed(1)
    cached = generate(model, prompt, 10, temperature=1.0)
    torch.manual_seed(1)
    assert torch.equal(cached, model.generate(prompt, 10, temperature=1.0))


@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_cache_bytes_follow_the_formula(kv_heads):
    cfg = _gpt(n_kv_head=kv_heads).cfg
    cache = KVCache(cfg, batch=3, max_tokens=24)
    assert cache.nbytes() == lm.kv_cache_bytes(cfg, 24, batch=3, bytes_per_value=4)
    half = KVCache(cfg, batch=3, max_tokens=24, dtype=torch.bfloat16)
    assert half.nbytes() == lm.kv_cache_bytes(cfg, 24, batch=3, bytes_per_value=2)


@pytest.mark.parametrize("paged", [False, True])
def test_a_pass_with_nothing_to_mask_stores_what_the_masked_pass_stores(paged):
    """Without ``valid`` every new token is stored unmasked (the decode step's shortcut); with ``valid`` counting
    every token the mask keeps them all: the same logits and the same keys and values either way."""
    model = _gpt()
    idx = torch.randint(0, 40, (2, 6))
    make = (lambda: PagedKVCache(model.cfg, 2, blocks=4, block_size=4)) if paged else (lambda: KVCache(model.cfg, 2))
    plain, masked = make(), make()
    for part in (idx[:, :5], idx[:, 5:]):
        torch.testing.assert_close(forward_cached(model, part, plain),
                                   forward_cached(model, part, masked, valid=torch.full((2,), part.shape[1])))
    assert torch.equal(plain.keys, masked.keys) and torch.equal(plain.values, masked.values)
    assert plain.keys.abs().sum() > 0 and plain.lengths.tolist() == masked.lengths.tolist() == [6, 6]


def test_what_does_not_fit_is_refused_with_the_argument_named():
    model = _gpt()
    with pytest.raises(ValueError, match="max_tokens"):
        KVCache(model.cfg, batch=1, max_tokens=33)
    with pytest.raises(ValueError, match="batch"):
        KVCache(model.cfg, batch=0)
    cache = KVCache(model.cfg, batch=1, max_tokens=8)
    forward_cached(model, torch.zeros(1, 6, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="idx"):
        forward_cached(model, torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="idx"):
        forward_cached(model, torch.zeros(2, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="new_tokens"):
        generate(model, torch.zeros(1, 30, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="valid"):
        forward_cached(model, torch.zeros(1, 2, dtype=torch.long), KVCache(model.cfg, 1), valid=torch.tensor([3]))
    with pytest.raises(ValueError, match="valid"):
        forward_cached(model, torch.zeros(2, 2, dtype=torch.long), KVCache(model.cfg, 2), valid=torch.tensor([2]))
    with pytest.raises(ValueError, match="rows"):
        forward_cached(model, torch.zeros(2, 1, dtype=torch.long), KVCache(model.cfg, 2), rows=torch.tensor([0, 0]))
    for rows in ([2], [-1], [[0]]):
        with pytest.raises(ValueError, match="rows"):
            forward_cached(model, torch.zeros(1, 1, dtype=torch.long), KVCache(model.cfg, 2), rows=torch.tensor(rows))
    with pytest.raises(ValueError, match="eval mode"):
        forward_cached(model.train(), torch.zeros(1, 1, dtype=torch.long), cache)


# --- batching ----------------------------------------------------------------------------------------------


def _requests(lengths, new, arrivals=None):
    torch.manual_seed(2)
    arrivals = arrivals or [0] * len(lengths)
    return [Request(torch.randint(0, 40, (n,)), m, a) for n, m, a in zip(lengths, new, arrivals, strict=True)]


def test_static_and_continuous_batching_give_each_request_its_greedy_continuation():
    model = _gpt(n_kv_head=2)
    requests = _requests([3, 8, 2, 5, 7], [6, 2, 9, 4, 3], arrivals=[0, 0, 1, 4, 30])
    expected = [generate(model, r.prompt[None], r.max_new_tokens)[0, len(r.prompt) :].tolist() for r in requests]
    for served in (static_batching(model, requests, 2), ContinuousBatcher(model, 2, token_budget=12).run(requests)):
        assert [s.tokens for s in served] == expected
        assert all(s.admitted_step >= r.arrival for s, r in zip(served, requests, strict=True))


def test_continuous_batching_lets_requests_join_as_soon_as_a_row_frees():
    model = _gpt()
    requests = _requests([4, 4, 4], [2, 8, 3])
    served = ContinuousBatcher(model, max_batch=2, token_budget=16).run(requests)
    assert [s.admitted_step for s in served] == [0, 0, 2]  # the first request leaves after step 1
    assert [s.finished_step for s in served] == [1, 7, 4]
    static = static_batching(model, requests, 2)
    assert static[2].admitted_step == 8  # waits for the longest of the first group


def test_the_token_budget_limits_how_many_prompts_join_a_step():
    model = _gpt()
    requests = _requests([6, 6, 6], [3, 3, 3])
    served = ContinuousBatcher(model, max_batch=3, token_budget=12).run(requests)
    assert [s.admitted_step for s in served] == [0, 0, 1]  # 6 + 6 fit step 0; step 1 spends 2 decodes + 6


def test_batching_refuses_what_cannot_be_served():
    model = _gpt()
    with pytest.raises(ValueError, match="token_budget"):
        ContinuousBatcher(model, max_batch=4, token_budget=2)
    with pytest.raises(ValueError, match="requests"):
        ContinuousBatcher(model, max_batch=2, token_budget=8).run(_requests([9], [2]))
    with pytest.raises(ValueError, match="requests"):
        ContinuousBatcher(model, max_batch=2, token_budget=32).run(_requests([30], [5]))
    with pytest.raises(ValueError, match="max_steps"):
        ContinuousBatcher(model, max_batch=2, token_budget=8).run(_requests([3], [2], arrivals=[10**9]), max_steps=100)
    paged = PagedKVCache(model.cfg, batch=2, blocks=2, block_size=4)
    with pytest.raises(ValueError, match="blocks"):
        ContinuousBatcher(model, max_batch=2, token_budget=16, cache=paged).run(_requests([6], [4]))
    with pytest.raises(ValueError, match="max_new_tokens"):
        Request(torch.tensor([1, 2]), 0)
    with pytest.raises(ValueError, match="batch_size"):
        static_batching(model, _requests([2], [2]), 0)


# --- speculative decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_speculative_decoding_emits_exactly_the_targets_greedy_tokens(gamma):
    target = _gpt(n_kv_head=2)
    torch.manual_seed(5)
    draft = GPT(GPTConfig(vocab_size=40, context=32, n_layer=1, n_head=2, n_embd=16)).eval()
    prompt = torch.randint(0, 40, (1, 4))
    result = speculative_generate(target, draft, prompt, 20, gamma)
    assert torch.equal(result.tokens, generate(target, prompt, 20)[0, 4:])
    assert result.accepted < result.proposed and result.target_passes <= 20  # rejections happened


def test_a_draft_equal_to_the_target_is_always_accepted():
    target = _gpt()
    prompt = torch.randint(0, 40, (1, 1))
    result = speculative_generate(target, target, prompt, 20, 4)
    assert torch.equal(result.tokens, generate(target, prompt, 20)[0, 1:])
    assert result.acceptance == 1.0 and result.target_passes == 4  # 5 tokens per pass: 4 accepted + 1
    sampled = speculative_generate(target, target, prompt, 20, 4, temperature=1.0)
    assert sampled.acceptance == 1.0  # p(x) / q(x) = 1 for every proposal


def test_speculative_decoding_refuses_mismatched_models_and_sizes():
    target = _gpt()
    other = GPT(GPTConfig(vocab_size=41, context=32, n_layer=1, n_head=2, n_embd=16)).eval()
    prompt = torch.randint(0, 40, (1, 4))
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, other, prompt, 5, 2)
    with pytest.raises(ValueError, match="new_tokens"):
        speculative_generate(target, target, prompt, 29, 4)
    with pytest.raises(ValueError, match="gamma"):
        speculative_generate(target, target, prompt, 5, 0)
    with pytest.raises(ValueError, match="idx"):
        speculative_generate(target, target, prompt.repeat(2, 1), 5, 2)


# --- the paged cache ---------------------------------------------------------------------------------------


def test_the_paged_cache_gives_the_contiguous_caches_logits():
    model = _gpt(n_kv_head=2)
    paged = PagedKVCache(model.cfg, batch=2, blocks=8, block_size=4)
    plain = KVCache(model.cfg, batch=2)
    a, b = torch.randint(0, 40, (1, 7)), torch.randint(0, 40, (1, 2))
    for cache in (paged, plain):
        forward_cached(model, a, cache, rows=torch.tensor([0]))
        forward_cached(model, b, cache, rows=torch.tensor([1]))
    nxt = torch.randint(0, 40, (2, 3))
    torch.testing.assert_close(forward_cached(model, nxt, paged), forward_cached(model, nxt, plain), atol=1e-5,
                               rtol=1e-5)  # fmt: skip
    assert [len(t) for t in paged.tables] == [3, 2]  # 10 and 5 positions in blocks of 4
    assert paged.used_bytes() == 5 * paged.block_bytes()
    padded = PagedKVCache(model.cfg, batch=2, blocks=8, block_size=4)
    forward_cached(model, torch.randint(0, 40, (2, 12)), padded, valid=torch.tensor([1, 12]))
    assert [len(t) for t in padded.tables] == [1, 3]  # right-padding takes no blocks


def test_paged_blocks_return_to_the_free_list_and_running_out_is_an_error():
    model = _gpt()
    paged = PagedKVCache(model.cfg, batch=2, blocks=3, block_size=4)
    forward_cached(model, torch.randint(0, 40, (1, 9)), paged, rows=torch.tensor([0]))
    assert len(paged.free) == 0
    with pytest.raises(RuntimeError, match="blocks"):
        forward_cached(model, torch.randint(0, 40, (1, 2)), paged, rows=torch.tensor([1]))
    paged.reset(torch.tensor([0]))
    assert sorted(paged.free) == [0, 1, 2] and paged.used_bytes() == 0
    assert 2 * paged.block_bytes() == lm.kv_cache_bytes(model.cfg, 8, bytes_per_value=4)  # 2 blocks of 4 tokens


def test_continuous_batching_runs_on_the_paged_cache():
    model = _gpt()
    requests = _requests([3, 8, 2, 5], [6, 2, 9, 4])
    paged = PagedKVCache(model.cfg, batch=2, blocks=8, block_size=4)
    served = ContinuousBatcher(model, max_batch=2, token_budget=12, cache=paged).run(requests)
    expected = [generate(model, r.prompt[None], r.max_new_tokens)[0, len(r.prompt) :].tolist() for r in requests]
    assert [s.tokens for s in served] == expected
    assert paged.used_bytes() == 0 and sorted(paged.free) == list(range(8))
    tight = PagedKVCache(model.cfg, batch=2, blocks=4, block_size=4)  # 2 + 3 blocks if a finished row kept its own
    ContinuousBatcher(model, max_batch=2, token_budget=12, cache=tight).run(_requests([8, 4], [1, 9]))
    assert tight.used_bytes() == 0


def test_a_request_waits_until_the_paged_pool_can_hold_its_whole_run():
    model = _gpt()
    requests = _requests([6, 6, 6], [4, 4, 4])  # 9 stored tokens: 3 blocks of 4 each; the pool has 4
    paged = PagedKVCache(model.cfg, batch=2, blocks=4, block_size=4)
    served = ContinuousBatcher(model, max_batch=2, token_budget=16, cache=paged).run(requests)
    expected = [generate(model, r.prompt[None], r.max_new_tokens)[0, len(r.prompt) :].tolist() for r in requests]
    assert [s.tokens for s in served] == expected
    assert [s.admitted_step for s in served] == [0, 4, 8]  # one at a time, although two rows are free
    with pytest.raises(ValueError, match="cache"):
        ContinuousBatcher(model, max_batch=3, token_budget=12, cache=paged)


def _peaked(seed: int, layers: int) -> GPT:
    """A tiny random GPT with large weights, so that its next-token distributions are far from uniform."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=4, context=8, n_layer=layers, n_head=2, n_embd=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20 if p.dim() > 1 else 1)
    return model


@torch.no_grad()
def _two_token_distribution(model: GPT, prompt: torch.Tensor) -> torch.Tensor:
    """The exact probability of each pair of next two tokens, ``p(a) p(b | a)``, flattened."""
    first = model(prompt)[0, -1].softmax(-1)
    return torch.stack([first[a] * model(torch.cat([prompt, torch.tensor([[a]])], 1))[0, -1].softmax(-1)
                        for a in range(4)]).flatten()  # fmt: skip


def test_speculative_sampling_draws_from_the_targets_distribution_not_the_drafts():
    from scipy.stats import chisquare

    target, draft, prompt, runs = _peaked(0, 2), _peaked(1, 1), torch.tensor([[1, 2]]), 2000
    torch.manual_seed(4)
    counts = torch.zeros(16)
    for _ in range(runs):
        pair = speculative_generate(target, draft, prompt, 2, 2, temperature=1.0).tokens
        counts[pair[0] * 4 + pair[1]] += 1
    wanted, drafted = _two_token_distribution(target, prompt), _two_token_distribution(draft, prompt)
    assert 0.5 * (wanted - drafted).abs().sum() > 0.25  # the draft alone would sample something else
    assert chisquare(counts.numpy(), (runs * wanted).numpy(), sum_check=False).pvalue > 1e-3
    assert chisquare(counts.numpy(), (runs * drafted).numpy(), sum_check=False).pvalue < 1e-6


# --- prompt lookup on a Hugging Face model -----------------------------------------------------------------


def test_lookup_proposes_what_followed_the_last_ngram_before():
    ids = torch.tensor([5, 6, 7, 8, 9, 1, 5, 6])
    assert lookup_candidates(ids, 3).tolist() == [7, 8, 9]  # after the bigram 5 6
    assert lookup_candidates(torch.tensor([1, 2, 3, 2]), 2).tolist() == [3, 2]  # unigram 2
    assert lookup_candidates(torch.tensor([1, 2, 3, 4]), 2).tolist() == []
    assert lookup_candidates(torch.tensor([3, 2, 7, 3, 2, 8, 3, 2]), 3).tolist() == [7, 3, 2]  # the earliest match
    assert lookup_candidates(torch.tensor([4, 2, 7, 3, 2, 8, 3, 2]), 3).tolist() == [8, 3, 2]  # bigram over unigram
    with pytest.raises(ValueError, match="k"):
        lookup_candidates(ids, 0)


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # noisy weights, as in _gpt: attention and positions change the output
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


def test_prompt_lookup_decoding_gives_hugging_faces_greedy_tokens():
    model = _tiny_llama()
    torch.manual_seed(1)
    prompt = torch.randint(0, 12, (1, 6)).repeat(1, 3)  # repeated text: the lookups find matches
    result = prompt_lookup_generate(model, prompt, 24, k=4)
    model.generation_config.eos_token_id = None  # run all 24 tokens
    reference = model.generate(prompt, max_new_tokens=24, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert result.tokens.tolist() == reference[0, prompt.shape[1] :].tolist()
    assert result.proposed > 0 and 0 <= result.accepted <= result.proposed
    assert result.target_passes == 24 - result.accepted  # every pass gives the accepted tokens and one more
    with pytest.raises(ValueError, match="ids"):
        prompt_lookup_generate(model, prompt.repeat(2, 1), 4)


def test_continuous_batching_of_a_hugging_face_model_gives_each_request_its_greedy_tokens():
    model = _tiny_llama()
    model.generation_config.eos_token_id = None
    torch.manual_seed(3)
    requests = [Request(torch.randint(0, 12, (n,)), m, a) for n, m, a in [(5, 6, 0), (9, 3, 0), (2, 8, 1), (7, 4, 2)]]
    served = ContinuousBatcher(model, max_batch=2, token_budget=16).run(requests)
    for request, result in zip(requests, served, strict=True):
        prompt = request.prompt[None]
        reference = model.generate(prompt, max_new_tokens=request.max_new_tokens, do_sample=False,
                                   attention_mask=torch.ones_like(prompt))  # fmt: skip
        assert result.tokens == reference[0, len(request.prompt) :].tolist()
    assert max(s.admitted_step for s in served) > 0  # later requests joined a running batch
    with pytest.raises(ValueError, match="model"):
        ContinuousBatcher(model, max_batch=2, token_budget=16, cache=KVCache(_gpt().cfg, 2))


def test_hf_batch_rows_of_different_lengths_get_the_logits_of_their_own_sequence():
    model = _tiny_llama()
    torch.manual_seed(4)
    prompts = [torch.randint(0, 12, (n,)) for n in (3, 8, 5)]
    batch = HFBatch(model)
    firsts = [batch.join(p) for p in prompts]
    logits = batch.forward(firsts)
    for row, (prompt, first) in enumerate(zip(prompts, firsts, strict=True)):
        alone = model(torch.cat([prompt, torch.tensor([first])])[None]).logits[0, -1]
        torch.testing.assert_close(logits[row], alone, atol=1e-4, rtol=1e-4)
    batch.leave([0, 1])
    assert batch.mask.shape == (1, 6) and batch.lengths == [6]  # the columns only the others used are gone


def test_a_stop_token_ends_a_request_early_and_frees_its_row():
    model = _gpt()
    base = _requests([4, 5, 3], [12, 12, 6])
    full = [generate(model, r.prompt[None], r.max_new_tokens)[0, len(r.prompt) :].tolist() for r in base]
    stop = full[0][3]  # the first request stops at its 4th token (or earlier, if that token came before)
    requests = [Request(r.prompt, r.max_new_tokens, stop=stop) for r in base]
    expected = [t[: t.index(stop) + 1] if stop in t else t for t in full]
    assert len(expected[0]) <= 4
    served = ContinuousBatcher(model, max_batch=2, token_budget=16).run(requests)
    assert [s.tokens for s in served] == expected
    assert [s.tokens for s in static_batching(model, requests, 2)] == expected
    assert served[2].admitted_step == min(len(expected[0]), len(expected[1]))  # joins when the first row frees


def test_prompt_lookup_stops_where_generate_stops():
    model = _tiny_llama()
    torch.manual_seed(1)
    prompt = torch.randint(0, 12, (1, 6)).repeat(1, 3)
    model.generation_config.eos_token_id = None
    free_run = prompt_lookup_generate(model, prompt, 24, k=4).tokens.tolist()
    stop = free_run[5]
    reference = model.generate(prompt, max_new_tokens=24, do_sample=False, eos_token_id=stop,
                               attention_mask=torch.ones_like(prompt))  # fmt: skip
    result = prompt_lookup_generate(model, prompt, 24, k=4, stop=stop)
    assert result.tokens.tolist() == reference[0, prompt.shape[1] :].tolist() == free_run[: free_run.index(stop) + 1]


def test_a_draft_models_proposals_give_the_targets_greedy_tokens():
    target, draft = _tiny_llama(), _tiny_llama(seed=5)
    target.generation_config.eos_token_id = None
    torch.manual_seed(2)
    prompt = torch.randint(0, 12, (1, 7))
    reference = target.generate(prompt, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(prompt))
    result = speculative_generate_hf(target, prompt, 20, DraftProposer(draft), k=3)
    assert result.tokens.tolist() == reference[0, prompt.shape[1] :].tolist()
    assert result.accepted < result.proposed  # a different model: some proposals rejected
    itself = speculative_generate_hf(target, prompt, 20, DraftProposer(target), k=3)
    assert itself.tokens.tolist() == result.tokens.tolist()
    assert itself.accepted == itself.proposed and itself.target_passes == 5  # 4 guesses + 1 own token per pass
    with pytest.raises(ValueError, match="k"):
        speculative_generate_hf(target, prompt, 4, DraftProposer(draft), k=0)


def test_acceptance_counts_only_the_proposals_a_pass_judged():
    # two passes of 4 proposals: one rejected its 2nd (1 accepted), one its 1st (0 accepted); 5 proposals never judged
    result = Speculated(torch.tensor([1, 2, 3]), proposed=8, accepted=1, target_passes=2, rejections=2)
    assert result.acceptance == pytest.approx(1 / 3)
    assert Speculated(torch.tensor([1]), proposed=4, accepted=4, target_passes=1, rejections=0).acceptance == 1.0
