"""`pairs.rule=mean`, csr's rule (pure): an answer scores the mean of its sentences' calibrated R.

Each sibling set is calibrated with `reward.calibration` (csr/reward/calibration.py), higher is better,
nothing is dropped, the answers are listed in node order, the best answer is chosen and the worst
rejected, ties going to the earliest answer (a fully tied prompt is skipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from csr.reward.calibration import calibrate
from csr.reward.rules.base import SKIP_IDENTICAL, SKIP_NAN, SKIP_TIED, SKIP_TOO_FEW, Choice, PairRule

if TYPE_CHECKING:
    from csr.reward.tree import Node


def answer_score(sentence_rewards: Sequence[float]) -> float:
    """Sum of the sentences' calibrated rewards divided by the number of sentences."""
    if not sentence_rewards:
        raise ValueError("an answer needs at least one sentence")
    return sum(sentence_rewards) / len(sentence_rewards)


@dataclass(frozen=True)
class Answer:
    text: str
    sentence_rewards: tuple[float, ...]

    @property
    def score(self) -> float:
        return answer_score(self.sentence_rewards)


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


@dataclass(frozen=True)
class MeanRule(PairRule):
    name = "mean"
    lower_is_better = False

    def score_siblings(self, siblings: Sequence[Node], lam: float, calibration: str) -> dict[int, dict]:
        rewards = calibrate([n.r_t for n in siblings], [n.r_i for n in siblings], lam, calibration)
        for node, reward in zip(siblings, rewards, strict=True):
            node.reward = reward
        return {}

    def answer_score(self, rewards: Sequence[float]) -> float:
        return answer_score(rewards)

    def prune_score(self, node: Node) -> float:
        return node.path_reward / node.depth  # the mean calibrated R so far

    def choose(self, scores: Sequence[float], texts: Sequence[str]) -> Choice:
        return select_pair(scores, texts)


MEAN = MeanRule()  # the default rule (pairs.rule's default), stateless: one object serves every caller
