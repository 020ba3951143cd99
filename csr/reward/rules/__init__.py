"""The pair rules (`pairs.rule`): each one object that scores the sentences and answers of a search
tree and chooses the chosen/rejected pair (the interface: csr/reward/rules/base.py).

- `mean` (csr/reward/rules/mean.py): csr's rule, the mean calibrated R of an answer, higher is better;
- `reference` (csr/reward/rules/reference.py): the authors' ranks and path score, lower is better,
  after their clean-up of the tree (csr/reward/rules/clean.py, `pairs.reference_clean`).

`pair_rule` resolves the config's name once; everything else asks the object, never its name.

The rules live in `reward` because a rule is a way of scoring: the reward stage writes each answer's
score under it, the search prunes by the same score when it prunes by the reward (`search` imports
`reward` already, for the tree and R_T), and the pairs stage, which comes after the reward stage,
only asks it to choose. So imports follow the data: search and pairs import reward, reward imports
neither.
"""

from __future__ import annotations

from collections.abc import Callable

from csr.config.choices import PAIR_RULES
from csr.reward.rules.base import Choice, PairRule
from csr.reward.rules.clean import check_clean
from csr.reward.rules.mean import MEAN
from csr.reward.rules.reference import ReferenceRule

__all__ = ["RULES", "Choice", "PairRule", "pair_rule"]

# pairs.rule -> the rule, built from pairs.reference_clean (the clean-up only `reference` applies)
RULES: dict[str, Callable[[str], PairRule]] = {"mean": lambda clean: MEAN, "reference": ReferenceRule}


def pair_rule(name: str, clean: str = "clean_tree") -> PairRule:
    """The rule `pairs.rule=name` names; `clean` (pairs.reference_clean) is checked under either rule."""
    if name not in RULES:
        raise ValueError(f"unknown pair rule {name!r}; expected one of {PAIR_RULES}")
    return RULES[name](check_clean(clean))
