"""Quality heuristics for pretraining text, in the style of Gopher (Rae et al., 2021, appendix
A.1.1) and C4 (Raffel et al., 2020): cheap rules that drop boilerplate, lists of links, keyword spam
and gibberish.

Each rule is a small function ``rule(doc: Document, q: QualityConfig) -> bool`` that is True when
the document passes. Words are whitespace-separated (``str.split``), so the rules work for any
language that puts spaces between words. Gopher's stop words are the 8 most common English words; by
default the stop words here are the 8 most common words of the corpus being filtered, which is the
same test for any language. ``failed_rule`` returns the name of the first rule a document fails, or
None.

    rule                 drops a document when                              Gopher's setting
    word_count           it has fewer than min_words or more than max_words  50 .. 100,000
    mean_word_length     its mean word length is outside 3 .. 10 characters  3 .. 10
    symbol_ratio         ('#' + '...' + '…') per word exceeds 0.1            0.1
    alphabetic_words     fewer than 80% of its words contain a letter        80%
    end_punctuation      fewer than 10% of its lines end in . ! ? or a quote (C4 keeps only such lines)
    repeated_lines       over 30% of its lines, or 20% of its characters,    0.3 / 0.2
                         are in lines that occur more than once
    top_ngram            the most frequent word 2/3/4-gram (occurring more   0.20 / 0.18 / 0.16
                         than once) covers over 20/18/16% of the characters
    duplicate_ngrams     word 5..10-grams that occur more than once cover    0.15 .. 0.10
                         over 15..10% of the characters
    stop_words           it has fewer than 2 of the stop words               2 of the, be, to, of, and,
                         (by default the 8 words found in the most           that, have, with
                         documents of the corpus: ``corpus_stop_words``)

The default ``min_words`` is 5, not Gopher's 50: a document of a plain text file here is a paragraph
(see ``tinyllm.data.prepare``), often a few lines of dialogue or verse.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
END_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", "»", "。", "！", "？")


@dataclasses.dataclass
class QualityConfig:
    min_words: int = 5
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_ratio: float = 0.1
    min_alphabetic_words: float = 0.8
    min_end_punctuation: float = 0.1
    max_repeated_lines: float = 0.3
    max_repeated_line_chars: float = 0.2
    max_top_ngram: tuple = ((2, 0.20), (3, 0.18), (4, 0.16))
    max_duplicate_ngrams: tuple = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11),
                                   (10, 0.10))
    min_stop_words: int = 2
    # None: ``corpus_stop_words`` of the documents being filtered
    stop_words: tuple | None = None


class Document:
    """A text with its words and non-empty lines split once, for all the rules."""

    def __init__(self, text: str):
        self.text = text
        self.words = text.split()
        self.lines = [line.strip() for line in text.splitlines() if line.strip()]


def word_count(doc: Document, q: QualityConfig) -> bool:
    return q.min_words <= len(doc.words) <= q.max_words


def mean_word_length(doc: Document, q: QualityConfig) -> bool:
    if not doc.words:
        return False
    mean = sum(len(w) for w in doc.words) / len(doc.words)
    return q.min_mean_word_length <= mean <= q.max_mean_word_length


def symbol_ratio(doc: Document, q: QualityConfig) -> bool:
    symbols = doc.text.count("#") + doc.text.count("...") + doc.text.count("…")
    return symbols <= q.max_symbol_ratio * max(len(doc.words), 1)


def alphabetic_words(doc: Document, q: QualityConfig) -> bool:
    alphabetic = sum(any(c.isalpha() for c in w) for w in doc.words)
    return alphabetic >= q.min_alphabetic_words * len(doc.words)


def end_punctuation(doc: Document, q: QualityConfig) -> bool:
    ended = sum(line.endswith(END_PUNCTUATION) for line in doc.lines)
    return ended >= q.min_end_punctuation * max(len(doc.lines), 1)


def repeated_lines(doc: Document, q: QualityConfig) -> bool:
    counts = Counter(doc.lines)
    repeated = [line for line in doc.lines if counts[line] > 1]
    chars = sum(len(line) for line in doc.lines)
    return (len(repeated) <= q.max_repeated_lines * len(doc.lines)
            and sum(len(line) for line in repeated) <= q.max_repeated_line_chars * max(chars, 1))


def _ngrams(words, n):
    return list(zip(*(words[i:] for i in range(n))))


def top_ngram(doc: Document, q: QualityConfig) -> bool:
    """The characters of the most frequent n-gram (times its count)
    over the characters of all words."""
    chars = sum(len(w) for w in doc.words)
    for n, limit in q.max_top_ngram:
        counts = Counter(_ngrams(doc.words, n))
        if counts:
            gram, count = counts.most_common(1)[0]
            if count > 1 and count * sum(len(w) for w in gram) > limit * chars:
                return False
    return True


def duplicate_ngrams(doc: Document, q: QualityConfig) -> bool:
    """The characters of words inside n-grams that occur more than once,
    over the characters of all words."""
    chars = sum(len(w) for w in doc.words)
    for n, limit in q.max_duplicate_ngrams:
        grams = _ngrams(doc.words, n)
        counts = Counter(grams)
        covered = [False] * len(doc.words)
        for start, gram in enumerate(grams):
            if counts[gram] > 1:
                covered[start:start + n] = [True] * n
        if sum(len(w) for w, c in zip(doc.words, covered) if c) > limit * chars:
            return False
    return True


def _bare(word: str) -> str:
    return word.lower().strip(".,;:!?\"'()[]{}<>*_-«»“”‘’")


def stop_words(doc: Document, q: QualityConfig) -> bool:
    wanted = set(q.stop_words if q.stop_words is not None else GOPHER_STOP_WORDS)
    return sum(_bare(w) in wanted for w in doc.words) >= q.min_stop_words


def corpus_stop_words(texts, count: int = 8) -> tuple:
    """The ``count`` words that occur in the most documents (lower-cased, punctuation stripped)."""
    document_frequency = Counter()
    for text in texts:
        document_frequency.update({_bare(w) for w in text.split()} - {""})
    # ties: alphabetical
    ranked = sorted(document_frequency.items(), key=lambda item: (-item[1], item[0]))
    return tuple(word for word, _ in ranked[:count])


RULES = {f.__name__: f for f in (word_count, mean_word_length, symbol_ratio, alphabetic_words,
                                 end_punctuation,
                                 repeated_lines, top_ngram, duplicate_ngrams, stop_words)}


def failed_rule(text: str, q: QualityConfig | None = None) -> str | None:
    """The name of the first rule in ``RULES`` that ``text`` fails,
    or None if it passes them all."""
    q = q or QualityConfig()
    doc = Document(text)
    for name, rule in RULES.items():
        if not rule(doc, q):
            return name
    return None


def blocked_word(text: str, blocklist) -> str | None:
    """The first word of ``text`` (lower-cased, stripped of punctuation)
    that is in the set ``blocklist``."""
    for word in map(_bare, text.split()):
        if word in blocklist:
            return word
    return None
