"""The model families csr runs, by `model.family` name (csr/config/choices.py FAMILIES lists them)."""

from __future__ import annotations

import importlib

from csr.config.choices import FAMILIES
from csr.core.errors import CSRError
from csr.models.families.base import Family

# family name -> "module:Class" under csr.models.families (imported on first use: each pulls its
# transformers classes).
_WHERE = {
    "llava": "llava:Llava",
    "llava_next": "llava_next:LlavaNext",
    "llava_onevision": "llava_next:LlavaOneVision",
    "qwen2_vl": "qwen_vl:Qwen2VL",
    "qwen2_5_vl": "qwen_vl:Qwen25VL",
    "qwen3_vl": "qwen_vl:Qwen3VL",
    "idefics3": "idefics3:Idefics3",
    "smolvlm": "idefics3:SmolVLM",
    "gemma3": "gemma3:Gemma3",
}


def get_family(name: str) -> Family:
    if name not in _WHERE:
        raise CSRError(f"model.family={name!r}: expected one of {', '.join(FAMILIES)}")
    module, cls = _WHERE[name].split(":")
    return getattr(importlib.import_module(f"csr.models.families.{module}"), cls)()


def family_for(model) -> Family:
    """The family of a loaded model (load_model checked it against model.family)."""
    name = family_of(model.config.model_type)
    if name is None:
        raise CSRError(f"no csr family runs model_type={model.config.model_type!r} (families: {', '.join(FAMILIES)})")
    return get_family(name)


def family_of(model_type: str | None) -> str | None:
    """The family that loads checkpoints of `model_type`, if any."""
    for name in FAMILIES:
        if model_type in get_family(name).model_types:
            return name
    return None
