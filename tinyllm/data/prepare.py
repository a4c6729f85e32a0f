"""The data pipeline before tokenization: raw files in, a cleaned, deduplicated, filtered,
mixed corpus out.

    sources ──read──► documents ──clean──► exact dedup ──quality──► blocklist ──near dedup──► mix ──► shards
                                                                                                   └─► tokens

What a document is:
    .jsonl           each record's "text" field (one JSON object per line)
    other files      blocks of lines separated by blank lines (paragraphs; in a play, one speech); a file of
                     HTML (.html/.htm) is one document, since its blank lines do not separate
                     anything
    directories      every .txt, .md, .jsonl, .html and .htm file under them, in sorted order
    dataset names    fetched first (``tinyllm.data.datasets``)

The stages, cheapest first, each counted in the report:
    clean        ``clean_text``: HTML/markup stripping, Unicode normalisation (NFC by default, NFKC folds
                 compatibility characters too), control characters; documents left empty are dropped
    exact        the first of documents whose normalised text (NFKC, case-folded, whitespace collapsed) has
                 the same SHA-1 is kept, across all sources
    quality      the Gopher/C4-style rules of ``tinyllm.data.quality``
    blocklist    documents containing a word from the blocklist (if one is given)
    near         MinHash + LSH near-duplicates (``tinyllm.data.minhash``) of an earlier kept document
    mix          each source repeated by its weight: 2 = twice, 0.5 = a random half of its documents; then
                 the documents are shuffled together (unless ``shuffle=False``)
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import unicodedata
from pathlib import Path

import numpy as np

from ..files import atomic_write, atomic_write_with, read_records, read_utf8
from .minhash import near_duplicates
from .quality import QualityConfig, blocked_word, corpus_stop_words, failed_rule
from .text import clean_text

END_OF_TEXT, TOKEN_FILE = "<|endoftext|>", "tokens.npy"
TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".html", ".htm")


@dataclasses.dataclass
class PrepareConfig:
    normalize: str | None = "NFC"
    strip_html: bool = True
    exact_dedup: bool = True
    # Jaccard similarity of word shingles; 0 switches near dedup off
    near_dup_threshold: float = 0.7
    shingle: int = 3                     # words per shingle (documents are paragraphs: short)
    num_perm: int = 128                  # MinHash signature length
    # None: no filtering
    quality: QualityConfig | None = dataclasses.field(default_factory=QualityConfig)
    blocklist: frozenset = frozenset()
    shuffle: bool = True
    seed: int = 0


@dataclasses.dataclass
class Source:
    path: str
    weight: float = 1.0


def split_documents(text: str) -> list[str]:
    """Blank-line separated blocks of ``text``, stripped; empty ones dropped."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return [b.strip() for b in blocks]


def read_documents(path) -> list[str]:
    """The documents of a file or directory (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
        )
        if not files:
            raise ValueError(f"'{path}' holds no {', '.join(TEXT_SUFFIXES)} files")
        return [doc for file in files for doc in read_documents(file)]
    if path.suffix.lower() == ".jsonl":
        return read_records(path, _text_of, "text")
    if not path.is_file():
        raise FileNotFoundError(f"no file or directory at '{path}'")
    text = read_utf8(path, "text")
    return [text] if path.suffix.lower() in (".html", ".htm") else split_documents(text)


def _text_of(record, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f"{where}: expected an object with a \"text\" string")
    return record["text"]


def dedup_key(text: str) -> str:
    """What two exact duplicates share: the SHA-1 of the NFKC, case-folded,
    whitespace-collapsed text."""
    normal = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha1(normal.encode("utf-8")).hexdigest()


class Report:
    """What each stage removed (documents, characters, per source)
    and how often each quality rule failed."""

    def __init__(self, sources):
        self.names = [s.path for s in sources]
        self.read: dict = {}                   # documents and characters read, per source
        self.stages, self.rules, self.stop_words = [], {}, None

    def record(self, stage: str, before: list, kept: list, seconds: float) -> None:
        kept_ids = {doc_id for doc_id, _, _ in kept}
        removed = [(src, text) for doc_id, src, text in before if doc_id not in kept_ids]
        self.stages.append({"stage": stage, "documents_in": len(before), "removed": len(removed),
                            "characters_removed": sum(len(t) for _, t in removed),
                            "removed_per_source": [
                                sum(src == k for src, _ in removed) for k in range(len(self.names))
                            ],
                            "seconds": round(seconds, 3)})


def run_stages(sources: list[Source], config: PrepareConfig, documents=None):
    """(kept documents as (id, source index, text), Report): cleaning, dedup and filtering of the
    sources' documents (or of ``documents``, (source index, text) pairs, when given)."""
    if documents is None:
        documents = [(k, doc) for k, s in enumerate(sources) for doc in read_documents(s.path)]
    current = [(doc_id, src, text) for doc_id, (src, text) in enumerate(documents)]
    report = Report(sources)
    report.read = {"documents": len(current), "characters": sum(len(t) for _, _, t in current),
                   "per_source": [
                       sum(src == k for _, src, _ in current) for k in range(len(sources))
                   ]}

    def stage(name, keep):
        nonlocal current
        t0 = time.perf_counter()
        kept = keep(current)
        report.record(name, current, kept, time.perf_counter() - t0)
        current = kept

    stage("clean", lambda docs: [d for d in ((i, src,
                                              clean_text(t, config.strip_html,
                                                         config.normalize).strip())
                                             for i, src, t in docs) if d[2]])
    if config.exact_dedup:
        stage("exact dedup", _exact_dedup)
    if config.quality is not None:
        stage("quality", lambda docs: _quality(docs, config.quality, report))
    if config.blocklist:
        stage("blocklist", lambda docs: [d for d in docs if blocked_word(d[2],
                                                                         config.blocklist) is None])
    if config.near_dup_threshold:
        stage("near dedup", lambda docs: _near_dedup(docs, config))
    return current, report


