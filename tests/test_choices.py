"""Every choice list has one home (csr/config/choices.py): the tables that implement a choice are built from its
list, every choice does its job, and the config refuses a value outside its list at start."""

from __future__ import annotations

import pytest
import torch
from compose_config import compose_config

from csr.config import choices
from csr.config.schema import _CHOICES, validate
from csr.core.errors import CSRError
from csr.dpo.loss import dpo_loss
from csr.eval.pope import yes_no
from csr.models.checkpoint import DTYPES
from csr.models.families import get_family
from csr.models.families.base import Family
from csr.models.memory import DTYPE_BYTES
from csr.pairs.filters import failed_filter
from csr.reward.calibration import calibrate
from csr.reward.rules import RULES


@pytest.mark.parametrize(("table", "names"), [(RULES, choices.PAIR_RULES)], ids=["pairs.rule"])
def test_each_implementation_table_covers_its_choice_list(table, names):
    assert sorted(table) == sorted(names)


# The other tables are built from their lists (dpo.loss, eval.pope.parser, model.dtype, reward.calibration,
# pairs.filters): what is left to check is that every name does its job.
@pytest.mark.parametrize("name", choices.DPO_LOSSES)
def test_every_dpo_loss_is_lower_when_the_chosen_answer_gains(name):
    ref = torch.zeros(1)
    gained, _, _ = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), ref, ref, 0.1, name, ipo_form="sum")
    lost, _, _ = dpo_loss(torch.tensor([-1.0]), torch.tensor([1.0]), ref, ref, 0.1, name, ipo_form="sum")
    assert gained.item() < lost.item()


@pytest.mark.parametrize("name", choices.POPE_PARSERS)
def test_every_pope_parser_reads_a_plain_yes_and_no(name):
    assert yes_no("Yes, there is a dog.", name) and not yes_no("No, there is not.", name)


@pytest.mark.parametrize("name", choices.DTYPES)
def test_every_dtype_is_torchs_and_the_plan_counts_its_bytes(name):
    assert str(DTYPES[name]) == f"torch.{name}" and DTYPES[name].itemsize == DTYPE_BYTES[name]


@pytest.mark.parametrize("name", choices.CALIBRATIONS)
def test_every_calibration_keeps_the_best_of_both_scores_best(name):
    rewards = calibrate([-2.0, -1.0, -3.0], [0.1, 0.3, 0.2], 0.5, name)
    assert len(rewards) == 3 and max(rewards) == rewards[1]


FAILING = {"empty": "  ", "repetition": "A dog dog dog dog.", "non_latin": "Собака на диване."}


@pytest.mark.parametrize("name", choices.PAIR_FILTERS)
def test_every_pair_filter_catches_its_answer_and_passes_a_plain_one(name):
    assert failed_filter(FAILING[name], [name]) == name and failed_filter("A dog on a sofa.", [name]) is None


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
