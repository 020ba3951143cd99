"""Which sentences the reference pair rule drops before ranking (`pairs.reference_clean`), pure.

The authors' `score.py` (YiyangZhou/CSR, `inference_csr/`) cleans each search tree before it ranks
anything, in two passes over the tree, each dropping a sentence together with everything below it:
1. `utils.clean_tree`: a sentence whose text holds Korean, Cyrillic or Japanese kana, two or more
   `&nbsp;` in a row, a word repeated six or more times in a row, one character eleven or more times
   in a row (whitespace between allowed), ten single quotes in a row, or more than five newlines;
2. `dfs_score`: a sentence whose text is shorter than 4 characters.
Both look at the sentence as their `extract_new_text` gives it: stripped, then with every character
outside a fixed set removed (`utils.clean_text`). The ranks then come from the siblings that remain.

csr checks the sentence's exact text (the authors cut 3 characters off its start first, a slicing
artefact of theirs that csr does not copy; see csr/reward/rules/reference.py). Written from what their code does;
the tests hold it to the output of their code run unchanged (tests/test_clean_tree.py).

`clean_tree` (the default) is all of the above; `short` is the short-sentence drop alone, on the
stripped text without their character removal: csr's reference rule before it read `clean_tree`.
"""

from __future__ import annotations

import re

from csr.config.choices import REFERENCE_CLEANS

MIN_SENTENCE_CHARS = 4  # score.py keeps a candidate only if its new text has at least 4 characters
# Why a sentence is dropped (an answer through it carries the reason as `dropped`).
SHORT_SENTENCE = "short_sentence"
OTHER_SCRIPT = "other_script"  # Korean, Cyrillic or Japanese kana
HTML_SPACES = "html_spaces"  # `&nbsp;&nbsp;`
REPETITION = "repetition"
NEWLINES = "newlines"

# The characters `clean_text` removes: everything but word characters, whitespace and the punctuation
# it lists. Its list writes `\"-(`, a range from '"' to '(' that keeps # $ % & ' and drops the hyphen.
_REMOVED = re.compile(r"[^\w\s.,?!;:'\"#$%&()/\[\]{}+*=<>^€£°™©®♫♪π√]+")

# Hangul compatibility jamo and syllables, Cyrillic, Hiragana and Katakana. (Their emoji test never
# fires: `clean_text` has removed emoji already. Chinese, Greek, Arabic ... are not dropped.)
_OTHER_SCRIPT = re.compile(r"[\u3130-\u318f\uac00-\ud7af\u0400-\u04ff\u3040-\u30ff]")
_HTML_SPACES = re.compile(r"(?:&nbsp;){2}")
_REPEATED = (
    re.compile(r"(\b\w+\b)(?:\s+\1){5,}"),  # the same word six or more times (case matters)
    re.compile(r"(.)(?:\s*\1){10}"),  # one character eleven times (their 't' * 11, 's' * 11, ', ' * 13 too)
    re.compile(r"'{10}"),  # ten single quotes
)
MAX_NEWLINES = 5


def check_clean(clean: str) -> str:
    if clean not in REFERENCE_CLEANS:
        raise ValueError(f"unknown reference clean-up {clean!r}; expected one of {REFERENCE_CLEANS}")
    return clean


def too_short(text: str) -> bool:
    """True for a sentence of stripped length < 4 (the drop under pairs.reference_clean=short)."""
    return len(text.strip()) < MIN_SENTENCE_CHARS


def authors_view(text: str) -> str:
    """The sentence as the authors' checks read it: stripped, then `clean_text`'s removal."""
    return _REMOVED.sub("", text.strip())


def drop_reason(text: str, clean: str) -> str | None:
    """Why the reference rule drops this sentence before ranking, or None when it is ranked."""
    if check_clean(clean) == "short":
        return SHORT_SENTENCE if too_short(text) else None
    seen = authors_view(text)
    if _OTHER_SCRIPT.search(seen):
        return OTHER_SCRIPT
    if _HTML_SPACES.search(seen):
        return HTML_SPACES
    if any(pattern.search(seen) for pattern in _REPEATED):
        return REPETITION
    if seen.count("\n") > MAX_NEWLINES:
        return NEWLINES
    if len(seen) < MIN_SENTENCE_CHARS:
        return SHORT_SENTENCE
    return None