def _exact_dedup(docs):
    seen, kept = set(), []
    for doc in docs:
        key = dedup_key(doc[2])
        if key not in seen:
            seen.add(key)
            kept.append(doc)
    return kept


def _quality(docs, q, report):
    if q.stop_words is None and q.min_stop_words:
        q = dataclasses.replace(q, stop_words=corpus_stop_words(text for _, _, text in docs))
    report.stop_words = q.stop_words
    rule_counts, kept = report.rules, []
    for doc in docs:
        rule = failed_rule(doc[2], q)
        if rule is None:
            kept.append(doc)
        else:
            rule_counts[rule] = rule_counts.get(rule, 0) + 1
    return kept


def _near_dedup(docs, config):
    dropped, _ = near_duplicates([t for _, _, t in docs], config.near_dup_threshold,
                                 config.num_perm, config.shingle, config.seed)
    dropped = set(dropped)
    return [d for k, d in enumerate(docs) if k not in dropped]


def mix(docs, sources: list[Source], shuffle: bool = True, seed: int = 0) -> list[str]:
    """Each source's documents repeated ``weight`` times (a fractional part: a random subset of that
    share), in source order, or shuffled together."""
    rng = np.random.default_rng(seed)
    mixed = []
    for k, source in enumerate(sources):
        own = [text for _, src, text in docs if src == k]
        whole, part = divmod(source.weight, 1.0)
        mixed += own * int(whole)
        if part:
            chosen = np.sort(rng.choice(len(own), size=int(round(part * len(own))), replace=False))
            mixed += [own[j] for j in chosen]
    if shuffle:
        mixed = [mixed[j] for j in rng.permutation(len(mixed))]
    return mixed


def write_shards(out: Path, documents: list[str], shard_chars: int) -> list[Path]:
    """``out/shard-00000.txt``, ...: the documents separated by blank lines, each shard at most
    about ``shard_chars`` characters (a document is never split). ``pretrain --data OUT`` reads them
    in order."""
    out.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], [], 0
    for doc in documents + [None]:
        if current and (doc is None or size + len(doc) > shard_chars):
            path = out / f"shard-{len(shards):05d}.txt"
            atomic_write(path, "\n\n".join(current) + "\n")
            shards.append(path)
            current, size = [], 0
        if doc is not None:
            current.append(doc)
            size += len(doc) + 2
    return shards


def write_tokens(out: Path, documents: list[str], tokenizer) -> np.ndarray:
    """``out/tokens.npy`` (the documents' ids, an end-of-text token between documents when the
    tokenizer has one, else a blank line) and ``out/tokenizer.json``: a corpus
    ``pretrain --data OUT`` trains on as it is."""
    from .tokens import tokenize
    separator = END_OF_TEXT if END_OF_TEXT in getattr(tokenizer, "special_tokens", {}) else "\n\n"
    ids = tokenize(separator.join(documents), tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out / "tokenizer.json")
    atomic_write_with(out / TOKEN_FILE, lambda f: np.save(f, ids, allow_pickle=False))
    return ids


def prepared_tokens(path):
    """(ids, tokenizer) of a directory written by ``write_tokens``, or None for any other path."""
    path = Path(path)
    if not (path.is_dir() and (path / TOKEN_FILE).is_file()):
        return None
    from ..tokenizer import load_tokenizer
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"'{path}' has {TOKEN_FILE} but no tokenizer.json to decode its "
                                "ids")
    return np.load(path / TOKEN_FILE, allow_pickle=False), load_tokenizer(path / "tokenizer.json")
