"""POPE's questions (Li et al. 2023): per image, present objects ("yes") and as many absent ones
("no"), the negatives sampled by POPE's three strategies. Data a split is built from; the metrics
are csr/eval/pope.py's."""

from __future__ import annotations

import random
from collections import Counter
from itertools import zip_longest
from typing import Any

STRATEGIES = ("random", "popular", "adversarial")
QUESTION_TEMPLATE = "Is there a {} in the image?"


def cooccurrence_counts(objects_per_image: dict[str, set[str]]) -> dict[str, dict[str, int]]:
    """a -> b -> number of images holding both a and b (a != b)."""
    counts: dict[str, Counter[str]] = {}
    for objects in objects_per_image.values():
        for a in objects:
            partners = counts.setdefault(a, Counter())
            partners.update(b for b in objects if b != a)
    return {a: dict(partners) for a, partners in counts.items()}


def _negatives(
    strategy: str,
    absent: list[str],
    k: int,
    present: set[str],
    frequency: Counter[str],
    cooccurrence: dict[str, dict[str, int]],
    rng: random.Random,
) -> list[str]:
    k = min(k, len(absent))
    if strategy == "random":
        return rng.sample(absent, k)
    if strategy == "popular":
        score = {c: frequency[c] for c in absent}
    else:  # adversarial: how often each absent object keeps company with this image's objects
        score = {c: sum(cooccurrence.get(p, {}).get(c, 0) for p in present) for c in absent}
    # `absent` is in category order and sorted() is stable, so ties go to the earlier category.
    return sorted(absent, key=lambda c: -score[c])[:k]


def sample_pope_questions(
    objects_per_image: dict[str, set[str]],
    categories: list[str],
    strategy: str,
    n_per_image: int,
    rng: random.Random,
    cooccurrence: dict[str, dict[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """POPE questions: per image, up to `n_per_image` present objects ("yes") and as many absent ones ("no").

    Negatives come from `categories` minus the image's objects, by `strategy`: "random" (uniform),
    "popular" (most images over the whole table hold them), "adversarial" (they co-occur most, summed
    over the image's objects, with what is there; counts from `cooccurrence` or else from the table
    itself).  An image with fewer objects than `n_per_image` gets all of them, and the same number of
    negatives (fewer again if too few categories are absent); an image with no objects gets no
    questions, keeping every image's yes/no balance at 50%.  Images go in sorted order and questions
    alternate yes/no, so the output depends only on the inputs and the rng's state.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown POPE strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if n_per_image < 1:
        raise ValueError(f"n_per_image must be at least 1, got {n_per_image}")
    frequency = Counter(obj for objects in objects_per_image.values() for obj in objects)
    if strategy == "adversarial" and cooccurrence is None:
        cooccurrence = cooccurrence_counts(objects_per_image)
    questions: list[dict[str, Any]] = []
    for image in sorted(objects_per_image):
        present = set(objects_per_image[image])
        # sorted(): set order varies between runs (string hashing), which would break seeding.
        positives = rng.sample(sorted(present), min(n_per_image, len(present)))
        absent = [c for c in dict.fromkeys(categories) if c not in present]
        negatives = _negatives(strategy, absent, len(positives), present, frequency, cooccurrence or {}, rng)
        for pair in zip_longest(positives, negatives):
            for obj, label in zip(pair, ("yes", "no"), strict=True):
                if obj is not None:
                    questions.append({
                        "question_id": len(questions) + 1,
                        "image": image,
                        "text": QUESTION_TEMPLATE.format(obj),
                        "label": label,
                        "object": obj,
                    })
    return questions
