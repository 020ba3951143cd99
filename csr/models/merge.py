"""LoRA adapters: wrapping a policy, saving the adapter, merging it into a plain HF checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model

from csr.io import safetensors_write_errors
from csr.models.llava import load_llava, save_llava

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


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place, so a crash never leaves a half-written one."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def save_adapter(policy, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with safetensors_write_errors(tmp):
        policy.save_pretrained(str(tmp))
    replace_dir(tmp, out_dir)


def merge_adapter(base_path: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str,
                  attn_implementation: str | None) -> None:
    """base + adapter -> a plain Llava checkpoint (model + processor) that from_pretrained loads."""
    out_dir = Path(out_dir)
    model, processor = load_llava(base_path, dtype=dtype, attn_implementation=attn_implementation)
    if Path(adapter_dir).exists():
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_llava(model, processor, str(tmp))
    replace_dir(tmp, out_dir)
