"""The model families csr runs, by `model.family` name.

The one table of families is csr/config/choices.py FAMILIES (name -> "<module>:<Class>" here): the config
validates `model.family` against its names without importing any model library, and `get_family` imports
the named class from it on first use (each family module pulls its transformers classes). A run resolves
its family once (csr/loop.py, into the stages' context); csr-plan and csr-make-tiny once at their start.
"""

from __future__ import annotations

import importlib

from csr.config.choices import FAMILIES
from csr.core.errors import CSRError
from csr.models.families.base import Family


def get_family(name: str) -> Family:
    """The adapter of family `name` (a `model.family` value)."""
    if name not in FAMILIES:
        raise CSRError(f"model.family={name!r}: expected one of {', '.join(FAMILIES)}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(f"csr.models.families.{module}"), cls)(name)


def family_of(model_type: str | None) -> str | None:
    """The family that loads checkpoints of `model_type`, if any (load_model's hint when model.family is wrong)."""
    for name in FAMILIES:
        if model_type in get_family(name).model_types:
            return name
    return None
