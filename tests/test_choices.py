"""Every choice list has one home (csr/config/choices.py): each table that implements a choice covers exactly its
list, and the config refuses a value outside it at start."""

from __future__ import annotations

import pytest
from compose_config import compose_config

from csr.config import choices
from csr.config.schema import _CHOICES, validate
from csr.core.errors import CSRError
from csr.dpo.loss import LOSSES
from csr.eval.pope import PARSERS
from csr.models.checkpoint import DTYPES
from csr.models.families import get_family
from csr.models.families.base import Family
from csr.models.memory import DTYPE_BYTES
from csr.reward.calibration import _NORMALISERS
from csr.reward.rules import RULES


@pytest.mark.parametrize(("table", "names"), [
    (LOSSES, choices.DPO_LOSSES), (PARSERS, choices.POPE_PARSERS), (DTYPES, choices.DTYPES),
    (DTYPE_BYTES, choices.DTYPES), (RULES, choices.PAIR_RULES), (_NORMALISERS, choices.CALIBRATIONS),
], ids=["dpo.loss", "eval.pope.parser", "model.dtype", "plan dtypes", "pairs.rule", "reward.calibration"])
def test_each_implementation_table_covers_its_choice_list(table, names):
    assert sorted(table) == sorted(names)


def test_every_family_of_the_one_table_resolves_to_its_adapter():
    """model.family's names and their classes are one table (choices.FAMILIES): each entry names a real class."""
    for name in choices.FAMILIES:
        family = get_family(name)
        assert isinstance(family, Family) and family.name == name and family.model_types, name


def test_every_choice_list_is_checked_at_start():
    listed = {name for name in dir(choices) if name.isupper()}
    checked = {name for name in listed if any(getattr(choices, name) is v for v in _CHOICES.values())}
    assert listed - checked == {"PAIR_FILTERS"}  # a list of names, checked one by one in validate()


@pytest.mark.parametrize("key", sorted(_CHOICES))
def test_a_value_outside_its_list_is_refused_naming_the_key(key):
    with pytest.raises(CSRError, match=rf"config key '{key}': 'bogus' is not one of \["):
        validate(compose_config(f"{key}=bogus"))
