"""Split patterns: the regex that cuts text into pre-token chunks before BPE runs.

BPE never merges across a chunk boundary. Splitting first keeps a word and the punctuation after it
apart ("dog." and "dog!" share the token "dog"), stops merges from gluing the end of one word to the
start of the next, and lets the encoder cache each distinct chunk's ids.

Two published patterns have names:

``"gpt2"``  OpenAI GPT-2 (2019). Chunks are an optional space plus a run of letters, or of digits,
or of
            other symbols; English contractions ('s 't 're 've 'm 'll 'd) are their own chunks; a
            run of spaces gives all but its last space to a chunk of its own, so " world" keeps its
            space.
``"gpt4"``  OpenAI cl100k_base (GPT-3.5/GPT-4). Like GPT-2, but contractions are case-insensitive,
            a letter run may start with any one non-letter, non-digit character (not just a space),
            numbers are cut into groups of at most three digits, and newlines form chunks of their
            own.

A pattern may also be any other regex string (the third-party ``regex`` module's syntax, so
``\\p{L}`` works), or ``None`` for no split at all: the whole text is one chunk, the textbook BPE.
Text that a custom pattern does not match is not dropped: each gap between matches becomes a chunk
of its own, so every string still round-trips.
"""

from __future__ import annotations

from collections.abc import Callable

import regex

GPT2_SPLIT_PATTERN = "|".join(
    [
        r"'s|'t|'re|'ve|'m|'ll|'d",  # contractions, lower case only
        r" ?\p{L}+",  # a run of letters, with the space before it
        r" ?\p{N}+",  # a run of digits, with the space before it
        r" ?[^\s\p{L}\p{N}]+",  # a run of other symbols (punctuation), with the space before it
        r"\s+(?!\S)",  # whitespace, but not the last space before a word (that one joins the word)
        r"\s+",  # any other whitespace, e.g. a tab before a word
    ]
)
GPT4_SPLIT_PATTERN = "|".join(
    [
        r"'(?i:[sdmt]|ll|ve|re)",  # contractions in any case: 's 'T 're 'LL
        # a word, with at most one non-letter before it: " the", "(if", "_x"
        r"[^\r\n\p{L}\p{N}]?+\p{L}+",
        r"\p{N}{1,3}",  # numbers, in groups of up to three digits
        # a run of symbols, with a space before and newlines after it
        r" ?[^\s\p{L}\p{N}]++[\r\n]*",
        r"\s*[\r\n]",  # whitespace up to the end of a line
        r"\s+(?!\S)",  # whitespace, but not the last space before a word
        r"\s+",  # any other whitespace, e.g. the space before a number
    ]
)

PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN, "cl100k": GPT4_SPLIT_PATTERN}


def resolve_pattern(pattern: str | None) -> str | None:
    """Turn a pattern name ("gpt2", "gpt4"), a regex string or None into the regex string (or None).

    Raises ValueError for a regex that does not compile, naming the pattern and the regex error.
    """
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise TypeError("split pattern must be a name, a regex string or None, not "
                        f"{type(pattern).__name__}")
    pattern = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"split pattern {pattern!r} is not a valid regex: {e}") from None
    return pattern


def make_splitter(pattern: str | None) -> Callable[[str], list[str]]:
    """Return a function text -> list of chunks whose concatenation is exactly the text.

    ``findall`` runs at C speed; when its matches do not cover the text (only possible with a custom
    pattern), the slower path keeps the unmatched gaps as chunks instead of silently losing them.
    Empty matches are dropped.
    """
    if pattern is None:
        return lambda text: [text] if text else []
    compiled = regex.compile(pattern)
    findall, finditer = compiled.findall, compiled.finditer
    fast = compiled.groups == 0  # with capture groups, findall returns the groups, not the matches

    def split(text: str) -> list[str]:
        if fast:
            chunks = findall(text)
            if sum(map(len, chunks)) == len(text):
                return chunks if "" not in chunks else [c for c in chunks if c]
        chunks, end = [], 0
        for match in finditer(text):
            if match.start() > end:
                chunks.append(text[end : match.start()])
            if match.end() > match.start():
                chunks.append(match.group())
            end = match.end()
        if end < len(text):
            chunks.append(text[end:])
        return chunks

    return split
