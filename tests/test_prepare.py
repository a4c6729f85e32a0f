"""The data pipeline: each quality rule on a kept and a dropped document, MinHash near-dedup recall and
precision on edited copies, exact dedup, mixing, and `tinyllm data prepare` feeding `tinyllm pretrain`."""

import json
import re

import numpy as np
import pytest

from tinyllm.cli import main
from tinyllm.data import quality
from tinyllm.data.minhash import lsh_bands, near_duplicates, shingle_hashes, signatures
from tinyllm.data.prepare import PrepareConfig, Source, mix, read_documents, run_stages, split_documents
from tinyllm.data.quality import Document, QualityConfig, blocked_word, corpus_stop_words, failed_rule
from tinyllm.data.text import builtin_corpus

Q = QualityConfig(stop_words=quality.GOPHER_STOP_WORDS)
GOOD = ("The committee met on Tuesday to discuss the budget. Members agreed that the plan\n"
        "should be revised with care, and the chair asked for a report by Friday.")

# rule: (a document it must drop); GOOD must pass every rule
DROPPED = {
    "word_count": "Hello there.",
    "mean_word_length": "I a m o k a n d I g o t o b e d . I s e e t h e s e a .",
    "symbol_ratio": "#deal #sale #win and the #free #now to of #best #buy with #hot.",
    "alphabetic_words": "12 34 56 78 90 and the 11 22 33 44 55 66 of 77.",
    "end_punctuation": "Home\nAbout the company\nContact and support\nLogin to your account\nSearch with filters",
    "repeated_lines": "Buy now and save.\nBuy now and save.\nBuy now and save.\nThe offer of the day is good to have.",
    "top_ngram": "the best deal the best deal the best deal the best deal and that is all of it.",
    "duplicate_ngrams": ("We went to the market to buy fresh bread and then we went to the market to buy fresh "
                         "bread again because the first loaf was gone."),
    "stop_words": "Quick brown foxes jump over lazy dogs near rivers.",
}


@pytest.mark.parametrize("rule", sorted(DROPPED))
def test_each_quality_rule_keeps_a_good_document_and_drops_a_bad_one(rule):
    check = quality.RULES[rule]
    assert check(Document(GOOD), Q), f"{rule} dropped a good document"
    assert not check(Document(DROPPED[rule]), Q), f"{rule} kept {DROPPED[rule]!r}"


def test_failed_rule_names_the_first_failing_rule():
    assert failed_rule(GOOD, Q) is None
    assert failed_rule("Hello there.", Q) == "word_count"
    assert set(DROPPED) == set(quality.RULES)            # every rule has its test above


def test_long_words_and_top_ngrams_of_single_occurrence():
    assert not quality.mean_word_length(Document("Antidisestablishmentarianism notwithstanding "
                                                  "incomprehensibilities characterisation"), Q)
    assert quality.top_ngram(Document("one two three four five six seven"), Q)   # nothing repeated


def test_blocklist_and_corpus_stop_words():
    assert blocked_word("This is SPAM, really.", {"spam"}) == "spam"
    assert blocked_word(GOOD, {"spam"}) is None
    texts = ["le chat et le chien", "le pain et le vin", "un jour et le soir", "le matin"]
    assert corpus_stop_words(texts, 2) == ("le", "et")              # in 4 and 3 documents
    assert corpus_stop_words(texts[:3], 2) == ("et", "le")          # a tie: alphabetical


