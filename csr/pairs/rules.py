"""The two preference-pair rules (`pairs.rule`), pure functions on plain lists.

`mean` (csr's rule, `csr.pairs.select`): an answer scores the mean of its sentences' calibrated R
(higher is better); the best answer is chosen, the worst rejected, ties go to the earliest answer.

`reference`: the rule of the authors' code (YiyangZhou/CSR, `inference_csr/`), which picked the
published pairs, written here from what that code does:
- `score.py` cleans the tree before anything is ranked: `utils.clean_tree` drops sentences in some
  other scripts, with long repetitions or many newlines, then a candidate sentence shorter than 4
  characters is dropped, each with everything below it (csr/pairs/clean.py, `pairs.reference_clean`).
  It measures the new text after cutting 3 characters off its start (an artefact of how it sliced
  the decoded text, which csr does not copy); csr measures the sentence's exact text with
  surrounding whitespace stripped, as their `.strip()` does, so " It." (3 characters) is dropped
  and " Yes." (4) is kept.
- `utils.Rank_Node.calculate_ranks`: within each sibling set (the candidates proposed from one
  parent), sort by R_T descending with a stable sort and give the i-th rank (i+1)/n: the best gets
  1/n, LOWER IS BETTER, and a tie goes to the earlier sibling (ties are not shared). The same on
  R_I gives clip_rank.
- `construct.py`: a sentence is worth (1-a) * rank + a * clip_rank (a = reward.lam); a path scores
  the sum over its sentences divided by the length of the path, which includes the root (prompt)
  node: the root has no rank and adds 0, so the divisor is sentences + 1. The answers, in the
  order its depth-first walk meets them, are sorted ascending with a stable sort: the first is
  chosen, the last rejected (so a tie for worst goes to the later answer).

Where csr departs from that code it says so: a prompt with fewer than 2 answers, or whose chosen
and rejected texts are equal, is skipped and counted (the authors' code would emit a pair of one
answer with itself), and a NaN score skips the prompt. Fully tied answers still make a pair
(first against last), as in their code.
"""

from __future__ import annotations

from collections.abc import Sequence

from csr.config.choices import PAIR_RULES
from csr.pairs.select import SKIP_IDENTICAL, SKIP_NAN, SKIP_TOO_FEW, Choice, select_pair

MIN_SENTENCE_CHARS = 4  # score.py keeps a candidate only if its new text has at least 4 characters
SHORT_SENTENCE = "short_sentence"  # an answer through such a sentence is not a candidate (csr/pairs/clean.py)


def check_rule(rule: str) -> str:
    if rule not in PAIR_RULES:
        raise ValueError(f"unknown pair rule {rule!r}; expected one of {PAIR_RULES}")
    return rule


def too_short(text: str) -> bool:
    """True for a sentence of stripped length < 4 (the drop under pairs.reference_clean=short)."""
    return len(text.strip()) < MIN_SENTENCE_CHARS


def reference_ranks(values: Sequence[float]) -> list[float]:
    """(i+1)/n by descending value within one sibling set: best 1/n, worst 1; ties by position."""
    n = len(values)
    order = sorted(range(n), key=lambda i: values[i], reverse=True)  # reverse keeps the sort stable
    ranks = [0.0] * n
    for position, i in enumerate(order):
        ranks[i] = (position + 1) / n
    return ranks


def reference_sentence_value(rank: float, clip_rank: float, a: float) -> float:
    """The authors' calibrated sentence reward, lower is better (the expression order is theirs)."""
    return (1 - a) * rank + a * clip_rank


def reference_path_score(values: Sequence[float]) -> float:
    """Sum of the sentence values over the path length, the root included: / (sentences + 1)."""
    if not values:
        raise ValueError("an answer needs at least one sentence")
    return sum(values) / (len(values) + 1)


def select_reference(scores: Sequence[float], texts: Sequence[str]) -> Choice:
    """First (chosen) and last (rejected) of the answers sorted ascending by score, stably.

    `scores` must be in the order the authors' depth-first walk meets the answers.
    """
    if len(scores) < 2:
        return Choice(None, None, SKIP_TOO_FEW)
    if any(s != s for s in scores):  # NaN compares unequal to itself
        return Choice(None, None, SKIP_NAN)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    chosen, rejected = order[0], order[-1]
    if texts[chosen].strip() == texts[rejected].strip():
        return Choice(None, None, SKIP_IDENTICAL)
    return Choice(chosen, rejected)


_SELECT = {"mean": select_pair, "reference": select_reference}


def select_by_rule(rule: str, scores: Sequence[float], texts: Sequence[str]) -> Choice:
    return _SELECT[check_rule(rule)](scores, texts)


def margin(rule: str, chosen_score: float, rejected_score: float) -> float:
    """How much better the chosen answer scores than the rejected one (>= 0 under either rule)."""
    if check_rule(rule) == "reference":  # lower is better
        return rejected_score - chosen_score
    return chosen_score - rejected_score
