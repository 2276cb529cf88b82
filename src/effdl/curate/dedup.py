"""Exact and near-duplicate passages of text (``sec-data-dedup``).

Exact duplicates are passages equal after :func:`normalize` (case and whitespace). Near duplicates are
passages whose sets of character ``n``-grams (:func:`shingles`) overlap by a Jaccard similarity of at least a
threshold. Comparing every pair is quadratic, so :func:`minhash` summarizes each passage by the minimum of
``num_perm`` random hash functions over its shingles (Broder, 1997): two signatures agree in one position with
probability equal to the passages' Jaccard similarity. :func:`near_duplicates` buckets signatures band by band
(locality-sensitive hashing) and only compares passages that share a bucket.
"""

from __future__ import annotations

import re

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)  # the base of the rolling hash over a shingle's code points


def normalize(text: str) -> str:
    """Lower case, runs of whitespace as one space, no leading or trailing space."""
    return re.sub(r"\s+", " ", text).strip().lower()


def shingles(text: str, n: int = 5) -> set[str]:
    """The set of character ``n``-grams of ``normalize(text)``; a shorter text is its own single shingle."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    text = normalize(text)
    return {text[i : i + n] for i in range(max(len(text) - n, 0) + 1)}


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of the :func:`shingles` of two texts: shared over all."""
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb)


def exact_duplicates(docs: list[str]) -> list[int]:
    """Indices of the passages equal (after :func:`normalize`) to an earlier one: what exact deduplication drops,
    keeping the first copy (``sec-data-dedup``)."""
    seen: set[str] = set()
    dropped = []
    for i, doc in enumerate(docs):
        key = normalize(doc)
        if key in seen:
            dropped.append(i)
        seen.add(key)
    return dropped


def _shingle_hashes(docs: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit hash of every character ``n``-gram of every normalized passage, and where each passage's
    hashes start; one vectorized pass over all the text (passages are separated by ``n - 1`` zeros, so a passage
    shorter than ``n`` hashes as one padded shingle and no shingle spans two passages)."""
    texts = [normalize(d) for d in docs]
    gap = "\0" * (n - 1)
    joined = np.frombuffer((gap.join(texts) + gap).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    hashes = np.zeros(len(joined) - n + 1, dtype=np.uint64)
    for j in range(n):  # polynomial hash, wrapping modulo 2**64
        hashes = hashes * _MIX + joined[j : j + len(hashes)]
    lengths = np.array([len(t) for t in texts])
    starts = np.concatenate([[0], np.cumsum(lengths + n - 1)[:-1]])
    counts = np.maximum(lengths - n, 0) + 1
    keep = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)])
    return hashes[keep], np.concatenate([[0], np.cumsum(counts)[:-1]])


def minhash(docs: list[str], n: int = 5, num_perm: int = 64, seed: int = 0) -> np.ndarray:
    """MinHash signatures ``(len(docs), num_perm)`` of the passages' character ``n``-grams: for each of
    ``num_perm`` random hash functions ``h(x) = a x + b (mod 2**64)`` (``a`` odd, then mixed by a shift), the
    minimum over a passage's shingles (``sec-data-dedup``)."""
    if not docs or num_perm <= 0:
        raise ValueError(f"docs must not be empty and num_perm must be positive, got {len(docs)}, {num_perm}")
    hashes, starts = _shingle_hashes(docs, n)
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    signatures = np.empty((len(docs), num_perm), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(num_perm):
            permuted = hashes * a[k] + b[k]
            permuted ^= permuted >> np.uint64(29)
            signatures[:, k] = np.minimum.reduceat(permuted, starts)
    return signatures


def near_duplicates(signatures: np.ndarray, threshold: float = 0.5, bands: int = 16) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, similarity)`` with ``i < j``: passage ``j`` is a near-duplicate of the earlier passage ``i``,
    their signatures agreeing in at least ``threshold`` of their positions (the estimated Jaccard similarity).

    Candidates come from locality-sensitive hashing: the signature is cut into ``bands`` bands, and passages whose
    rows agree on a whole band share a bucket. Within a bucket, each passage in order is compared with the
    bucket's representatives so far (the passages not matched yet); it becomes one if it matches none
    (``sec-data-dedup``)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if signatures.ndim != 2 or bands <= 0 or signatures.shape[1] % bands:
        raise ValueError(f"bands must divide the signature length {signatures.shape[-1]}, got {bands}")
    rows = signatures.shape[1] // bands
    pairs: dict[int, tuple[int, float]] = {}  # duplicate -> (its earlier match, similarity)
    for band in range(bands):
        keys = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows]).view(f"V{8 * rows}").ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        shared = np.nonzero(counts[inverse] > 1)[0]
        buckets: dict[int, list[int]] = {}
        for j in shared.tolist():
            buckets.setdefault(int(inverse[j]), []).append(j)
        for members in buckets.values():
            representatives = [members[0]]
            for j in members[1:]:
                similarity = (signatures[representatives] == signatures[j]).mean(1)
                best = int(similarity.argmax())
                if similarity[best] >= threshold:
                    if j not in pairs or similarity[best] > pairs[j][1]:
                        pairs[j] = (representatives[best], float(similarity[best]))
                else:
                    representatives.append(j)
    return sorted((i, j, sim) for j, (i, sim) in pairs.items())