def test_documents_of_text_and_jsonl_files(tmp_path):
    assert split_documents("a b\nc\n\n\n  \nd e\n") == ["a b\nc", "d e"]
    (tmp_path / "x.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert read_documents(tmp_path / "x.jsonl") == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"body": "one"}\n')
    with pytest.raises(ValueError, match='bad.jsonl, line 1: expected an object with a "text" string'):
        read_documents(tmp_path / "bad.jsonl")


def test_exact_dedup_removes_every_copy_and_nothing_unique():
    unique = [f"Document number {i} talks about topic {i * 7} and nothing else at all." for i in range(50)]
    copies = [unique[i] for i in range(0, 50, 3)] + [unique[5].upper(), "  " + unique[8].replace(" ", "   ")]
    docs = [(0, t) for t in unique + copies]
    kept, report = run_stages([Source("x")], PrepareConfig(quality=None, near_dup_threshold=0), docs)
    assert [t for _, _, t in kept] == unique
    assert report.stages[-1]["stage"] == "exact dedup" and report.stages[-1]["removed"] == len(copies)


def _shingles(text, k=3):
    return set(shingle_hashes(text, k, {}).tolist())


def _jaccard(a, b):
    a, b = (_shingles(t) if isinstance(t, str) else t for t in (a, b))
    return len(a & b) / len(a | b)


def _near_copy_corpus(originals=200, copies=100, seed=0):
    """Distinct paragraphs of Python's docs (no two with Jaccard ≥ 0.5) and edited copies of some: one word
    replaced, or the first sentence moved to a later place. Returns (texts, indices of the copies)."""
    rng = np.random.default_rng(seed)
    pool = [p.strip() for p in re.split(r"\n\s*\n", builtin_corpus()) if 40 <= len(p.split()) <= 150]
    distinct, sets = [], []
    for p in pool:
        shingles = _shingles(p)
        if all(_jaccard(shingles, q) < 0.5 for q in sets):
            distinct.append(p)
            sets.append(shingles)
        if len(distinct) == originals:
            break
    edited = []
    for k, p in enumerate(distinct[:copies]):
        sentences = re.split(r"(?<=[.!?])\s+", p)
        if k % 2 == 0 or len(sentences) < 2:
            words = p.split()
            words[rng.integers(len(words))] = "banana"
            edited.append(" ".join(words))
        else:
            first = sentences.pop(0)
            sentences.insert(int(rng.integers(1, len(sentences) + 1)), first)
            edited.append(" ".join(sentences))
    texts = distinct + edited
    return texts, set(range(len(distinct), len(texts)))


def test_near_dedup_recall_and_precision_on_edited_copies():
    texts, copies = _near_copy_corpus()
    dropped, pairs = near_duplicates(texts)                # the defaults: Jaccard 0.7, 3-word shingles
    dropped = set(dropped)
    recall = len(dropped & copies) / len(copies)
    precision = len(dropped & copies) / max(len(dropped), 1)
    similarity = [_jaccard(texts[c], texts[c - 200]) for c in sorted(copies)]
    print(f"near dedup: recall {recall:.3f}, precision {precision:.3f} on {len(copies)} edited copies of "
          f"{len(texts) - len(copies)} distinct documents (copies' true Jaccard: min {min(similarity):.2f}, "
          f"median {np.median(similarity):.2f})")
    assert precision == 1.0                               # nothing unique removed
    assert recall >= 0.95
    assert all(kept == dropped_one - 200 for kept, dropped_one, _ in pairs)   # each copy matched its original


def test_minhash_estimates_jaccard_and_lsh_bands_fit_the_budget():
    a = " ".join(f"w{i}" for i in range(200))
    b = " ".join(f"w{i}" for i in range(50, 250))        # 3-shingles: 148 shared of 248
    sig = signatures([a, b], num_perm=256)
    assert abs(np.mean(sig[0] == sig[1]) - _jaccard(a, b)) < 0.08
    for threshold in (0.5, 0.7, 0.9):
        bands, rows = lsh_bands(threshold, 128)
        candidate = lambda j: 1 - (1 - j ** rows) ** bands      # noqa: E731
        assert bands * rows <= 128 and candidate(threshold) > 0.8 and candidate(threshold + 0.1) > 0.98


def test_mix_repeats_and_samples_sources_by_weight():
    docs = [(i, 0, f"a{i}") for i in range(10)] + [(10 + i, 1, f"b{i}") for i in range(10)]
    mixed = mix(docs, [Source("a", 2.0), Source("b", 0.5)], shuffle=False)
    assert mixed[:20] == [f"a{i}" for i in range(10)] * 2 and len(mixed) == 25
    assert set(mixed[20:]) <= {f"b{i}" for i in range(10)} and len(set(mixed[20:])) == 5
    assert sorted(mix(docs, [Source("a"), Source("b")], seed=1)) == sorted(t for _, _, t in docs)


def test_prepare_command_feeds_pretrain(tmp_path, capsys):
    paragraphs = [p for p in re.split(r"\n\s*\n", builtin_corpus()) if len(p.split()) >= 20][:300]
    (tmp_path / "a.txt").write_text("\n\n".join(paragraphs))
    (tmp_path / "b.txt").write_text("\n\n".join(paragraphs[:100]) + "\n\n<p>Some <b>markup</b> here</p>")
    out = tmp_path / "prepared"
    assert main(["data", "prepare", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(out),
                 "--tokenizer", "char"]) == 0
    printed = capsys.readouterr().out
    assert "exact dedup" in printed and "near dedup" in printed
    report = json.loads((out / "report.json").read_text())
    exact = next(s for s in report["stages"] if s["stage"] == "exact dedup")
    assert exact["removed_per_source"] == [exact["removed"] - 100, 100]   # b's copies of a's paragraphs
    assert (out / "shard-00000.txt").exists() and (out / "tokens.npy").exists()
    assert "<b>" not in (out / "shard-00000.txt").read_text()
    assert main(["pretrain", "--data", str(out), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                 "--context", "16", "--steps", "2", "--eval-interval", "2", "--eval-iters", "1",
                 "--sample-tokens", "0", "--out", str(tmp_path / "run")]) == 0
    assert "the prepared tokens of" in capsys.readouterr().out
    assert main(["data", "prepare", str(tmp_path / "a.txt"), "--out", str(out)]) == 2     # not empty: refused
