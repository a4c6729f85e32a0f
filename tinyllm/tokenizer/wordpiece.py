"""WordPiece: BERT's tokenizer. Words are cut into the longest vocabulary pieces, left to right.

Three steps turn text into ids (the same three as Hugging Face's ``BertTokenizerFast``):

1. Normalise (``normalize``): drop NUL, U+FFFD and control characters, turn every whitespace
   character into a space, put spaces around CJK ideographs (Chinese text has no spaces, so each
   character is a word), and for an *uncased* vocabulary strip accents (NFD, then drop the combining
   marks: "café" → "cafe") and lower-case.
2. Pre-tokenise (``pre_tokenize``): split on whitespace, and make every punctuation character a word
   of its own: "Hello, world!" → ["Hello", ",", "world", "!"].
3. WordPiece (``word_pieces``): greedy longest-match-first. Take the longest prefix of the word that
   is in the vocabulary, then the longest vocabulary piece of the rest *with the "##" continuation
   prefix*, and so on: "unaffable" → ["un", "##aff", "##able"]. A word with a remainder no piece
   matches, or longer than ``max_input_chars_per_word`` characters, becomes a single ``[UNK]``.

Five special tokens frame and fill BERT's inputs: ``[CLS]`` starts every sequence (its final hidden
state stands for the whole text), ``[SEP]`` ends each segment, ``[PAD]`` fills short rows,
``[MASK]`` hides the tokens masked-LM pretraining predicts, ``[UNK]`` stands for what the vocabulary
cannot spell. A pair of texts is ``[CLS] a [SEP] b [SEP]`` with token type ids 0 for the first part
and 1 for the second (``encode_pair``). The special tokens' strings are recognised in the text (as
Hugging Face does), so "Paris is the [MASK] of France." encodes the mask as ``[MASK]``'s id.

Decoding joins the tokens with spaces and glues each "##" piece to the token before it.

Files: ``vocab.txt`` (BERT's: one token per line, the line number is the id;
``load_vocab``/``save_vocab``) and tinyllm's JSON (``save``/``load``), which also records the
casing::

    {"format": "tinyllm-wordpiece", "version": 1, "lowercase": true, "strip_accents": null,
     "max_input_chars_per_word": 100, "vocab": ["[PAD]", "[UNK]", ...]}

Training a vocabulary is in ``wordpiece_train.py``.
"""

from __future__ import annotations

import json
import os
import unicodedata

import regex

from .serialize import check_format, read_tokenizer_json, write_text_atomically

FORMAT_NAME, FORMAT_VERSION = "tinyllm-wordpiece", 1
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
PREFIX = "##"                   # marks a piece that continues a word
# BERT's limit: a longer "word" is [UNK] rather than hundreds of pieces
MAX_INPUT_CHARS_PER_WORD = 100

