"""The DPO stage on a pairs file with N CPU ranks (gloo), for tests/test_dpo_reference.py:
`python dpo_reference_ranks.py MODEL ITERATION_DIR IMAGE_ROOT DEVICES`. Under DDP Lightning's launcher
starts this script again for every other rank."""

from __future__ import annotations

import sys
from pathlib import Path

from bad_input_dpo import DPO
from omegaconf import OmegaConf

from csr.dpo.stage import run_dpo
from csr.models.families import get_family


def main(model: str, iteration: Path, image_root: str, devices: int) -> None:
    kwargs = {"accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
              "precision": "32-true", "deterministic": True, "enable_progress_bar": False}
    run_dpo(model_path=model, family=get_family("llava"), pairs_path=iteration / "pairs.jsonl", adapter_dir=iteration / "adapter",
            image_root=image_root, model_cfg=OmegaConf.create({"family": "llava", "dtype": "float32", "attn_implementation": "sdpa"}),
            dpo_cfg=OmegaConf.create(DPO), trainer_kwargs=kwargs, logger=None)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
