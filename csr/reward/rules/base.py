"""What a pair rule answers, and the choice it returns (pure).

A rule decides everything in which `pairs.rule=mean` and `pairs.rule=reference` differ; the search,
the reward stage, the pairs stage and the inspector ask it and never test its name:
- `drop_reason`: its clean-up, a sentence it drops before ranking (with everything below it);
- `score_siblings`: the reward of each sentence of one sibling set (the candidates of one parent);
- `answer_order`, `answer_score`: the order the answers of a tree are listed in, and an answer's score;
- `prune_score`: what the search keeps and prunes open answers by when it prunes by the reward;
- `lower_is_better`, `choose`, `margin`: the score's direction and the chosen/rejected choice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from csr.reward.tree import Node

SKIP_TOO_FEW = "fewer_than_2_answers"
SKIP_IDENTICAL = "chosen_equals_rejected"
SKIP_TIED = "tied_scores"
SKIP_NAN = "nan_score"


@dataclass(frozen=True)
class Choice:
    chosen: int | None  # index into the answers, None when skipped
    rejected: int | None
    skip: str | None = None


class PairRule(ABC):
    name: ClassVar[str]  # its `pairs.rule` value
    lower_is_better: ClassVar[bool]  # of its sentence rewards and answer scores
    cleans_tree: ClassVar[bool] = False  # drops sentences before ranking (`drop_reason` can say why)
    sentence_fields: ClassVar[tuple[str, ...]] = ()  # what it records per sentence besides r_t, r_i, reward

    def drop_reason(self, text: str) -> str | None:
        """Why this rule drops a sentence before ranking, or None when it is ranked."""
        return None

    @abstractmethod
    def score_siblings(self, siblings: Sequence[Node], lam: float, calibration: str) -> dict[int, dict]:
        """Set the `reward` of one sibling set's sentences (all their R_T and R_I known; None for a
        sentence it drops); returns node id -> its `sentence_fields`, for the reward record."""

    def answer_order(self, nodes: Sequence[Node]) -> Sequence[Node]:
        """The tree's nodes in the order its answers are listed (and ties between them decided)."""
        return nodes

    @abstractmethod
    def answer_score(self, rewards: Sequence[float]) -> float:
        """An answer's score from its sentences' rewards, first to last."""

    @abstractmethod
    def prune_score(self, node: Node) -> float:
        """The running score of an open answer the search prunes by, HIGHER is better (its best
        kept are those `choose` would choose, its worst kept those it would reject)."""

    @abstractmethod
    def choose(self, scores: Sequence[float], texts: Sequence[str]) -> Choice:
        """The chosen and rejected answer of one prompt's (filtered) answers, or why none."""

    def margin(self, chosen_score: float, rejected_score: float) -> float:
        """How much better the chosen answer scores than the rejected one (>= 0)."""
        if self.lower_is_better:
            return rejected_score - chosen_score
        return chosen_score - rejected_score

    def record_fields(self) -> dict:
        """What a reward record carries besides its answers, so the pairs stage reads the rule back."""
        return {}