# The whitespace of Unicode's White_Space property (Rust's char::is_whitespace,
# which HF tokenizers uses).
_WHITESPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | \
    {chr(c) for c in range(0x2000, 0x200B)}
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F),
               (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


# ------------------------------------------------------------------------------------ text → words

def is_cjk(char: str) -> bool:
    """A CJK Unified Ideograph (BERT's definition: Han characters,
    not Japanese kana or Korean hangul)."""
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def is_control(char: str) -> bool:
    """Unicode "other" characters (control, format, unassigned, private use),
    except tab/newline/CR."""
    return char not in "\t\n\r" and unicodedata.category(char)[0] == "C"


def is_punctuation(char: str) -> bool:
    """ASCII punctuation and symbols (``$``, ``+``, ``^``... count too)
    or any Unicode punctuation (P*)."""
    code = ord(char)
    return 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126 or \
        unicodedata.category(char).startswith("P")


def _normalized_char(char: str) -> str:
    """What the cleaning and CJK steps make of one character: nothing, a space, itself spaced,
    or itself."""
    if char in ("\0", "\ufffd") or is_control(char):
        return ""
    if char in _WHITESPACE:
        return " "
    return f" {char} " if is_cjk(char) else char


def normalize(text: str, lowercase: bool = True, strip_accents: bool | None = None) -> str:
    """BERT's normaliser: clean, space out CJK, strip accents (default:
    when lower-casing), lower-case.

    The first two steps look at one character at a time, so they are one ``str.translate`` with a
    table built for the distinct characters of the text (a few hundred, even in a large text)."""
    text = text.translate({ord(c): _normalized_char(c) for c in set(text)})
    if lowercase if strip_accents is None else strip_accents:
        text = "".join(
            c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"
        )
    # character by character, as Hugging Face does (str.lower() turns a word-final Σ into ς)
    if lowercase:
        text = text.translate({ord(c): c.lower() for c in set(text)})
    return text


# A punctuation character (ASCII punctuation and symbols, or Unicode P*),
# or a run of anything else but spaces.
_PUNCT = r"!-/:-@\[-`{-~\p{P}"
_WORD = regex.compile(rf"[{_PUNCT}]|[^ {_PUNCT}]+")


def pre_tokenize(text: str) -> list[str]:
    """Split normalised text on whitespace, each punctuation character becoming a word of its own
    (``is_punctuation``, as one regex)."""
    return _WORD.findall(text)


def word_pieces(word: str, vocab: dict[str, int],
                max_chars: int = MAX_INPUT_CHARS_PER_WORD) -> list[str] | None:
    """Greedy longest-match-first pieces of one word, or None when it cannot be spelled
    (→ one [UNK])."""
    if len(word) > max_chars:
        return None
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):             # the longest candidate first
            piece = word[start:end] if start == 0 else PREFIX + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return None
    return pieces


# ------------------------------------------------------------------------------------ the tokenizer

def check_vocab(tokens: list[str], where: str) -> dict[str, int]:
    """token → id,
    refusing an empty or duplicated token and a vocabulary without BERT's special tokens."""
    vocab = {}
    for i, token in enumerate(tokens):
        if not token or token != token.strip():
            raise ValueError(f"{where}: line {i + 1} holds {token!r}; every line must be one token "
                             "without spaces")
        if token in vocab:
            raise ValueError(f"{where}: token {token!r} appears twice (lines "
                             f"{vocab[token] + 1} and {i + 1})")
        vocab[token] = i
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{where}: the vocabulary lacks {', '.join(missing)}; a BERT "
                         "vocabulary needs all of "
                         f"{' '.join(SPECIAL_TOKENS)}")
    return vocab


