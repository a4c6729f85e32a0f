"""Tests of the generated film reviews (tinyllm.data.reviews): sentiment known by construction, openings that
are the reviews' own starts, preference pairs that always prefer the more positive review."""

from tinyllm.data.reviews import (NEGATIVE, POSITIVE, SENTENCES_PER_REVIEW, builtin_reviews, review_openings,
                                  review_preferences, sentiment_counts)


def test_each_review_has_one_sentiment_word_per_sentence_and_says_how_many_are_positive():
    reviews = builtin_reviews(200, seed=1)
    assert reviews == builtin_reviews(200, seed=1), "seeded"
    for review in reviews:
        positive, negative = sentiment_counts(review["text"])
        assert (positive, positive + negative) == (review["positive"], SENTENCES_PER_REVIEW), review
        assert review["text"].startswith(review["opening"])
    share = sum(r["positive"] for r in reviews) / (SENTENCES_PER_REVIEW * len(reviews))
    assert 0.4 < share < 0.6, "sentences are positive or negative with equal odds"


def test_the_word_lists_do_not_overlap_and_openings_stop_before_the_sentiment():
    assert not set(POSITIVE) & set(NEGATIVE)
    openings = review_openings()
    assert {r["opening"] for r in builtin_reviews(300)} <= set(openings)
    assert all(sentiment_counts(opening) == (0, 0) for opening in openings)
    assert sentiment_counts("What a LOVELY film, but I hated the ending.") == (1, 1)


def test_preference_pairs_share_the_opening_and_prefer_the_more_positive_review():
    pairs = review_preferences(100, seed=3)
    assert len(pairs) == 100 and pairs == review_preferences(100, seed=3)
    for pair in pairs:
        assert pair["prompt"] in review_openings()
        chosen, rejected = (sentiment_counts(pair[key])[0] for key in ("chosen", "rejected"))
        assert chosen > rejected, pair
        assert sum(sentiment_counts(pair["chosen"])) == SENTENCES_PER_REVIEW
