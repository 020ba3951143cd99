"""csr's answer filters (`pairs.filters`), applied after scoring and before the pair rule chooses (pure)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from csr.config.choices import PAIR_FILTERS

_REPEATED_WORD = re.compile(r"\b(\w+)(?:\W+\1\b){3,}", re.IGNORECASE)  # same word 4+ times in a row
_REPEATED_CHAR = re.compile(r"(.)\1{9,}")  # same character 10+ times in a row
_NON_LATIN = re.compile(r"[^\x00-\u024f\u2000-\u206f]")  # outside Latin letters and punctuation


def _empty(text: str) -> bool:
    return not text.strip()


def _repetition(text: str) -> bool:
    return bool(_REPEATED_WORD.search(text) or _REPEATED_CHAR.search(text))


def _non_latin(text: str) -> bool:
    return bool(_NON_LATIN.search(text))


# One test per pairs.filters choice, named _<choice>: the names are written once, in csr/config/choices.py
# PAIR_FILTERS (a choice without its test fails here, at import).
_FAILS = {name: globals()[f"_{name}"] for name in PAIR_FILTERS}


def failed_filter(text: str, filters: Sequence[str]) -> str | None:
    """The first filter an answer fails (the reference code's clean-up), or None."""
    for name in filters:
        if name not in _FAILS:
            raise ValueError(f"unknown pair filter {name!r}; expected some of {PAIR_FILTERS}")
        if _FAILS[name](text):
            return name
    return None
