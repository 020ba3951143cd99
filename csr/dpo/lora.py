"""LoRA on the policy for DPO: wrapping the model, saving the adapter (atomically)."""

from __future__ import annotations

import shutil
from pathlib import Path

from peft import LoraConfig, get_peft_model

from csr.io import replace_dir, safetensors_write_errors

PROJECTOR = "multi_modal_projector"


def wrap_lora(model, r: int, alpha: int, dropout: float, target_modules: str, train_projector: bool):
    """LoRA on the language model's linear layers (regex); everything else frozen.

    `train_projector` trains the projector fully (the reference code did), saved with the adapter.
    """
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
        modules_to_save=[PROJECTOR] if train_projector else None, task_type=None,
    )
    return get_peft_model(model, config)


def save_adapter(policy, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with safetensors_write_errors(tmp):
        policy.save_pretrained(str(tmp))
    replace_dir(tmp, out_dir)