class WordPieceTokenizer:
    """BERT's tokenizer for a vocabulary (a list of tokens: id = position).

    >>> tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "!"])
    >>> [tok.id_to_token(i) for i in tok.encode("Unaffable!")]
    ['un', '##aff', '##able', '!']
    """

    format_name = FORMAT_NAME

    def __init__(self, vocab, lowercase: bool = True, strip_accents: bool | None = None,
                 max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD,
                 where: str = "vocabulary"):
        self.tokens = list(vocab)
        self.vocab = check_vocab(self.tokens, where)
        self.lowercase, self.strip_accents = bool(lowercase), strip_accents
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.special_tokens = {t: self.vocab[t] for t in SPECIAL_TOKENS}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self.vocab[t] for t in SPECIAL_TOKENS
        )
        self._cache = {}                        # word → its pieces

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self.tokens):
            raise ValueError(f"token id {token_id} is not in this tokenizer (ids are "
                             f"0..{len(self.tokens) - 1})")
        return self.tokens[token_id]

    def tokenize(self, text: str, allowed_special="all") -> list[str]:
        """Text → token strings (no [CLS]/[SEP] added). ``allowed_special``: "all" (the special
        tokens' strings in the text are those tokens, as in Hugging Face), "none" (they are ordinary
        text) or "none_raise" (one in the text is an error)."""
        if not isinstance(text, str):
            raise TypeError(f"expected text as a str, got {type(text).__name__}")
        tokens = []
        for part, special in self._split_special(text, allowed_special):
            if special:
                tokens.append(part)
                continue
            for word in pre_tokenize(normalize(part, self.lowercase, self.strip_accents)):
                pieces = self._cache.get(word)
                if pieces is None:              # words repeat: each distinct one is split once
                    pieces = word_pieces(word, self.vocab, self.max_input_chars_per_word) or [UNK]
                    if len(self._cache) < 100_000:
                        self._cache[word] = pieces
                tokens.extend(pieces)
        return tokens

    def _split_special(self, text, allowed_special):
        """(part, is_special) pieces of the text, cut at the special tokens' strings."""
        if allowed_special not in ("all", "none", "none_raise"):
            raise ValueError("allowed_special must be 'all', 'none' or 'none_raise', got "
                             f"{allowed_special!r}")
        found = [t for t in SPECIAL_TOKENS if t in text]
        if found and allowed_special == "none_raise":
            raise ValueError(f"the text contains the special token {found[0]}; pass "
                             "allowed_special='all' to "
                             "encode it as one, or 'none' to encode it as ordinary text")
        if not found or allowed_special == "none":
            return [(text, False)]
        parts, start, i = [], 0, 0
        while i < len(text):
            token = next((t for t in found if text.startswith(t, i)), None)
            if token is None:
                i += 1
                continue
            parts += [(text[start:i], False), (token, True)]
            i = start = i + len(token)
        return parts + [(text[start:], False)]

    def encode(self, text: str, allowed_special="all") -> list[int]:
        """Text → ids, without [CLS]/[SEP] (``encode_pair`` adds them)."""
        return [self.vocab[t] for t in self.tokenize(text, allowed_special)]

    encode_ordinary = encode

    def encode_batch(self, texts, allowed_special="all") -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts, not one str; use encode() "
                            "for a single text")
        return [self.encode(text, allowed_special) for text in texts]

    def encode_pair(self, first: str, second: str | None = None, allowed_special="all"):
        """BERT's input for one text or a pair: (ids, token type ids) of ``[CLS] a [SEP]`` or
        ``[CLS] a [SEP] b [SEP]``, the types 0 up to the first [SEP] and 1 after it."""
        ids = [self.cls_id] + self.encode(first, allowed_special) + [self.sep_id]
        types = [0] * len(ids)
        if second is not None:
            tail = self.encode(second, allowed_special) + [self.sep_id]
            ids, types = ids + tail, types + [1] * len(tail)
        return ids, types

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Ids → text: tokens joined by spaces, each "##" piece glued to the one before it."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        tokens = [self.id_to_token(int(i)) for i in ids]
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self.special_tokens]
        return " ".join(tokens).replace(" " + PREFIX, "")

    # -------------------------------------------------------- files

    def save_vocab(self, path) -> None:
        """Write BERT's ``vocab.txt``: one token per line, in id order."""
        write_text_atomically(path, "".join(token + "\n" for token in self.tokens))

    @classmethod
    def from_vocab_file(cls, path, lowercase: bool = True,
                        strip_accents: bool | None = None) -> "WordPieceTokenizer":
        """Read BERT's ``vocab.txt``. The file does not say whether the vocabulary is cased: pass
        ``lowercase=False`` for a cased one (bert-base-cased)."""
        return cls(load_vocab(path), lowercase, strip_accents, where=str(path))

    def save(self, path) -> None:
        data = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "lowercase": self.lowercase,
                "strip_accents": self.strip_accents,
                "max_input_chars_per_word": self.max_input_chars_per_word}
        text = json.dumps(data, ensure_ascii=False)[:-1] + ',\n "vocab": [\n'
        tokens = ",\n".join(json.dumps(t, ensure_ascii=False) for t in self.tokens)   # one per line
        write_text_atomically(path, text + tokens + "\n]}\n")

    @classmethod
    def load(cls, path) -> "WordPieceTokenizer":
        data = read_tokenizer_json(path)
        check_format(data, path, FORMAT_NAME, FORMAT_VERSION)
        tokens = data.get("vocab")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"tokenizer file '{path}': \"vocab\" must be a list of token strings")
        return cls(tokens, data.get("lowercase", True), data.get("strip_accents"),
                   data.get("max_input_chars_per_word", MAX_INPUT_CHARS_PER_WORD), where=str(path))

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase})"


def load_vocab(path) -> list[str]:
    """The tokens of a ``vocab.txt`` (one per line; a trailing empty line is ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no vocab.txt at '{path}'")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"'{path}' is not UTF-8 text (byte {e.start})") from None
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]
