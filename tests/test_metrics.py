"""tinyllm.metrics against values worked out by hand in the comments."""

import math

import numpy as np
import pytest

from tinyllm.metrics import (
    accuracy,
    bleu_report,
    confusion_matrix,
    corpus_bleu,
    exact_match,
    f1_score,
    mean_rouge_l,
    normalize_answer,
    perplexity,
    precision_recall_f1,
    rouge_l,
    tokenize,
)

# Position:      0  1  2  3  4  5  6
LABELS = [1, 0, 1, 1, 0, 0, 1]
PREDS = [1, 1, 0, 1, 0, 0, 0]
# TP at 0, 3 (2) · FP at 1 (1) · FN at 2, 6 (2) · TN at 4, 5 (2)


def test_accuracy():
    assert accuracy(LABELS, PREDS) == 4 / 7  # right at 0, 3, 4, 5


def test_confusion_matrix_rows_are_truth_columns_are_predictions():
    expected = np.array([[2, 1],  # true 0: TN=2, FP=1
                         [2, 2]])  # true 1: FN=2, TP=2
    np.testing.assert_array_equal(confusion_matrix(LABELS, PREDS, classes=[0, 1]), expected)
    np.testing.assert_array_equal(confusion_matrix(LABELS, PREDS, classes=[1, 0]), expected[::-1, ::-1])
    counts = confusion_matrix(["cat", "dog"], ["cat", "cat"], classes=["cat", "dog", "eel"])
    np.testing.assert_array_equal(counts, [[1, 0, 0], [1, 0, 0], [0, 0, 0]])


def test_confusion_matrix_rejects_values_outside_the_classes():
    with pytest.raises(ValueError, match="prediction 2 at position 1 is not one of the classes"):
        confusion_matrix([0, 1], [0, 2], classes=[0, 1])


def test_binary_precision_recall_f1():
    # P = TP / (TP + FP) = 2/3; R = TP / (TP + FN) = 2/4; F1 = 2PR / (P + R) = (2/3) / (7/6) = 4/7.
    precision, recall, f1 = precision_recall_f1(LABELS, PREDS, positive=1)
    assert (precision, recall) == (2 / 3, 1 / 2)
    assert f1 == pytest.approx(4 / 7)
    # With 0 as the positive class: TP=2 (4, 5), FP=2 (2, 6), FN=1 (1) -> P = 1/2, R = 2/3, F1 = 4/7 again.
    assert precision_recall_f1(LABELS, PREDS, positive=0) == pytest.approx((1 / 2, 2 / 3, 4 / 7))
    assert f1_score(LABELS, PREDS) == pytest.approx(4 / 7)


def test_numpy_arrays_work_like_lists():
    labels, preds = np.array(LABELS), np.array(PREDS)
    assert accuracy(labels, preds) == 4 / 7
    assert precision_recall_f1(labels, preds) == pytest.approx((2 / 3, 1 / 2, 4 / 7))
    np.testing.assert_array_equal(confusion_matrix(labels, preds), [[2, 1], [2, 2]])


def test_macro_average_over_string_classes():
    labels = ["a", "b", "c", "a"]
    preds = ["a", "c", "c", "b"]
    # a: P = 1/1, R = 1/2, F1 = 2/3 · b: never right -> 0, 0, 0 · c: P = 1/2, R = 1/1, F1 = 2/3
    result = precision_recall_f1(labels, preds, average="macro")
    assert result == pytest.approx(((1 + 0 + 0.5) / 3, (0.5 + 0 + 1) / 3, (2 / 3 + 0 + 2 / 3) / 3))


def test_zero_denominators_count_as_zero_and_bad_arguments_are_named():
    assert precision_recall_f1([1, 0], [0, 0], positive=1) == (0.0, 0.0, 0.0)  # nothing predicted positive
    with pytest.raises(ValueError, match="positive class 1 occurs in neither"):
        precision_recall_f1(["spam", "ham"], ["ham", "ham"])
    with pytest.raises(ValueError, match="average must be"):
        precision_recall_f1(LABELS, PREDS, average="micro")


