"""Generated film reviews whose sentiment is known:
the offline stand-in for IMDB in RLHF's classic demo.

TRL's best-known example finetunes GPT-2 on IMDB reviews, then uses PPO to make it write *positive*
reviews, rewarded by a sentiment classifier. Here a review is three short sentences, each about one
part of a film and each positive or negative by one word in it:

    The acting was wonderful. I hated the ending. What a charming soundtrack!

Each sentence's sentiment is drawn independently, half positive, so a model trained on these reviews
writes either kind with equal odds. Because every sentiment word comes from a fixed list, the
sentiment of any text can be counted (``sentiment_counts``): the ground truth that a learned reward
model only estimates.

A review starts with an *opening* that stops just before its first sentiment word ("The acting was",
"I found the plot", "What a", "I"): the prompt that a policy continues.

``review_preferences`` makes preference pairs for a rater who likes enthusiastic reviews: two
reviews with the same opening, the one with more positive sentences "chosen".
"""

from __future__ import annotations

import random
import re

POSITIVE = ("great", "wonderful", "brilliant", "beautiful", "charming", "moving", "delightful",
            "lovely",
            "loved", "enjoyed", "admired")
NEGATIVE = ("terrible", "boring", "dull", "weak", "clumsy", "tedious", "dreadful", "painful",
            "hated", "disliked", "endured")
ADJECTIVES = (POSITIVE[:8], NEGATIVE[:8])          # (positive, negative)
VERBS = (POSITIVE[8:], NEGATIVE[8:])
NOUNS = ("film", "story", "acting", "ending", "soundtrack", "cast", "plot", "script", "dialogue",
         "finale")
# (opening, rest): the opening ends just before the sentiment word, which the rest begins with.
SENTENCES = (("The {noun} was", " {adjective}."), ("I found the {noun}", " {adjective}."),
             ("The {noun} felt", " {adjective}."), ("What a", " {adjective} {noun}!"),
             ("I", " {verb} the {noun}."))
SENTENCES_PER_REVIEW = 3
_WORD = re.compile(r"[a-z]+")


def _sentence(rng: random.Random, positive: bool, form=None, noun=None) -> tuple[str, str]:
    """(opening, rest) of one sentence of the given sentiment;
    ``form`` and ``noun`` drawn unless given."""
    opening, rest = form or rng.choice(SENTENCES)
    side = 0 if positive else 1
    words = {"noun": noun or rng.choice(NOUNS), "adjective": rng.choice(ADJECTIVES[side]),
             "verb": rng.choice(VERBS[side])}
    return opening.format(**words), rest.format(**words)


def make_review(rng: random.Random, positives=None) -> dict:
    """One review: {"opening", "text" (the whole review, opening included), "positive" (its number
    of positive sentences)}. ``positives``: a list of SENTENCES_PER_REVIEW booleans (default: fair
    coins)."""
    positives = positives or [rng.random() < 0.5 for _ in range(SENTENCES_PER_REVIEW)]
    sentences = [_sentence(rng, p) for p in positives]
    text = " ".join(opening + rest for opening, rest in sentences)
    return {"opening": sentences[0][0], "text": text, "positive": sum(positives)}


def builtin_reviews(count: int, seed: int = 0) -> list[dict]:
    """``count`` generated reviews (``make_review``), seeded."""
    rng = random.Random(seed)
    return [make_review(rng) for _ in range(count)]


def review_openings() -> list[str]:
    """Every distinct opening a review can start with (the prompts for a policy to continue)."""
    openings = {opening.format(noun=noun) for opening, _ in SENTENCES for noun in NOUNS}
    return sorted(openings)


def review_preferences(count: int, seed: int = 0) -> list[dict]:
    """``count`` pairs {"prompt" (an opening), "chosen", "rejected" (their continuations)}: two
    reviews with the same opening, the chosen one with more positive sentences than the rejected
    one."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < count:
        chosen, rejected = (
            [rng.random() < 0.5 for _ in range(SENTENCES_PER_REVIEW)] for _ in range(2)
        )
        if sum(chosen) == sum(rejected):
            continue
        if sum(chosen) < sum(rejected):
            chosen, rejected = rejected, chosen
        form, noun = rng.choice(SENTENCES), rng.choice(NOUNS)
        texts = []
        for positives in (chosen, rejected):
            sentences = [_sentence(rng, positives[0], form, noun)] + [
                _sentence(rng, p) for p in positives[1:]
            ]
            texts.append(
                sentences[0][1] + "".join(" " + opening + rest for opening, rest in sentences[1:])
            )
        pairs.append({"prompt": sentences[0][0], "chosen": texts[0], "rejected": texts[1]})
    return pairs


def sentiment_counts(text: str) -> tuple[int, int]:
    """(positive words, negative words) in ``text``, from the word lists."""
    words = _WORD.findall(text.lower())
    return sum(w in POSITIVE for w in words), sum(w in NEGATIVE for w in words)
