"""``effdl.infer``: generating tokens fast.

- :mod:`~effdl.infer.kv_cache`: a key/value cache for the book's GPT, prefill then decode, one length per row
- :mod:`~effdl.infer.paged`: a paged cache (blocks, block tables, a free list)
- :mod:`~effdl.infer.batching`: static and continuous batching of generation requests
- :mod:`~effdl.infer.hf_batch`: a Hugging Face model's running requests in one right-aligned cache
- :mod:`~effdl.infer.speculative`: speculative decoding with a draft model, greedy or sampled
- :mod:`~effdl.infer.lookup`: speculative decoding on a Hugging Face model: prompt lookup (no draft) or a draft model
"""

from effdl.infer import batching, hf_batch, kv_cache, lookup, paged, speculative
from effdl.infer.batching import ContinuousBatcher, GPTRows, HFRows, Request, Served, static_batching
from effdl.infer.hf_batch import HFBatch
from effdl.infer.kv_cache import KVCache, forward_cached, generate, generate_batch, next_token
from effdl.infer.lookup import DraftProposer, lookup_candidates, prompt_lookup_generate, speculative_generate_hf
from effdl.infer.paged import PagedKVCache
from effdl.infer.speculative import Speculated, speculative_generate

__all__ = [
    "ContinuousBatcher",
    "DraftProposer",
    "GPTRows",
    "HFBatch",
    "HFRows",
    "KVCache",
    "PagedKVCache",
    "Request",
    "Served",
    "Speculated",
    "batching",
    "forward_cached",
    "generate",
    "generate_batch",
    "hf_batch",
    "kv_cache",
    "lookup",
    "lookup_candidates",
    "next_token",
    "paged",
    "prompt_lookup_generate",
    "speculative",
    "speculative_generate",
    "speculative_generate_hf",
    "static_batching",
]
