"""Byte-level BPE: the tokenizer of GPT-2, GPT-4 and most LLMs since.

Text becomes UTF-8 bytes, so any string can be encoded and nothing is ever "unknown". The 256 single
bytes are the first 256 tokens; every other token is the concatenation of two earlier tokens,
learned by merging the most frequent adjacent pair in the training text (see ``bpe_train.py``).

The core of a tokenizer is one table, ``ranks: dict[bytes, int]``, exactly what a ``.tiktoken`` file
holds: every token's bytes and its id. The id is also its *rank*, its age: a lower id was learned
earlier. Encoding one chunk of text (after the split pattern has cut the text into chunks) is then:

1. if the chunk's bytes are a token, that token is the answer;
2. otherwise start from one token per byte and, while some adjacent pair of tokens concatenates to a
   token, merge the pair whose result has the lowest rank (the leftmost such pair on a tie); see
   ``bpe_encode.py``.

This is tiktoken's rule, so ``to_tiktoken_ranks()`` makes tiktoken produce the same ids. For a
vocabulary learned by BPE it gives the same tokens as replaying the learned merges one by one (the
rule is a little more generous: a pair may merge whenever its concatenation is a token, even if
training made that token from a different split; on the test corpora that never changes a token).

Ids: single bytes are 0..255 (in byte order after training; imported vocabularies such as GPT-2's
and cl100k's use another order, which ``byte_order`` records), merged tokens follow in the order
they were learned, and special tokens (strings like "<|endoftext|>" that encode to one id and never
come out of ordinary text) get the ids after that.
"""

from __future__ import annotations

import numbers
import os
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import chain

from . import bpe_vocab
from .bpe_encode import apply_merges, pair_ranks_of
from .bpe_train import count_chunks, learn_merges, progress_printer
from .patterns import PATTERNS, make_splitter, resolve_pattern


