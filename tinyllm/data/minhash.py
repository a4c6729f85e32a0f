"""Near-duplicate documents with MinHash and locality-sensitive hashing (Broder 1997;
Leskovec et al., ch. 3).

Two documents are near-duplicates when their sets of word shingles (runs of ``shingle`` consecutive
words) overlap a lot: Jaccard similarity J(A, B) = |A ∩ B| / |A ∪ B| ≥ threshold. Comparing every
pair is quadratic, so each set is summarised by a signature of ``num_perm`` minimum hash values:

    sig[i] = min over shingles x of h_i(x),   h_i(x) = (a_i·x + b_i mod 2^64) >> 32   (a_i odd, random)

For a random hash function, P(min h(A) = min h(B)) = J(A, B), so the fraction of equal entries of
two signatures estimates J. LSH then finds candidate pairs without comparing all of them: the
signature is cut into ``bands`` bands of ``rows`` values, and two documents become candidates when
all rows of at least one band agree, which happens with probability 1 − (1 − J^rows)^bands: an
S-curve that rises steeply around (1/bands)^(1/rows). Candidates are confirmed with the signature
estimate of J.

Hashing is vectorised with NumPy: a word is hashed once (BLAKE2b, stable across runs), a shingle's
hash combines its words' hashes with powers of an odd constant, and all permutations of all shingles
are computed as (num_perm, shingles) arrays, reduced to each document's minimum with
``np.minimum.reduceat``.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_WORD = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)     # odd: multiplying by it permutes 64-bit integers


def lsh_bands(threshold: float, num_perm: int,
              false_negative_weight: float = 0.9) -> tuple[int, int]:
    """(bands, rows)
    with bands·rows ≤ num_perm whose S-curve best separates J < threshold from J ≥ threshold:
    the least weighted sum of the false-positive and false-negative probability mass,
    integrated over J.

    A missed pair (false negative) is weighted 0.9 and a spurious candidate 0.1, because every
    candidate is then confirmed with the full signature: a spurious one costs a comparison, a missed
    one a duplicate kept.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"the Jaccard threshold must be between 0 and 1, got {threshold}")
    grid = np.linspace(0.0, 1.0, 201)
    best, best_error = (1, num_perm), np.inf
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        candidate = 1.0 - (1.0 - grid ** rows) ** bands
        error = np.where(grid < threshold, (1 - false_negative_weight) * candidate,
                         false_negative_weight * (1.0 - candidate)).mean()
        if error < best_error:
            best, best_error = (bands, rows), error
    return best


def shingle_hashes(text: str, shingle: int, word_hashes: dict) -> np.ndarray:
    """64-bit hashes of the runs of ``shingle`` consecutive words of ``text`` (lower-cased ``\\w+``
    words; a text with fewer words is one shingle). ``word_hashes`` caches each word's hash across
    calls."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(1, dtype=np.uint64)
    ids = np.array([word_hashes.get(w) or word_hashes.setdefault(w, _stable_hash(w))
                    for w in words], dtype=np.uint64)
    count = max(len(ids) - shingle + 1, 1)
    combined = np.zeros(count, dtype=np.uint64)
    # uint64 arithmetic wraps modulo 2^64, as intended
    with np.errstate(over="ignore"):
        for offset in range(min(shingle, len(ids))):
            combined = combined * _MIX + ids[offset:offset + count]
    return np.unique(combined)                        # a set: repeated shingles count once


def _stable_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def signatures(texts, num_perm: int = 128, shingle: int = 3, seed: int = 0,
               chunk: int = 16) -> np.ndarray:
    """MinHash signatures (len(texts), num_perm) of uint32."""
    rng = np.random.default_rng(seed)
    # odd multipliers
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    word_hashes: dict = {}
    sets = [shingle_hashes(t, shingle, word_hashes) for t in texts]
    if not sets:
        return np.zeros((0, num_perm), dtype=np.uint32)
    starts = np.cumsum([0] + [len(s) for s in sets[:-1]])
    x = np.concatenate(sets)
    out = np.empty((len(sets), num_perm), dtype=np.uint32)
    with np.errstate(over="ignore"):
        # (chunk, shingles) at a time bounds the memory
        for first in range(0, num_perm, chunk):
            hashed = (a[first:first + chunk, None] * x[None, :] + b[first:first + chunk,
                                                                    None]) >> np.uint64(32)
            out[:, first:first + chunk] = np.minimum.reduceat(hashed, starts, axis=1).T
    return out


def near_duplicates(texts, threshold: float = 0.7, num_perm: int = 128, shingle: int = 3,
                    seed: int = 0):
    """Indices of the texts to drop as near-duplicates of an earlier kept text,
    and the confirmed pairs.

    Texts are visited in order; a text is dropped when a kept earlier one shares an LSH band with it
    and their signatures agree on at least ``threshold`` of the entries (the estimate of their
    Jaccard similarity). Returns (sorted list of dropped indices, list of (kept, dropped, estimated
    J)).
    """
    sig = signatures(texts, num_perm, shingle, seed)
    bands, rows = lsh_bands(threshold, num_perm)
    # candidates[j]: earlier texts sharing a band with j
    candidates = [set() for _ in range(len(texts))]
    for band in range(bands):
        buckets: dict = {}
        for j, key in enumerate(map(bytes, sig[:, band * rows:(band + 1) * rows])):
            earlier = buckets.setdefault(key, [])
            candidates[j].update(earlier)
            earlier.append(j)
    dropped, pairs = set(), []
    for j in range(len(texts)):
        for i in sorted(candidates[j]):
            if i in dropped:
                continue
            similarity = float(np.mean(sig[i] == sig[j]))
            if similarity >= threshold:
                dropped.add(j)
                pairs.append((i, j, similarity))
                break
    return sorted(dropped), pairs
