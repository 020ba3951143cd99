"""csr's answer filters (`pairs.filters`), applied after scoring and before the pair rule chooses (pure)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from csr.config.choices import PAIR_FILTERS

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