class BPETokenizer:
    """A byte-level BPE tokenizer: ``train`` one, or load one, then ``encode`` and ``decode``.

    >>> tok = BPETokenizer.train(text, vocab_size=1024, special_tokens=["<|endoftext|>"])
    >>> ids = tok.encode("hello world<|endoftext|>", allowed_special="all")
    >>> tok.decode(ids)
    'hello world<|endoftext|>'

    ``BPETokenizer(ranks, pattern, special_tokens)`` builds one from a tiktoken-style table
    ``{token bytes: id}``: the 256 single bytes must have ids 0..255 (in any order) and the ids must
    be 0..len(ranks)-1. ``special_tokens`` maps strings to ids from len(ranks) on. ``merges``, if
    known, are the merges that made ``ranks`` (otherwise they are recovered when asked for).
    """

    format_name = bpe_vocab.FORMAT_NAME
    cache_size = 1 << 18  # the chunk -> ids cache is emptied when a call finds it this full
    max_cached_chunk = 1000  # longer chunks (in characters) are not cached

    def __init__(
        self,
        ranks: dict[bytes, int],
        pattern: str | None = "gpt4",
        special_tokens: dict[str, int] | None = None,
        merges: list[tuple[int, int]] | None = None,
    ):
        self._pattern = resolve_pattern(pattern)
        self._split = make_splitter(self._pattern)
        self._ranks = dict(ranks)
        self._decoder = {rank: token for token, rank in self._ranks.items()}
        bpe_vocab.check_ranks(self._ranks, self._decoder)
        self._byte_ids = [self._ranks[bytes((b,))] for b in range(256)]
        self._bytes_are_ids = self._byte_ids == list(range(256))
        self._pair_ranks = pair_ranks_of(self._ranks)
        self._merges = merges
        self._special_tokens = bpe_vocab.check_special_tokens(special_tokens or {},
                                                              len(self._ranks))
        for text, token_id in self._special_tokens.items():
            self._decoder[token_id] = text.encode("utf-8")
        self._vocab_size = max(self._decoder) + 1
        self._special_splitters: dict = {}
        self._cache: dict[str, list[int]] = {}  # chunk -> ids

    # ----------------------------------------------------------------------------------- training

    @classmethod
    def train(
        cls,
        text_or_iterable: str | Iterable[str],
        vocab_size: int,
        pattern: str | None = "gpt4",
        special_tokens: Iterable[str] = (),
        verbose: bool = False,
        progress: Callable[[int, bytes, int], None] | None = None,
    ) -> BPETokenizer:
        """Learn a tokenizer of ``vocab_size`` tokens
        (256 bytes + merges + special tokens) from text.

        ``text_or_iterable`` is one string or an iterable of strings (documents; no merge crosses
        from one to the next). ``pattern`` is "gpt4" (default), "gpt2", a regex string or None (see
        ``patterns.py``). Special tokens get the last ids, in the order given. If the text runs out
        of pairs to merge, the tokenizer is smaller than asked (``vocab_size`` tells). Ties between
        equally frequent pairs go to the smallest ``(id, id)`` pair, so training is deterministic.

        ``verbose=True`` shows progress on stderr;
        ``progress(merges_done, new_token_bytes, count)``, if given, is called after every merge
        instead.
        """
        special_tokens = bpe_vocab.check_special_list(special_tokens)
        if not isinstance(vocab_size, numbers.Integral):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(
                f"vocab_size {vocab_size} is too small: it must be at least 256 (the single bytes) "
                f"+ {len(special_tokens)} (special tokens) = {256 + len(special_tokens)}"
            )
        split = make_splitter(resolve_pattern(pattern))
        texts = [text_or_iterable] if isinstance(text_or_iterable, str) else text_or_iterable
        chunk_counts: Counter = Counter()
        for chunk, count in count_chunks((_checked_text(text) for text in texts), split).items():
            try:
                chunk_counts[chunk.encode("utf-8")] += count
            except UnicodeEncodeError:
                chunk_counts[_replace_surrogates(chunk).encode("utf-8")] += count

        num_merges = int(vocab_size) - 256 - len(special_tokens)
        if verbose and progress is None:
            progress = progress_printer(num_merges)
        on_merge = None
        if progress is not None:
            vocab = [bytes((b,)) for b in range(256)]

            def on_merge(new_id, pair, count):
                vocab.append(vocab[pair[0]] + vocab[pair[1]])
                progress(new_id - 255, vocab[new_id], count)

        merges = learn_merges(chunk_counts, num_merges, on_merge)
        return cls.from_merges(merges, pattern=pattern, special_tokens=special_tokens)

    @classmethod
    def from_merges(
        cls,
        merges: list[tuple[int, int]],
        pattern: str | None = "gpt4",
        special_tokens: Iterable[str] | dict[str, int] = (),
        byte_order: list[int] | None = None,
    ) -> BPETokenizer:
        """Build a tokenizer from merges: merge ``i`` joins two earlier ids into id ``256 + i``.

        ``byte_order[i]`` is the byte whose id is ``i`` (default: byte ``i``). Special tokens given
        as a list get the ids after the merges; a dict gives their ids explicitly.
        """
        ranks = bpe_vocab.ranks_from_merges(merges, byte_order)
        if not isinstance(special_tokens, dict):
            first = len(ranks)
            special_tokens = {text: first + i for i,
                              text in enumerate(bpe_vocab.check_special_list(special_tokens))}
        return cls(ranks, pattern, special_tokens, merges=[tuple(pair) for pair in merges])

    # --------------------------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        """One more than the largest id: the number of rows an embedding table needs."""
        return self._vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> id (a copy)."""
        return dict(self._special_tokens)

    @property
    def pattern(self) -> str | None:
        """The split regex (a string), or None when the text is not split before BPE."""
        return self._pattern

    @property
    def byte_order(self) -> list[int]:
        """``byte_order[i]`` is the byte whose token id is ``i``, for ``i`` in 0..255."""
        order = [0] * 256
        for byte, token_id in enumerate(self._byte_ids):
            order[token_id] = byte
        return order

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The merges in the order learned: merge ``i`` joined two ids into id ``256 + i``.

        Known from training; for a tokenizer built from ranks alone (a ``.tiktoken`` file) they are
        recovered once, on first use, by running BPE on each token's bytes with the lower ranks
        only.
        """
        if self._merges is None:
            self._merges = bpe_vocab.recover_merges(self._ranks, self._decoder, self._pair_ranks)
        return list(self._merges)

    def token_to_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's are its UTF-8 text)."""
        try:
            return self._decoder[token_id]
        except (KeyError, TypeError):
            raise self._bad_id(token_id) from None

    def __repr__(self) -> str:
        pattern = next((name for name, p in PATTERNS.items() if p == self._pattern), self._pattern)
        return (f"BPETokenizer(vocab_size={self.vocab_size}, pattern={pattern!r}, "
                f"special_tokens={self._special_tokens})")

    # ----------------------------------------------------------------------------------- encoding

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token strings in it as ordinary text."""
        _checked_text(text)
        try:
            return self._encode_ordinary(text)
        except UnicodeEncodeError:
            return self._encode_ordinary(_replace_surrogates(text))

    def clear_cache(self) -> None:
        """Forget the cached ids of every chunk (for timing a cold encode;
        never needed otherwise)."""
        self._cache.clear()

    def _encode_ordinary(self, text: str) -> list[int]:
        cache = self._cache
        if len(cache) >= self.cache_size:
            cache.clear()
        chunks = self._split(text)
        missing = set(chunks).difference(cache)
        for chunk in missing:
            cache[chunk] = self._encode_chunk(chunk)
        ids = list(chain.from_iterable(map(cache.__getitem__, chunks)))
        for chunk in missing:
            if len(chunk) > self.max_cached_chunk:
                del cache[chunk]  # e.g. a whole text under pattern None: do not keep it alive
        return ids

    def _encode_chunk(self, chunk: str) -> list[int]:
        """BPE on one chunk (uncached): the whole chunk if it is a token,
        else merge byte by byte."""
        piece = chunk.encode("utf-8")
        rank = self._ranks.get(piece)
        if rank is not None:
            return [rank]
        ids = list(piece) if self._bytes_are_ids else [self._byte_ids[b] for b in piece]
        return apply_merges(ids, self._pair_ranks)

    def encode(self, text: str, allowed_special="none_raise") -> list[int]:
        """Encode text to token ids.

        ``allowed_special`` says what happens to special-token strings found in the text:

        - ``"none_raise"`` (default): ValueError if the text contains one. Text from users or the
          web should not be able to inject an "<|endoftext|>".
        - ``"none"``: encode them as ordinary text (same as :meth:`encode_ordinary`).
        - ``"all"``: each one becomes its special id.
        - a set of strings: those become special ids; any other special token in the text raises.
        """
        _checked_text(text)
        allowed = self._allowed_special_set(allowed_special)
        if allowed_special != "none":
            for special in self._special_tokens.keys() - allowed:
                if special in text:
                    raise ValueError(
                        f"the text contains the special token {special!r}, which is not allowed "
                        f"here; pass allowed_special={{{special!r}}} or 'all' to encode it as id "
                        f"{self._special_tokens[special]}, or 'none' / encode_ordinary() to encode "
                        "it as plain text"
                    )
        if not allowed:
            return self.encode_ordinary(text)
        splitter = self._special_splitters.get(allowed)
        if splitter is None:
            splitter = self._special_splitters[allowed] = bpe_vocab.special_splitter(allowed)
        ids: list[int] = []
        # re.split with one capture group alternates: ordinary text, special, ordinary text, ...
        for i, part in enumerate(splitter(text)):
            if i % 2:
                ids.append(self._special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_batch(self, texts: Iterable[str], allowed_special="none_raise") -> list[list[int]]:
        """Encode each text of a list (see :meth:`encode`)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts, not one str; use encode() "
                            "for a single text")
        return [self.encode(text, allowed_special) for text in texts]

    def _allowed_special_set(self, allowed_special) -> frozenset:
        if allowed_special in ("none_raise", "none"):
            return frozenset()
        if allowed_special == "all":
            return frozenset(self._special_tokens)
        if isinstance(allowed_special, str):
            raise ValueError(
                f"allowed_special={allowed_special!r}: expected 'none_raise', 'none', 'all' or a "
                "set of special tokens"
            )
        allowed = frozenset(allowed_special)
        unknown = sorted(allowed - self._special_tokens.keys())
        if unknown:
            raise ValueError(f"allowed_special names {unknown[0]!r}, which is not a special token "
                             "of this tokenizer")
        return allowed

    # ----------------------------------------------------------------------------------- decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes that ``ids`` stand for (accepts a list, a tuple or a NumPy array)."""
        if hasattr(ids, "tolist"):  # NumPy: plain ints look up faster than NumPy scalars
            ids = ids.tolist()
        elif not isinstance(ids, (list, tuple)):
            ids = list(ids)
        try:
            return b"".join(map(self._decoder.__getitem__, ids))
        except (KeyError, TypeError):
            for token_id in ids:
                self.token_to_bytes(token_id)  # raises for the first bad id
            raise

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text. Bytes that are not valid UTF-8 (a multi-byte character cut off by the
        end of the list) become U+FFFD, the replacement character "�"."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _bad_id(self, token_id) -> Exception:
        if not isinstance(token_id, numbers.Integral):
            return TypeError(f"token ids must be ints, got {token_id!r} of type "
                             f"{type(token_id).__name__}")
        return ValueError(f"token id {token_id} is not in this tokenizer (ids are "
                          f"0..{self.vocab_size - 1})")

    # ------------------------------------------------------------------------------- files, interop

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as readable JSON (format described in ``bpe_vocab.py``)."""
        bpe_vocab.save_json(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a file written by :meth:`save`; a malformed file raises ValueError naming it."""
        return bpe_vocab.load_json(cls, path)

    def to_tiktoken_ranks(self) -> dict[bytes, int]:
        """``{token bytes: id}`` for ``tiktoken.Encoding(name, pat_str=tok.pattern,
        mergeable_ranks=tok.to_tiktoken_ranks(), special_tokens=tok.special_tokens)``, which then
        encodes exactly as this tokenizer does."""
        return dict(self._ranks)

    @classmethod
    def from_tiktoken_file(
        cls, path: str | os.PathLike, pattern: str | None,
        special_tokens: dict[str, int] | None = None
    ) -> BPETokenizer:
        """Load a ``.tiktoken`` file (one ``base64(token) id`` per line), e.g. cl100k_base.tiktoken
        with ``pattern="gpt4"`` and ``special_tokens={"<|endoftext|>": 100257}``."""
        ranks = bpe_vocab.read_tiktoken_file(path)
        try:
            return cls(ranks, pattern, special_tokens)
        except ValueError as e:
            raise ValueError(f"'{path}': {e}") from None

    def save_tiktoken_file(self, path: str | os.PathLike) -> None:
        """Write the ranks as a ``.tiktoken`` file (special tokens are not part of that format)."""
        bpe_vocab.write_tiktoken_file(self._ranks, path)


def _checked_text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected text as a str, got {type(text).__name__}")
    return text


def _replace_surrogates(text: str) -> str:
    """Lone surrogates (not valid Unicode, so not encodable as UTF-8) become U+FFFD,
    as in tiktoken."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
