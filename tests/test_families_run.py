"""`csr` runs two whole iterations on the tiny random model of every family: search, reward, pairs, DPO,
merge and evaluation all go through the family's adapter. DPO moves only the language model's LoRA
targets, the merged checkpoint loads with from_pretrained, and it is iteration 2's policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from csr_runs import run, tiny_env

from csr.config.choices import FAMILIES
from csr.core.io import is_done, read_json, read_jsonl
from csr.models.families import get_family

pytestmark = pytest.mark.slow


def _weights(family, directory: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights by module name (Qwen2-VL's files name them the legacy way: model.layers...)."""
    model = family.model_class.from_pretrained(str(directory), local_files_only=True)  # a plain checkpoint
    assert not any("lora" in key for key, _ in model.named_parameters())
    return model.state_dict()


@pytest.mark.parametrize("name", FAMILIES)
def test_two_iterations_end_to_end(name, tiny_models, tiny_family, tmp_path):
    base = Path(tiny_family(name))
    env = tiny_env(tiny_models)
    run("csr", "experiment=smoke", f"model.family={name}", "iterations=2", "data.limit=2", "eval.limit=2",
        "search.prompts_per_batch=2", "eval.at_base=false", "search.max_sentences=2", "logger.tracking_uri=null", "dpo.lora.dropout=0", "dpo.lr=0.05",
        f"run_dir={tmp_path}", env=env, cwd=tmp_path)
    for k in (1, 2):
        assert is_done(tmp_path / f"iter_{k}", "merge") and is_done(tmp_path / f"iter_{k}", "eval")
    assert read_jsonl(tmp_path / "iter_1" / "pairs.jsonl"), "no pairs: DPO trained nothing"

    family = get_family(name)
    merged = tmp_path / "iter_1" / "merged"
    before, after = _weights(family, base), _weights(family, merged)
    assert before.keys() == after.keys()
    changed = {key for key in before if not torch.equal(before[key].float(), after[key].float())}
    assert changed, "DPO changed no weight"
    targets = re.compile(family.lora_targets())
    # Only LoRA's targets moved: no vision tower, projector or lm_head weight.
    assert all(targets.fullmatch(key.removesuffix(".weight")) for key in changed), sorted(changed)[:5]

    # Iteration 2 searched with iteration 1's merged model.
    assert read_json(tmp_path / "iter_2" / "search.done.json")["stats"]["model_path"] == str(merged)
