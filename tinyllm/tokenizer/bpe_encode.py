"""Encoding one chunk: apply the learned merges to its bytes, lowest rank first.

Everything here works on token ids and one table, ``pair_ranks``: ``(left id, right id) -> rank``
for every pair of tokens whose concatenation is itself a token. The rank is also the new token's id,
so a merge replaces two ids by the rank. The table lists *every* way to cut each token in two, not
only the cut that training used; that is tiktoken's rule ("merge any adjacent pair whose bytes form
a token"), which keeps our ids identical to tiktoken's.

BPE on one chunk: while some adjacent pair is in the table, merge the pair of lowest rank (the
leftmost one if several have it). Two implementations give the same result:

- :func:`merge_short`, quadratic but with its inner loops in C: best for the few bytes of a typical
  chunk;
- :func:`merge_long`, O(n log n) with a heap over a linked list: for long chunks, where the
  quadratic one would crawl (a megabyte without a space, or any text under pattern None).
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

NO_MERGE = 1 << 62  # the rank of a pair that is not a token: larger than any real rank
LONG_CHUNK = 128  # chunks of more bytes than this are merged with a heap (measured crossover)


def merge_short(ids: list[int], pair_ranks: dict, limit: int = NO_MERGE) -> list[int]:
    """Apply BPE to one chunk's token ids, in place; fast for the short chunks of real text.

    ``ranks[i]`` holds the rank of the token that ``ids[i] + ids[i+1]`` would make. Each step finds
    the lowest (``min`` and ``index`` run in C and the leftmost wins a tie), merges it, and
    recomputes only the two neighbouring ranks. Pairs of rank ``limit`` or more are not merged.
    """
    get = pair_ranks.get
    ranks = [get(pair, NO_MERGE) for pair in zip(ids, ids[1:])]
    while ranks:
        rank = min(ranks)
        if rank >= limit:
            break
        i = ranks.index(rank)
        ids[i : i + 2] = (rank,)  # a merged token's id is its rank
        del ranks[i]
        if i > 0:
            ranks[i - 1] = get((ids[i - 1], rank), NO_MERGE)
        if i < len(ranks):
            ranks[i] = get((rank, ids[i + 1]), NO_MERGE)
    return ids


def merge_long(ids: list[int], pair_ranks: dict) -> list[int]:
    """The same merges as :func:`merge_short` in O(n log n), for long chunks
    (a 1 MB run of letters).

    The tokens form a linked list (``next_``/``prev`` hold positions); a heap holds
    ``(rank, position)`` of candidate merges, so the lowest rank, then the leftmost, comes out
    first. An entry is stale when its left token was merged away or its pair no longer makes that
    rank; stale entries are skipped.
    """
    get = pair_ranks.get
    n = len(ids)
    # tokens[i]: the token starting at position i, None inside one
    tokens: list[int | None] = list(ids)
    next_ = list(range(1, n + 1))
    prev = list(range(-1, n - 1))
    heap = [(rank, i) for i, pair in enumerate(zip(ids,
                                                   ids[1:])) if (rank := get(pair)) is not None]
    heapify(heap)
    while heap:
        rank, i = heappop(heap)
        j = next_[i]
        if tokens[i] is None or j >= n or get((tokens[i], tokens[j])) != rank:
            continue
        tokens[i], tokens[j] = rank, None
        k = next_[i] = next_[j]
        if k < n:
            prev[k] = i
            if (right := get((rank, tokens[k]))) is not None:
                heappush(heap, (right, i))
        if (p := prev[i]) >= 0 and (left := get((tokens[p], rank))) is not None:
            heappush(heap, (left, p))
    return [token for token in tokens if token is not None]


def apply_merges(ids: list[int], pair_ranks: dict) -> list[int]:
    """BPE on one chunk's ids (one per byte): the fast implementation for its length."""
    if len(ids) > LONG_CHUNK:
        return merge_long(ids, pair_ranks)
    return merge_short(ids, pair_ranks)


def pair_ranks_of(ranks: dict[bytes, int]) -> dict[tuple[int, int], int]:
    """The ``(left id, right id) -> rank`` table: every cut of every token into two tokens."""
    return {
        (ranks[token[:cut]], ranks[token[cut:]]): rank
        for token, rank in ranks.items()
        for cut in range(1, len(token))
        if token[:cut] in ranks and token[cut:] in ranks
    }
