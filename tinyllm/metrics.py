"""Task metrics: classification scores, perplexity, BLEU, ROUGE-L and exact match, in plain Python.

Every function takes parallel sequences (one prediction per example) and raises ValueError, naming
both lengths, when they disagree or are empty: a silently truncated ``zip`` is the classic way to
report a score computed on half the data.

Classification (labels and predictions may be any hashable values: ints, strings)
    accuracy              fraction of predictions equal to their label
    confusion_matrix      counts[i, j] = examples of class i predicted as class j
    precision_recall_f1   for one positive class ("binary") or averaged over classes ("macro")

Language modelling
    perplexity            exp(mean negative log-likelihood per token, in nats)

Generation (texts are split into words and punctuation by ``tokenize`` unless you pass your own)
    corpus_bleu           Papineni et al. (2002), corpus level, up to 4-grams
    rouge_l               longest-common-subsequence precision, recall and F-measure
    exact_match           fraction of predictions equal to their reference after light normalisation
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Hashable, NamedTuple, Sequence

import numpy as np
import regex

__all__ = [
    "accuracy",
    "confusion_matrix",
    "precision_recall_f1",
    "f1_score",
    "PrecisionRecallF1",
    "perplexity",
    "tokenize",
    "corpus_bleu",
    "bleu_report",
    "rouge_l",
    "mean_rouge_l",
    "normalize_answer",
    "exact_match",
]


def _check_parallel(first: Sequence, second: Sequence, names: tuple[str, str]) -> None:
    if len(first) != len(second):
        raise ValueError(f"{names[0]} has {len(first)} items but {names[1]} has {len(second)}; "
                         "they must pair up one to one")
    if len(first) == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty; a score needs at least one example")


# ------------------------------------------------------------------------------- classification


def accuracy(labels: Sequence[Hashable], preds: Sequence[Hashable]) -> float:
    """Fraction of examples whose prediction equals the label."""
    _check_parallel(labels, preds, ("labels", "preds"))
    return sum(label == pred for label, pred in zip(labels, preds)) / len(labels)


def _sorted_classes(values: set) -> list:
    """Sorted, or sorted by repr when the values do not compare (e.g. a mix of ints and strings)."""
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=repr)


def confusion_matrix(labels: Sequence[Hashable], preds: Sequence[Hashable],
                     classes: Sequence[Hashable] | None = None) -> np.ndarray:
    """Counts ``(K, K)``: row i is the true class ``classes[i]``,
    column j the predicted class ``classes[j]``.

    ``classes`` fixes the order (and lets a class that never occurs have its row); by default it is
    the sorted set of values seen in ``labels`` and ``preds``. The diagonal holds the correct
    predictions.
    """
    _check_parallel(labels, preds, ("labels", "preds"))
    if classes is None:
        classes = _sorted_classes(set(labels) | set(preds))
    index = {c: i for i, c in enumerate(classes)}
    if len(index) != len(classes):
        raise ValueError(f"classes has repeated values: {list(classes)}")
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for position, (label, pred) in enumerate(zip(labels, preds)):
        for value, role in ((label, "label"), (pred, "prediction")):
            if value not in index:
                raise ValueError(f"{role} {value!r} at position {position} is not one of the "
                                 f"classes {list(classes)}")
        counts[index[label], index[pred]] += 1
    return counts


class PrecisionRecallF1(NamedTuple):
    precision: float
    recall: float
    f1: float


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, and 0.0 for 0/0
    (e.g. precision when nothing was predicted positive)."""
    return numerator / denominator if denominator else 0.0


def precision_recall_f1(
    labels: Sequence[Hashable],
    preds: Sequence[Hashable],
    *,
    positive: Hashable = 1,
    average: str = "binary",
    classes: Sequence[Hashable] | None = None,
) -> PrecisionRecallF1:
    """Precision, recall and F1 = 2PR / (P + R).

    ``average="binary"``: for the class ``positive``. With TP, FP, FN counted for that class,
    precision = TP / (TP + FP) (how many of the predicted positives are right) and
    recall = TP / (TP + FN) (how many of the real positives were found).

    ``average="macro"``: compute the three per class (each class in turn the positive one) over
    ``classes`` (default: every value seen) and take plain means, so rare classes count as much as
    common ones. Macro F1 is the mean of the per-class F1s (not the F1 of the mean P and R).

    A ratio whose denominator is 0 (no positive predictions, no positive labels) counts as 0.0.
    """
    _check_parallel(labels, preds, ("labels", "preds"))
    matrix_classes = _sorted_classes(set(labels) | set(preds)) if classes is None else list(classes)
    if average == "binary" and positive not in matrix_classes:
        raise ValueError(
            f"positive class {positive!r} occurs in neither labels nor preds (classes seen: "
            f"{matrix_classes}); pass positive= to name the positive class"
        )
    counts = confusion_matrix(labels, preds, matrix_classes)
    true_positives = np.diag(counts)
    predicted = counts.sum(axis=0)  # column sums: how often each class was predicted
    actual = counts.sum(axis=1)  # row sums: how often each class is the label

    def scores(i: int) -> tuple[float, float, float]:
        precision = _ratio(true_positives[i], predicted[i])
        recall = _ratio(true_positives[i], actual[i])
        return precision, recall, _ratio(2 * precision * recall, precision + recall)

    if average == "binary":
        return PrecisionRecallF1(*(float(s) for s in scores(matrix_classes.index(positive))))
    if average == "macro":
        per_class = np.array([scores(i) for i in range(len(matrix_classes))], dtype=np.float64)
        return PrecisionRecallF1(*(float(s) for s in per_class.mean(axis=0)))
    raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")


