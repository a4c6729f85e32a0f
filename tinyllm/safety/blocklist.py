"""Blocklists: words and phrases found in text, and an output filter that masks or blocks them as
the text streams out.

A blocklist file is UTF-8 text, one term per line; blank lines and lines starting with "#" are
skipped::

    # words that must not reach the user
    darn
    heck off

Matching is case-insensitive and by whole words: a term matches only where no letter, digit or
underscore touches it on either side, so "ass" is not found in "class" (a plain substring filter
would have the "Scunthorpe problem"). A space inside a term matches any one whitespace character.
What a word list cannot
do: it misses misspellings ("d4rn"), words split by punctuation ("d.a.r.n"), other languages and
every harmful meaning said in clean words, and it flags harmless uses ("kill the process"). It is a
last line of defence, not a classifier.

Streaming. A model's text arrives in pieces, and a term can be split across two of them ("he" + "ck
off"). ``FilterStream`` therefore holds back the last ``longest`` characters it was given (the
longest term's length): a match that begins before that tail is complete, and so is the character
after it that decides whether it is a whole word, so everything before the tail can be released for
good. What it holds is bounded by the longest term (at most ``MAX_TERM_CHARS``) plus one piece. Two
modes:

    mask    each match is replaced by asterisks of its length; the text goes on
    block   the text ends just before the first match (``blocked`` names the term); the caller stops
            generating and tells the user, e.g. the server's finish_reason "content_filter"
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

MAX_FILE_BYTES = 1 << 20          # a blocklist bigger than this is refused, not read
MAX_TERMS = 10_000
MAX_TERM_CHARS = 100              # also bounds what a FilterStream holds back
MODES = ("mask", "block")


class Blocklist:
    """A set of terms and the one regular expression that finds them (longest alternatives
    first)."""

    def __init__(self, terms, source: str = "blocklist"):
        self.terms = sorted({" ".join(t.split()).lower() for t in terms if t.strip()},
                            key=lambda t: (-len(t), t))
        if not self.terms:
            raise ValueError(f"{source} has no terms (only blank lines and # comments); a filter "
                             "needs at least one")
        if len(self.terms) > MAX_TERMS:
            raise ValueError(f"{source} has {len(self.terms):,} terms; at most {MAX_TERMS:,} are "
                             "allowed")
        too_long = next((t for t in self.terms if len(t) > MAX_TERM_CHARS), None)
        if too_long is not None:
            raise ValueError(f"{source}: the term {too_long[:40]!r}... is {len(too_long)} "
                             f"characters; at most {MAX_TERM_CHARS} are allowed")
        self.source, self.longest = source, len(self.terms[0])
        alternatives = "|".join(r"\s".join(map(re.escape, t.split(" "))) for t in self.terms)
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def __len__(self) -> int:
        return len(self.terms)

    def find(self, text: str) -> list[str]:
        """Every match in ``text``, as written there, in order."""
        return [m.group() for m in self.pattern.finditer(text)]

    def mask(self, text: str) -> str:
        return self.pattern.sub(lambda m: "*" * len(m.group()), text)


def load_blocklist(path) -> Blocklist:
    """A blocklist from a file (see the module docstring); a missing, oversized, binary or empty
    file is a clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no blocklist file at '{path}'" if not path.exists() else
                                f"the blocklist '{path}' is a directory, not a file")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"the blocklist '{path}' has {size:,} bytes; at most {MAX_FILE_BYTES:,} "
                         "are read")
    return Blocklist(_terms(path.read_bytes(), f"the blocklist '{path}'"),
                     f"the blocklist '{path}'")


def builtin_wordlist() -> Blocklist:
    """The small word list shipped with tinyllm for counting toxic words
    (``safety/toxic_words.txt``)."""
    data = resources.files(__package__).joinpath("toxic_words.txt").read_bytes()
    return Blocklist(_terms(data, "the built-in word list"), "the built-in word list")


def _terms(data: bytes, source: str) -> list[str]:
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"{source} looks binary (a NUL byte at offset {nul}); a blocklist is "
                         "UTF-8 text with one term per line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{source} is not UTF-8 text (byte {e.start}: {e.reason}); a blocklist is "
                         "UTF-8 text with one term per line") from None
    return [line
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class FilterStream:
    """Text in pieces → the same text with blocked terms masked, or cut at the first one (``mode``).

    ``feed(piece)`` returns what can be released now; ``finish()`` the rest. After a block,
    ``blocked`` holds the term found and everything fed later is dropped."""

    def __init__(self, blocklist: Blocklist, mode: str = "mask"):
        if mode not in MODES:
            raise ValueError(f"unknown filter mode {mode!r}; choose one of {MODES}")
        self.blocklist, self.mode = blocklist, mode
        self.pending = ""           # given, not yet released
        # the last released character: decides whether a match at pending's start
        self.before = ""
        self.blocked = None         # is a whole word
        self.masked = 0             # matches masked so far

    def feed(self, piece: str) -> str:
        if self.blocked is not None:
            return ""
        self.pending += piece
        return self._release(final=False)

    def finish(self) -> str:
        return "" if self.blocked is not None else self._release(final=True)

    def _release(self, final: bool) -> str:
        text, start = self.before + self.pending, len(self.before)
        # matches starting before it
        decided = len(text) if final else len(text) - self.blocklist.longest
        out, at = [], start
        for match in self.blocklist.pattern.finditer(text, start):
            if match.start() >= decided:
                break
            out.append(text[at:match.start()])
            if self.mode == "block":
                self.blocked, self.pending = match.group(), ""
                return "".join(out)
            out.append("*" * len(match.group()))
            at, self.masked = match.end(), self.masked + 1
        end = max(at, decided)
        out.append(text[at:end])
        if end > start:
            self.before, self.pending = text[end - 1], text[end:]
        return "".join(out)

    def filter_all(self, text: str) -> str:
        """A whole text at once (``feed`` then ``finish``)."""
        return self.feed(text) + self.finish()
