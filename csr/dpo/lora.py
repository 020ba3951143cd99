"""LoRA on the policy for DPO: wrapping the model, saving the adapter (atomically)."""

from __future__ import annotations

import shutil
from pathlib import Path

from peft import LoraConfig, get_peft_model

from csr.core.io import replace_dir, safetensors_write_errors


def wrap_lora(model, r: int, alpha: int, dropout: float, target_modules: str, projector: str | None):
    """LoRA on the language model's linear layers (regex); everything else frozen.

    `projector` (the family's projector module, with dpo.train_projector) is trained fully (the
    reference code did) and saved with the adapter; merge writes it into the checkpoint.
    """
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
        modules_to_save=[projector] if projector else None, task_type=None,
    )
    return get_peft_model(model, config)


def save_adapter(policy, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with safetensors_write_errors(tmp):
        policy.save_pretrained(str(tmp))
    replace_dir(tmp, out_dir)
