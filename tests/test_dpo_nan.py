"""A non-finite DPO loss stops the stage before the optimizer step, naming the step, batch and pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from csr.core.errors import CSRError
from csr.data.image_hash import image_sha256
from csr.data.tiny import write_tiny_prompts
from csr.dpo.reference import pair_key, reference_settings
from csr.dpo.stage import run_dpo
from csr.models.families import get_family

DPO = {"loss": "sigmoid", "beta": 0.1, "ipo_form": "mean", "label_smoothing": 0.0, "lr": 1e-3, "scheduler": "cosine",
       "warmup_ratio": 0.0, "epochs": 1, "batch_size": 2, "grad_accumulation": 1, "weight_decay": 0.0,
       "max_grad_norm": 1.0, "train_projector": False, "reference": "precomputed", "gradient_checkpointing": False,
       "seed": 0,
       "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": r".*language_model.*\.(q_proj|v_proj)"}}


def test_nan_reference_logp_stops_dpo_at_its_batch_and_saves_nothing(tiny_models, tmp_path: Path):
    data = tmp_path / "data"
    write_tiny_prompts(data, n=4)
    prompts = json.loads((data / "prompts.json").read_text())
    pairs = [{"id": p["id"], "image": p["image"], "prompt": "Describe the image.", "chosen": " A red square.",
              "rejected": " A blue star."} for p in prompts]
    iteration = tmp_path / "iter_1"
    iteration.mkdir()
    (iteration / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    # Reference log-probs as the cache holds them (keyed by content); one of the second batch's pairs is NaN.
    entries = [{"id": p["id"], "key": pair_key(p, image_sha256(str(data / "images"), p["image"])),
                "chosen": -10.0, "rejected": -12.0} for p in pairs]
    entries[3]["chosen"] = float("nan")
    cache = {"settings": reference_settings(tiny_models.llava, "float32", "sdpa", "32-true"), "pairs": entries}
    (iteration / "ref_logps.json").write_text(json.dumps(cache))
    model_cfg = OmegaConf.create({"family": "llava", "dtype": "float32", "attn_implementation": "sdpa"})
    kwargs = {"accelerator": "cpu", "devices": 1, "deterministic": True, "enable_progress_bar": False}
    with pytest.raises(CSRError) as info:
        run_dpo(model_path=tiny_models.llava, family=get_family("llava"), pairs_path=iteration / "pairs.jsonl", adapter_dir=iteration / "adapter",
                image_root=str(data / "images"), model_cfg=model_cfg, dpo_cfg=OmegaConf.create(DPO),
                trainer_kwargs=kwargs, logger=None)
    message = str(info.value)
    assert "DPO loss is nan at global step 1, batch 1" in message
    assert f"'{pairs[3]['id']}'" in message.split("pair ids ")[1].split(")")[0]  # the NaN pair is named
    assert not (iteration / "adapter").exists()  # nothing half-trained is left to be merged