def f1_score(labels: Sequence[Hashable], preds: Sequence[Hashable], *, positive: Hashable = 1,
             average: str = "binary") -> float:
    """Just the F1 of ``precision_recall_f1``."""
    return precision_recall_f1(labels, preds, positive=positive, average=average).f1


# ------------------------------------------------------------------------------- language modelling


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token, natural log):
    the effective number of equally likely choices.

    A model that spreads its bets uniformly over V tokens has mean NLL = ln V and perplexity V.
    Returns ``inf`` if the exponent overflows.
    """
    mean_nll = float(mean_nll)
    if math.isnan(mean_nll) or mean_nll < 0:
        raise ValueError(f"mean negative log-likelihood must be a number >= 0, got {mean_nll}")
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


# ------------------------------------------------------------------------------- text generation

_WORD_OR_SYMBOL = regex.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Split text into words and single punctuation marks:
    ``"Hi, you!"`` -> ``["Hi", ",", "you", "!"]``.

    Case is kept (BLEU is case-sensitive by convention); pass
    ``tokenize=lambda s: s.lower().split()`` or ``str.split`` to the metrics for other conventions.
    """
    return _WORD_OR_SYMBOL.findall(text)


def _ngram_counts(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu_report(
    hypotheses: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    max_n: int = 4,
    smoothing: str | None = None,
    tokenize: Callable[[str], list[str]] = tokenize,
) -> dict:
    """Corpus BLEU with its parts:
    ``{"bleu", "precisions", "brevity_penalty", "hypothesis_length", "reference_length"}``.

    See ``corpus_bleu`` for the definition.
    """
    _check_parallel(hypotheses, references, ("hypotheses", "references"))
    if smoothing not in (None, "add1"):
        raise ValueError(f"smoothing must be None or 'add1', got {smoothing!r}")
    matched = [0] * (max_n + 1)  # index n: clipped n-gram matches summed over the corpus
    total = [0] * (max_n + 1)  # index n: n-grams in the hypotheses
    hypothesis_length = reference_length = 0
    for position, (hypothesis, refs) in enumerate(zip(hypotheses, references)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError(f"hypothesis {position} has no reference")
        hyp_tokens = tokenize(hypothesis)
        ref_tokens = [tokenize(ref) for ref in refs]
        hypothesis_length += len(hyp_tokens)
        reference_length += _closest_reference_length(len(hyp_tokens), ref_tokens)
        for n in range(1, max_n + 1):
            clipped, count = _clipped_ngram_matches(hyp_tokens, ref_tokens, n)
            matched[n] += clipped
            total[n] += count

    precisions = []
    for n in range(1, max_n + 1):
        if smoothing == "add1" and n > 1:
            precisions.append((matched[n] + 1) / (total[n] + 1))
        else:
            precisions.append(_ratio(matched[n], total[n]))
    brevity_penalty = _brevity_penalty(hypothesis_length, reference_length)
    if min(precisions) == 0:
        bleu = 0.0  # the geometric mean of anything with a zero factor; log(0) would be -inf
    else:
        bleu = brevity_penalty * math.exp(sum(math.log(p) for p in precisions) / max_n)
    return {
        "bleu": bleu,
        "precisions": precisions,
        "brevity_penalty": brevity_penalty,
        "hypothesis_length": hypothesis_length,
        "reference_length": reference_length,
    }


def _closest_reference_length(hypothesis_length: int, ref_tokens: list[list[str]]) -> int:
    """The reference length closest to the hypothesis length; ties go to the shorter reference."""
    return min((abs(len(r) - hypothesis_length), len(r)) for r in ref_tokens)[1]


def _clipped_ngram_matches(hyp_tokens: list[str], ref_tokens: list[list[str]], n: int):
    """(clipped matches, n-grams) of one hypothesis's n-grams against its references.

    Clipping: an n-gram counts at most as often as it occurs in any single reference, so
    "the the the the" earns no more than the number of "the"s a reference has.
    """
    hyp_counts = _ngram_counts(hyp_tokens, n)
    max_ref_counts: Counter = Counter()
    for tokens in ref_tokens:
        max_ref_counts |= _ngram_counts(tokens, n)  # | keeps the maximum count per n-gram
    matched = sum(min(count, max_ref_counts[gram]) for gram, count in hyp_counts.items())
    return matched, sum(hyp_counts.values())


def _brevity_penalty(hypothesis_length: int, reference_length: int) -> float:
    """1 when the hypotheses are longer than the references, else exp(1 - r/c) (0 for no output)."""
    if hypothesis_length == 0:
        return 0.0
    if hypothesis_length > reference_length:
        return 1.0
    return math.exp(1 - reference_length / hypothesis_length)


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    max_n: int = 4,
    smoothing: str | None = None,
    tokenize: Callable[[str], list[str]] = tokenize,
) -> float:
    """Corpus BLEU (Papineni et al. 2002) in [0, 1];
    ``references[i]`` is one string or a list of strings.

    BLEU = BP · exp( (1/N) Σ_{n=1..N} log p_n ), with

    - p_n, the clipped n-gram precision summed over the whole corpus (not averaged per sentence):
      Σ_hyp Σ_gram min(count in hyp, max count in any one of its references) / Σ_hyp
      (n-grams in hyp);
    - BP, the brevity penalty: with c the total hypothesis length and r the sum over hypotheses of
      the reference length closest to each hypothesis's length, BP = 1 if c > r else exp(1 − r/c).
      Precision alone would reward saying very little; BP takes that back.

    If any p_n is 0 (say, no 4-gram of the corpus matches) the geometric mean, and so BLEU, is 0.0;
    that is the standard definition and happens easily on a few short sentences.
    ``smoothing="add1"`` uses (matches + 1) / (n-grams + 1) for n ≥ 2 (Lin & Och 2004), which keeps
    short-text scores informative.
    """
    return bleu_report(hypotheses, references, max_n=max_n, smoothing=smoothing,
                       tokenize=tokenize)["bleu"]


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (in order, not necessarily adjacent),
    by dynamic programming.

    ``row[j]`` is the LCS of the first i tokens of ``a`` and the first j of ``b``; each new token of
    ``a`` either extends a match diagonally or carries the best of the left and upper neighbours.
    O(len a · len b) time, one row of memory.
    """
    if len(b) > len(a):
        a, b = b, a  # keep the row short
    row = [0] * (len(b) + 1)
    for token_a in a:
        diagonal = 0  # the previous row's value at j - 1
        for j, token_b in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if token_a == token_b else max(row[j - 1], above)
            diagonal = above
    return row[-1]


def rouge_l(
    hypothesis: str, reference: str, *, beta: float = 1.0,
    tokenize: Callable[[str], list[str]] = tokenize
) -> PrecisionRecallF1:
    """ROUGE-L (Lin 2004) of one hypothesis against one reference.

    With L the longest common subsequence of the token lists: precision = L / len(hypothesis),
    recall = L / len(reference), F = (1 + β²)·P·R / (R + β²·P). β = 1 (the default, as in the common
    ``rouge-score`` package) weighs them equally; larger β favours recall. The ``f1`` field holds F.
    Empty texts score 0.
    """
    hyp_tokens, ref_tokens = tokenize(hypothesis), tokenize(reference)
    common = _lcs_length(hyp_tokens, ref_tokens)
    precision = _ratio(common, len(hyp_tokens))
    recall = _ratio(common, len(ref_tokens))
    f_measure = _ratio((1 + beta**2) * precision * recall, recall + beta**2 * precision)
    return PrecisionRecallF1(precision, recall, f_measure)


def mean_rouge_l(hypotheses: Sequence[str], references: Sequence[str],
                 **kwargs) -> PrecisionRecallF1:
    """ROUGE-L precision, recall and F averaged over pairs (each pair scored by ``rouge_l``)."""
    _check_parallel(hypotheses, references, ("hypotheses", "references"))
    scores = np.array([rouge_l(h, r, **kwargs) for h, r in zip(hypotheses, references)],
                      dtype=np.float64)
    return PrecisionRecallF1(*(float(s) for s in scores.mean(axis=0)))


def normalize_answer(text: str) -> str:
    """Strip, lowercase and collapse runs of whitespace to one space: ``"  Paris\\n"`` ->
    ``"paris"``.

    Punctuation and articles are kept (unlike SQuAD's normaliser), so "Paris." does not match
    "Paris".
    """
    return " ".join(text.lower().split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after ``normalize_answer`` on both."""
    _check_parallel(predictions, references, ("predictions", "references"))
    return sum(normalize_answer(p) == normalize_answer(r)
               for p, r in zip(predictions, references)) / len(predictions)
