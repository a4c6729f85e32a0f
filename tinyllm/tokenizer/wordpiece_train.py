"""Learning a WordPiece vocabulary: start from characters,
merge the pair with the best *likelihood* score.

Like BPE, training starts with every word of the corpus spelled in characters, a word's first
character as itself and every other one with the continuation prefix ("hugs" → h ##u ##g ##s), and
repeatedly merges one pair of adjacent units into a new vocabulary entry. What differs is which
pair:

    BPE:        the most frequent pair                        count(ab)
    WordPiece:  the pair that raises the corpus likelihood   count(ab) / (count(a) · count(b))
                of a unigram model the most

Why that score: under a unigram model each unit has probability p(u) = count(u) / N, and replacing
the pairs "a b" by one unit "ab" changes the log-likelihood by about count(ab) · log(p(ab) / (p(a)
p(b))), which grows with count(ab) / (count(a) count(b)) (Schuster & Nakajima 2012; the Hugging Face
course's WordPiece chapter uses exactly this score). It prefers pairs whose parts seldom occur
apart: "##q ##u" merges before "e ##s" even if "e ##s" is more frequent, because "##q" almost always
precedes "##u". (Hugging Face ``tokenizers``' WordPieceTrainer instead runs BPE's count criterion
with the "##" prefix; encoding is the same greedy longest-match either way, so a vocab.txt from
either encodes identically here.)

The score's weakness is rare units: two characters seen twice, always together, score 2/(2·2) = 0.5,
far above any pair of common units, so with a low ``min_frequency`` the first merges go to rarities
and common words stay in pieces. On the SMS spam messages (90 KB, 2,000 tokens) ``min_frequency=2``
gives 1.87 characters per token ("when" → wh ##e ##n), ``min_frequency=5`` (the default) 3.07, and
the count criterion 3.24 (``criterion="count"``).

Counts are kept per distinct word with its frequency and updated only for the words that contain the
merged pair, so a merge costs a pass over the pair counts for the best score plus the affected
words.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict

from .wordpiece import (MAX_INPUT_CHARS_PER_WORD, PREFIX, SPECIAL_TOKENS, WordPieceTokenizer,
                        normalize, pre_tokenize)


def _spell(word: str) -> list[str]:
    return [word[0]] + [PREFIX + c for c in word[1:]]


def _merged(a: str, b: str) -> str:
    return a + b[len(PREFIX):]          # b always continues a word: "un" + "##aff" → "unaff"


def train_wordpiece(text: str, vocab_size: int, lowercase: bool = True,
                    strip_accents: bool | None = None,
                    min_frequency: int = 5, verbose: bool = False,
                    criterion: str = "likelihood") -> WordPieceTokenizer:
    """A WordPiece vocabulary of at most ``vocab_size`` tokens learned from ``text``: the five
    special tokens, every character (and its "##" form) seen in the text, then merges until the size
    is reached or no pair occurs ``min_frequency`` times. ``criterion``: "likelihood" (WordPiece's
    score) or "count" (BPE's, as HF tokenizers' WordPieceTrainer)."""
    if criterion not in ("likelihood", "count"):
        raise ValueError(f"criterion must be 'likelihood' or 'count', got {criterion!r}")
    if not isinstance(vocab_size, int) or vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be an integer above {len(SPECIAL_TOKENS)}, got "
                         f"{vocab_size!r}")
    word_counts = Counter(w for w in pre_tokenize(normalize(text, lowercase, strip_accents))
                          if len(w) <= MAX_INPUT_CHARS_PER_WORD)
    if not word_counts:
        raise ValueError("the text has no words to learn a vocabulary from")
    words = [_spell(w) for w in word_counts]
    freqs = list(word_counts.values())
    alphabet = sorted({unit for units in words for unit in units})
    vocab = list(SPECIAL_TOKENS) + alphabet
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(vocab)} special tokens "
                         "and characters "
                         "of the text; ask for a larger vocabulary")
    known = set(vocab)
    unit_count, pair_count, pair_words = Counter(), Counter(), defaultdict(set)
    for index, (units, freq) in enumerate(zip(words, freqs)):
        _add_word(units, freq, index, unit_count, pair_count, pair_words, +1)
    started = time.perf_counter()
    while len(vocab) < vocab_size:
        best = _best_pair(pair_count, unit_count, min_frequency, criterion)
        if best is None:
            break
        a, b = best
        for index in pair_words.pop(best):
            units, freq = words[index], freqs[index]
            _add_word(units, freq, index, unit_count, pair_count, pair_words, -1)
            words[index] = units = _merge_in(units, a, b)
            _add_word(units, freq, index, unit_count, pair_count, pair_words, +1)
        token = _merged(a, b)
        if token not in known:          # "ab"+"##c" and "a"+"##bc" both make "abc": one entry
            known.add(token)
            vocab.append(token)
        if verbose and len(vocab) % 200 == 0:
            print(f"\r{len(vocab)}/{vocab_size} tokens ({time.perf_counter() - started:.0f}s)",
                  end="", file=sys.stderr, flush=True)
    if verbose:
        print(file=sys.stderr)
    return WordPieceTokenizer(vocab, lowercase, strip_accents)


def _add_word(units, freq, index, unit_count, pair_count, pair_words, sign):
    """Add (sign=+1) or remove (-1) one word's units and adjacent pairs from the counts."""
    for unit in units:
        unit_count[unit] += sign * freq
    for pair in zip(units, units[1:]):
        pair_count[pair] += sign * freq
        if sign > 0:
            pair_words[pair].add(index)
        elif pair_count[pair] == 0:
            del pair_count[pair]


def _best_pair(pair_count, unit_count, min_frequency, criterion="likelihood"):
    """The pair with the highest count(ab) / (count(a) count(b)), ties going to the more frequent
    pair; or simply the most frequent pair (criterion "count")."""
    best, best_key = None, None
    for (a, b), count in pair_count.items():
        if count < min_frequency:
            continue
        key = (count / (unit_count[a] * unit_count[b]),
               count) if criterion == "likelihood" else (count,)
        if best_key is None or key > best_key:
            best, best_key = (a, b), key
    return best


def _merge_in(units: list[str], a: str, b: str) -> list[str]:
    """The units of one word with every adjacent "a b" replaced by the merged unit."""
    out, i = [], 0
    while i < len(units):
        if i + 1 < len(units) and units[i] == a and units[i + 1] == b:
            out.append(_merged(a, b))
            i += 2
        else:
            out.append(units[i])
            i += 1
    return out
