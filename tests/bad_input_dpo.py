"""Troubleshooting-table cases for DPO's inputs (merged into tests/test_bad_input.py's CASES).

Rows (docs/troubleshooting.md, "Bad input"):
| image | changed on disk after the search | error: `changed on disk since the search read it` |
| ref_logps.json | pairs rebuilt with other content under the same ids | recomputed: `1 of 1 reference log-probs recomputed: pairs changed` |
| ref_logps.json | reference model or its dtype changed | recomputed: `1 of 1 reference log-probs recomputed: reference model or settings changed` |

The error row raises CSRError; the two `recomputed` rows return the line DPO logged, which test_row
checks with a branch like `elif says.startswith("recomputed"): assert fragments[0] in case(ctx)`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf
from PIL import Image

from csr.data.image_hash import image_sha256
from csr.dpo.data import PairDataset
from csr.dpo.reference import pair_key, precompute_reference, reference_settings
from csr.dpo.stage import run_dpo
from csr.models.checkpoint import load_model
from csr.models.families import get_family

if TYPE_CHECKING:
    from scratch_prompts import Ctx

DPO = {"loss": "sigmoid", "beta": 0.1, "ipo_form": "mean", "label_smoothing": 0.0, "lr": 1e-3,
       "scheduler": "cosine", "warmup_ratio": 0.0, "epochs": 1, "batch_size": 1, "grad_accumulation": 1,
       "weight_decay": 0.0, "max_grad_norm": 1.0, "train_projector": False, "reference": "precomputed", "gradient_checkpointing": False, "seed": 0,
       "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": r".*language_model.*\.(q_proj|v_proj)"}}


def dpo_pair(images: Path, chosen: str = " A red square.", rid: str = "p1") -> dict:
    """A pair as the pairs stage writes it, with the hash the search took of good.png."""
    return {"id": rid, "image": "good.png", "image_sha256": image_sha256(str(images), "good.png"),
            "prompt": "Describe the image.", "input": "Describe the image.\n<image>", "chosen": chosen,
            "rejected": " A blue star."}


def train(ctx: Ctx, pairs: list[dict], model_path: str) -> dict:
    iteration = ctx.tmp / "iter_1"
    iteration.mkdir(exist_ok=True)
    (iteration / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return run_dpo(model_path=model_path, family=get_family("llava"), pairs_path=iteration / "pairs.jsonl", adapter_dir=iteration / "adapter",
                   image_root=str(ctx.images), model_cfg=OmegaConf.create({"family": "llava", "dtype": "float32", "attn_implementation": "sdpa"}),
                   dpo_cfg=OmegaConf.create(DPO), trainer_kwargs={"accelerator": "cpu", "devices": 1}, logger=None)


def _changed_image(ctx: Ctx) -> object:
    pairs = [dpo_pair(ctx.images)]
    Image.new("RGB", (8, 8), (200, 20, 30)).save(ctx.images / "good.png")  # same name, other pixels
    # A model path that does not exist: the image check must come before any model loads.
    return train(ctx, pairs, str(ctx.tmp / "not_loaded"))


def logged_reference_pass(ctx: Ctx, pairs: list[dict], dtype: str = "float32") -> str:
    """Run the reference pass into ctx's ref_logps.json; the last line it logged."""
    model, processor = load_model(ctx.tiny.llava, dtype=dtype)
    keys = [pair_key(p, image_sha256(str(ctx.images), p["image"])) for p in pairs]
    settings = reference_settings(ctx.tiny.llava, dtype, "sdpa", "32-true")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("csr.dpo.reference")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        precompute_reference(model, PairDataset(pairs, processor, str(ctx.images), get_family("llava")), keys, settings,
                             processor.tokenizer.pad_token_id, 1, ctx.tmp / "ref_logps.json",
                             {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return lines[-1]


def _rebuilt_pairs(ctx: Ctx) -> str:
    logged_reference_pass(ctx, [dpo_pair(ctx.images)])
    return logged_reference_pass(ctx, [dpo_pair(ctx.images, chosen=" A green circle.")])  # same id


def _reference_changed(ctx: Ctx) -> str:
    logged_reference_pass(ctx, [dpo_pair(ctx.images)])
    return logged_reference_pass(ctx, [dpo_pair(ctx.images)], dtype="bfloat16")


CASES: dict[tuple[str, str], Callable[[Ctx], object]] = {
    ("image", "changed on disk after the search"): _changed_image,
    ("ref_logps.json", "pairs rebuilt with other content under the same ids"): _rebuilt_pairs,
    ("ref_logps.json", "reference model or its dtype changed"): _reference_changed,
}
