"""`pairs.rule=reference` (pure): the rule of the authors' code (YiyangZhou/CSR, `inference_csr/`),
which picked the published pairs, written here from what that code does:
- `score.py` cleans the tree before anything is ranked: `utils.clean_tree` drops sentences in some
  other scripts, with long repetitions or many newlines, then a candidate sentence shorter than 4
  characters is dropped, each with everything below it (csr/reward/rules/clean.py,
  `pairs.reference_clean`).
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
(first against last), as in their code. A search pruning by the calibrated reward under this
rule ranks open answers by the same path score (their search pruned by R_T alone).
"""


from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from csr.reward.rules.base import SKIP_IDENTICAL, SKIP_NAN, SKIP_TOO_FEW, Choice, PairRule
from csr.reward.rules.clean import check_clean, drop_reason
from csr.reward.tree import depth_first

if TYPE_CHECKING:
    from csr.reward.tree import Node


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


@dataclass(frozen=True)
class ReferenceRule(PairRule):
    clean: str = "clean_tree"  # pairs.reference_clean: what it drops before ranking (csr/reward/rules/clean.py)
    name = "reference"
    lower_is_better = True
    cleans_tree = True
    sentence_fields = ("rank", "clip_rank")

    def __post_init__(self) -> None:
        check_clean(self.clean)

    def drop_reason(self, text: str) -> str | None:
        return drop_reason(text, self.clean)

    def score_siblings(self, siblings: Sequence[Node], lam: float, calibration: str) -> dict[int, dict]:
        """The authors' sentence value as each reward, from the ranks among the siblings it keeps
        (n counts only them); `calibration` is not theirs and not used."""
        ranked = [n for n in siblings if self.drop_reason(n.text) is None]
        both = zip(reference_ranks([n.r_t for n in ranked]), reference_ranks([n.r_i for n in ranked]), strict=True)
        ranks = {n.id: rank_pair for n, rank_pair in zip(ranked, both, strict=True)}
        for node in siblings:
            node.reward = reference_sentence_value(*ranks[node.id], lam) if node.id in ranks else None
        return {i: {"rank": rank, "clip_rank": clip_rank} for i, (rank, clip_rank) in ranks.items()}

    def answer_order(self, nodes: Sequence[Node]) -> Sequence[Node]:
        return depth_first(nodes)  # construct.py's order, which decides its ties

    def answer_score(self, rewards: Sequence[float]) -> float:
        return reference_path_score(rewards)

    def prune_score(self, node: Node) -> float:
        # Negated: prune's order (-score, index) is then their stable ascending sort.
        return -(node.path_reward / (node.depth + 1))

    def choose(self, scores: Sequence[float], texts: Sequence[str]) -> Choice:
        return select_reference(scores, texts)

    def record_fields(self) -> dict:
        return {"rule": self.name, "reference_clean": self.clean}
