"""A few DeepSpeed ZeRO DPO steps on a LLaVA-1.5-7B-shaped random model; the adapter saved and reloaded equal.

The model: LLaVA-1.5-7B's dimensions (Llama-7B text: hidden 4096, MLP 11008, 32 heads, vocabulary
32064; CLIP ViT-L/14-336 vision: hidden 1024, MLP 4096, 16 heads, 336 px, 576 image tokens) with
few layers (default 4 text, 4 vision: ~1.1B parameters instead of 7B, so it builds in seconds and fits
any GPU; every per-layer shape is the 7B's). LoRA r 128 / alpha 256 on every linear layer of the
language model, as the paper preset. DPO is csr's own module and collate, the strategy is built from
conf/trainer/deepspeed_zero<2|3>.yaml as `csr` builds it, and the adapter is saved by csr's
SaveAdapter callback inside the fit.

    python experiments/gpu_check/dpo_check.py --zero 2 --out /tmp/gpu_check/zero2
    python experiments/gpu_check/dpo_check.py --cpu-dry-run --out /tmp/gpu_check/dry   # no GPU, no DeepSpeed

--cpu-dry-run builds the 7B-shaped config (parameters counted on the meta device), then trains one
step on a narrow copy (hidden sizes / 16, 1 layer each, the same 336 px images) on the CPU with
Lightning's default strategy, through the same code.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from csr.cli import CONF_DIR
from csr.data.tiny import write_tiny_prompts
from csr.distributed import fit_strategy, gathered_parameters
from csr.dpo.checkpoint import SaveAdapter, trainable_params
from csr.dpo.data import PairDataset, collate
from csr.dpo.lora import wrap_lora
from csr.dpo.module import DPOModule
from csr.models.checkpoint import load_model, save_model
from csr.models.families import get_family
from csr.models.families.llava import make_processor
from csr.models.tiny import build_tokenizer

LORA = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
R, ALPHA = 128, 256
IMAGE, PATCH = 336, 14


def llava_7b_shaped(text_layers: int, vision_layers: int, tokenizer, narrow: int = 1) -> LlavaConfig:
    """LLaVA-1.5-7B's config with fewer layers (and, for the CPU dry run, every width / `narrow`)."""
    return LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=IMAGE, patch_size=PATCH, hidden_size=1024 // narrow,
                                       intermediate_size=4096 // narrow, num_attention_heads=16 // narrow,
                                       num_hidden_layers=vision_layers, projection_dim=768 // narrow),
        text_config=LlamaConfig(vocab_size=32064, hidden_size=4096 // narrow, intermediate_size=11008 // narrow,
                                num_attention_heads=32 // narrow, num_key_value_heads=32 // narrow,
                                num_hidden_layers=text_layers, max_position_embeddings=4096, rms_norm_eps=1e-5,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=(IMAGE // PATCH) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2, projector_hidden_act="gelu",
    )


def lora_params(config: LlavaConfig, layers: int) -> int:
    """r * (in + out) per adapted linear layer: q, k, v, o (h -> h), gate, up (h -> m), down (m -> h)."""
    h, m = config.text_config.hidden_size, config.text_config.intermediate_size
    return R * (4 * 2 * h + 3 * (h + m)) * layers


def write_pairs(out: Path, n: int) -> tuple[list[dict], str]:
    write_tiny_prompts(out / "data", n=n)
    prompts = json.loads((out / "data" / "prompts.json").read_text())
    pairs = [{"id": p["id"], "image": p["image"], "prompt": "Describe the image.",
              "chosen": " A red square on the left.", "rejected": " A blue star and a moon above it."} for p in prompts]
    return pairs, str(out / "data" / "images")


class Snapshot(pl.Callback):
    """A CPU copy of the trained LoRA weights, gathered in on_train_end as SaveAdapter's (runs after it)."""

    def __init__(self, policy) -> None:
        self.policy, self.weights = policy, {}

    def on_train_end(self, trainer, pl_module) -> None:
        named = [(n, p) for n, p in self.policy.named_parameters() if p.requires_grad]
        with gathered_parameters(trainer.strategy, [p for _, p in named]):
            self.weights = {n: p.detach().float().cpu().clone() for n, p in named}


def trainer_config(zero: int):
    paths = ["run_dir=/tmp/x", "logger.tracking_uri=null", "model.path=/m", "reward.clip.weights=/w",
             "data.prompt_file=/p.json", "data.image_root=/i"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*paths, f"trainer=deepspeed_zero{zero}"]).trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zero", type=int, choices=(2, 3), default=2)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu-dry-run", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"zero": None if args.cpu_dry_run else args.zero, "text_layers": args.text_layers,
                    "vision_layers": args.vision_layers}
    start = time.time()
    tokenizer = build_tokenizer()
    shaped = llava_7b_shaped(args.text_layers, args.vision_layers, tokenizer)
    with torch.device("meta"):
        report["params_7b_shaped"] = sum(p.numel() for p in LlavaForConditionalGeneration(shaped).parameters())
    config = llava_7b_shaped(1, 1, tokenizer, narrow=16) if args.cpu_dry_run else shaped
    layers = config.text_config.num_hidden_layers
    torch.manual_seed(0)
    dtype = "float32" if args.cpu_dry_run else "bfloat16"
    save_model(LlavaForConditionalGeneration(config).to(getattr(torch, dtype)), make_processor(tokenizer, IMAGE, PATCH),
               str(args.out / "model"))
    report["build_s"] = round(time.time() - start, 1)

    pl.seed_everything(0, verbose=False)
    model, processor = load_model(str(args.out / "model"), dtype=dtype)
    model.train()  # as run_dpo trains it
    policy = wrap_lora(model, R, ALPHA, 0.0, LORA, projector=None)
    pairs, images = write_pairs(args.out, args.pairs)
    loader = DataLoader(PairDataset(pairs, processor, images, get_family("llava")), batch_size=1,
                        collate_fn=partial(collate, pad_id=processor.tokenizer.pad_token_id))
    steps = 1 if args.cpu_dry_run else args.pairs
    module = DPOModule(policy, "adapter_disabled", None, get_family("llava"), beta=0.1, loss="sigmoid", label_smoothing=0.0, ipo_form="mean",
                       lr=1e-4, weight_decay=0.0, scheduler="constant", warmup_ratio=0.0, total_steps=steps)
    adapter = args.out / "adapter"
    snapshot = Snapshot(policy)
    kwargs = ({"accelerator": "cpu", "precision": "32-true"} if args.cpu_dry_run else
              {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "strategy": fit_strategy(trainer_config(args.zero))})
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, callbacks=[SaveAdapter(policy, adapter), snapshot], **kwargs)
    start = time.time()
    trainer.fit(module, loader)
    report.update(steps=trainer.global_step, fit_s=round(time.time() - start, 1),
                  loss=float(trainer.logged_metrics["loss"]), trainable_params=trainable_params(policy),
                  expected_lora_params=lora_params(config, layers))
    if torch.cuda.is_available():
        report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    base, _ = load_model(str(args.out / "model"), dtype=dtype)
    reloaded = {n: p.detach().float() for n, p in PeftModel.from_pretrained(base, str(adapter)).named_parameters()
                if "lora_" in n}
    report["adapter_tensors"] = len(reloaded)
    report["reloaded_equal"] = reloaded.keys() == snapshot.weights.keys() and all(
        torch.equal(reloaded[n], w) for n, w in snapshot.weights.items())
    report["lora_b_trained"] = any(bool(w.abs().sum() > 0) for n, w in snapshot.weights.items() if "lora_B" in n)
    print(json.dumps(report, indent=2))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    ok = (report["reloaded_equal"] and report["lora_b_trained"] and report["steps"] == steps
          and report["trainable_params"] == report["expected_lora_params"])
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
