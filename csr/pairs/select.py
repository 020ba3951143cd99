"""Answer scores and the chosen/rejected choice per prompt (pure)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from csr.config.choices import PAIR_FILTERS

SKIP_TOO_FEW = "fewer_than_2_answers"
SKIP_IDENTICAL = "chosen_equals_rejected"
SKIP_TIED = "tied_scores"
SKIP_NAN = "nan_score"



@dataclass(frozen=True)
class Answer:
    text: str
    sentence_rewards: tuple[float, ...]

    @property
    def score(self) -> float:
        return answer_score(self.sentence_rewards)


def answer_score(sentence_rewards: Sequence[float]) -> float:
    """Sum of the sentences' calibrated rewards divided by the number of sentences."""
    if not sentence_rewards:
        raise ValueError("an answer needs at least one sentence")
    return sum(sentence_rewards) / len(sentence_rewards)


@dataclass(frozen=True)
class Choice:
    chosen: int | None  # index into the answers, None when skipped
    rejected: int | None
    skip: str | None = None


def select_pair(scores: Sequence[float], texts: Sequence[str]) -> Choice:
    """Best answer is chosen, worst is rejected; ties resolve to the earliest answer."""
    if len(scores) < 2:
        return Choice(None, None, SKIP_TOO_FEW)
    if any(s != s for s in scores):  # NaN compares unequal to itself
        return Choice(None, None, SKIP_NAN)
    chosen = min(range(len(scores)), key=lambda i: (-scores[i], i))
    rejected = min(range(len(scores)), key=lambda i: (scores[i], i))
    if scores[chosen] == scores[rejected]:
        return Choice(None, None, SKIP_TIED)
    if texts[chosen].strip() == texts[rejected].strip():
        return Choice(None, None, SKIP_IDENTICAL)
    return Choice(chosen, rejected)


_REPEATED_WORD = re.compile(r"\b(\w+)(?:\W+\1\b){3,}", re.IGNORECASE)  # same word 4+ times in a row
_REPEATED_CHAR = re.compile(r"(.)\1{9,}")  # same character 10+ times in a row
_NON_LATIN = re.compile(r"[^\x00-\u024f\u2000-\u206f]")  # outside Latin letters and punctuation


def failed_filter(text: str, filters: Sequence[str]) -> str | None:
    """The first filter an answer fails (the reference code's clean-up), or None."""
    for name in filters:
        if name == "empty" and not text.strip():
            return "empty"
        if name == "repetition" and (_REPEATED_WORD.search(text) or _REPEATED_CHAR.search(text)):
            return "repetition"
        if name == "non_latin" and _NON_LATIN.search(text):
            return "non_latin"
        if name not in PAIR_FILTERS:
            raise ValueError(f"unknown pair filter {name!r}; expected some of {PAIR_FILTERS}")
    return None