@pytest.mark.parametrize("metric", [accuracy, confusion_matrix, precision_recall_f1, exact_match, corpus_bleu, mean_rouge_l])
def test_length_mismatch_and_empty_inputs_raise(metric):
    with pytest.raises(ValueError, match="has 3 items but .* has 2"):
        metric(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        metric([], [])


def test_perplexity():
    assert perplexity(math.log(50)) == pytest.approx(50)  # uniform over 50 choices
    assert perplexity(0.0) == 1.0
    assert perplexity(1e6) == math.inf
    assert perplexity(np.float32(math.log(4))) == pytest.approx(4)
    with pytest.raises(ValueError, match=">= 0"):
        perplexity(-0.5)
    with pytest.raises(ValueError):
        perplexity(float("nan"))


def test_tokenize_splits_words_and_punctuation():
    assert tokenize("Hi, you! It's 3.5") == ["Hi", ",", "you", "!", "It", "'", "s", "3", ".", "5"]


def test_bleu_perfect_match_is_one():
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == 1.0


def test_bleu_precisions_without_brevity_penalty():
    # hyp: the cat sat on a mat · ref: the cat sat on the mat (both 6 tokens, so BP = 1)
    # 1-grams 5/6 (not "a") · 2-grams 3/5 (the cat, cat sat, sat on) · 3-grams 2/4 · 4-grams 1/4-1 = 1/3
    # BLEU = (5/6 · 3/5 · 2/4 · 1/3) ** (1/4) = (1/12) ** 0.25
    report = bleu_report(["the cat sat on a mat"], ["the cat sat on the mat"])
    assert report["precisions"] == pytest.approx([5 / 6, 3 / 5, 2 / 4, 1 / 3])
    assert report["brevity_penalty"] == 1.0
    assert report["bleu"] == pytest.approx((1 / 12) ** 0.25)


def test_bleu_brevity_penalty():
    # hyp: the cat sat on (4 tokens), every n-gram matches, but the reference has 6: BP = exp(1 - 6/4)
    assert corpus_bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(math.exp(-0.5))


def test_bleu_is_zero_when_an_ngram_order_has_no_match_and_add1_smoothing():
    # hyp: the cat sat on a mat · ref: the cat is on the mat
    # 1-grams 4/6 (the, cat, on, mat) · 2-grams 1/5 (the cat) · 3-grams 0/4 · 4-grams 0/3 -> BLEU 0
    hypothesis, reference = ["the cat sat on a mat"], ["the cat is on the mat"]
    assert bleu_report(hypothesis, reference)["precisions"] == pytest.approx([4 / 6, 1 / 5, 0, 0])
    assert corpus_bleu(hypothesis, reference) == 0.0
    # add1 for n >= 2: (1+1)/(5+1), (0+1)/(4+1), (0+1)/(3+1) -> (4/6 · 2/6 · 1/5 · 1/4) ** 0.25 = (1/90) ** 0.25
    assert corpus_bleu(hypothesis, reference, smoothing="add1") == pytest.approx((1 / 90) ** 0.25)


def test_bleu_clips_repeated_words():
    # "the" four times, but the reference has it once: unigram precision 1/4, not 4/4
    assert bleu_report(["the the the the"], ["the cat"])["precisions"][0] == 0.25


def test_bleu_multiple_references_and_closest_length():
    # n-grams may match any reference; clipping uses the largest count in any single one.
    # hyp (7): a cat is sitting on the mat · refs of 4 and 8 tokens: 8 is closer, BP = exp(1 - 8/7)
    report = bleu_report(["a cat is sitting on the mat"], [["the cat is here", "a cat is sitting on the red mat"]])
    assert report["reference_length"] == 8 and report["precisions"][0] == 1.0
    assert report["brevity_penalty"] == pytest.approx(math.exp(1 - 8 / 7))
    # Equally close references (3 and 7 for a 5-token hypothesis): the shorter one counts, so no penalty.
    assert bleu_report(["a b c d e"], [["a b c", "a b c d e f g"]])["reference_length"] == 3


def test_bleu_is_corpus_level_not_an_average_of_sentences():
    # The second sentence has no 3- or 4-grams at all; at corpus level the totals still are non-zero.
    hypotheses = ["the cat sat on the mat", "hello there"]
    assert corpus_bleu(hypotheses, hypotheses) == 1.0


def test_rouge_l_by_hand():
    # hyp: the gunman was killed by police (6) · ref: police killed the gunman (4)
    # Longest common subsequence, in order: "the gunman" (2). P = 2/6, R = 2/4, F1 = 2PR/(P+R) = 0.4
    precision, recall, f1 = rouge_l("the gunman was killed by police", "police killed the gunman")
    assert (precision, recall) == (2 / 6, 2 / 4)
    assert f1 == pytest.approx(0.4)
    # hyp: police killed the gunman · ref: police kill the gunman -> LCS "police the gunman" (3): 3/4 each
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx((0.75, 0.75, 0.75))


def test_rouge_l_edge_cases_and_mean():
    assert rouge_l("same words here", "same words here") == (1.0, 1.0, 1.0)
    assert rouge_l("", "anything") == (0.0, 0.0, 0.0)
    # beta = 2 weighs recall more: F = 5PR / (R + 4P) with P = 1/3, R = 1/2 -> (5/6) / (1/2 + 4/3) = 5/11
    assert rouge_l("the gunman was killed by police", "police killed the gunman", beta=2).f1 == pytest.approx(5 / 11)
    mean = mean_rouge_l(["a b", "x y"], ["a b", "z"])
    assert mean == pytest.approx((0.5, 0.5, 0.5))


def test_exact_match_normalises_case_and_whitespace_only():
    assert normalize_answer("  The\n Eiffel   Tower ") == "the eiffel tower"
    predictions = ["  Paris\n", "the  Eiffel Tower", "Paris."]
    references = ["paris", "The Eiffel tower", "Paris"]
    assert exact_match(predictions, references) == pytest.approx(2 / 3)  # punctuation is kept: "paris." != "paris"
