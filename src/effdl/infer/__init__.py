"""``effdl.infer``: generating tokens fast.

- :mod:`~effdl.infer.kv_cache`: a key/value cache for the book's GPT, prefill then decode, one length per row
- :mod:`~effdl.infer.paged`: a paged cache (blocks, block tables, a free list)
- :mod:`~effdl.infer.batching`: static and continuous batching of generation requests
- :mod:`~effdl.infer.speculative`: speculative decoding with a draft model, greedy or sampled
- :mod:`~effdl.infer.lookup`: prompt-lookup decoding on a Hugging Face model, no draft needed
"""

from effdl.infer import batching, kv_cache, lookup, paged, speculative
from effdl.infer.batching import ContinuousBatcher, Request, Served, static_batching
from effdl.infer.kv_cache import KVCache, forward_cached, generate, generate_batch, next_token
from effdl.infer.lookup import lookup_candidates, prompt_lookup_generate
from effdl.infer.paged import PagedKVCache
from effdl.infer.speculative import Speculated, speculative_generate

__all__ = [
    "ContinuousBatcher",
    "KVCache",
    "PagedKVCache",
    "Request",
    "Served",
    "Speculated",
    "batching",
    "forward_cached",
    "generate",
    "generate_batch",
    "kv_cache",
    "lookup",
    "lookup_candidates",
    "next_token",
    "paged",
    "prompt_lookup_generate",
    "speculative",
    "speculative_generate",
    "static_batching",
]
