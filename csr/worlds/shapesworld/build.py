"""`csr-train-shapesworld`: re-create the shipped ShapesWorld checkpoints from scratch on CPU, seeded.

1. render the training images (co-occurrence prior 0.95);
2. pre-train an open_clip ViT as a per-cell classifier (the one vision tower of both models);
3. train CLIP's text side against it (sentence level, hard negatives);
4. build a tiny LLaVA around the same tower and pre-train it with the Lightning SFT module;
5. save LLaVA (HF format) and CLIP (open_clip JSON + safetensors), with the config and metrics.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import open_clip
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from csr.core.io import atomic_write_json
from csr.models.checkpoint import save_model
from csr.models.clip import save_clip
from csr.models.families.llava import make_processor
from csr.models.tiny import build_tokenizer
from csr.worlds.shapesworld.clip_train import train_clip
from csr.worlds.shapesworld.convert import hf_vision_config, open_clip_visual_to_hf
from csr.worlds.shapesworld.overrides import set_fields
from csr.worlds.shapesworld.pool import render_pool
from csr.worlds.shapesworld.sft import SFTModule, SFTStream, collate_sft
from csr.worlds.shapesworld.text import DESCRIBE_PROMPTS, QUESTION, SENTENCE_TEMPLATES
from csr.worlds.shapesworld.tower import pretrain_tower
from csr.worlds.shapesworld.vocab import COLOURS, POSITIONS, SHAPES, SIZES, synonym_table

log = logging.getLogger(__name__)

CLIP_ARCH = "shapesworld-clip"
SHIPPED = Path(__file__).resolve().parent.parent.parent / "assets" / "shapesworld"


@dataclass
class TrainConfig:
    seed: int = 0
    train_images: int = 12_000
    cooccurrence: float = 0.95  # P(partner | trigger) in the training images
    caption_noise: float = 0.7  # P(caption names the absent partner | trigger without partner)
    qa_fraction: float = 0.35
    vision_width: int = 128
    vision_layers: int = 4
    patch_size: int = 16
    tower_steps: int = 600
    tower_lr: float = 2e-3
    clip_embed_dim: int = 64
    clip_text_width: int = 64
    clip_steps: int = 800
    clip_lr: float = 2e-3
    lm_hidden: int = 192
    lm_layers: int = 4
    sft_steps: int = 1500
    sft_batch: int = 48
    sft_lr: float = 1e-3
    batch_size: int = 64


def corpus() -> list[str]:
    """Every word the world uses, so the BPE tokenizer learns whole-word tokens."""
    lines = list(DESCRIBE_PROMPTS) + [QUESTION.format(shape=s) for s in SHAPES] + ["Yes.", "No."]
    for template, shape, colour, position, size in itertools.product(
        SENTENCE_TEMPLATES, SHAPES, sorted(COLOURS), POSITIONS, SIZES
    ):
        text = template.format(shape=shape, colour=colour, position=position, size=size)
        lines += [text, " " + text]  # answers follow "ASSISTANT:" after a space
    lines += list(synonym_table())
    return lines


def clip_config(c: TrainConfig) -> dict:
    return {
        "embed_dim": c.clip_embed_dim,
        "vision_cfg": {"image_size": 64, "layers": c.vision_layers, "width": c.vision_width,
                       "patch_size": c.patch_size, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": c.clip_text_width, "heads": 2,
                     "layers": 2},
    }


def build_llava(c: TrainConfig, tokenizer, vision_cfg: dict, visual) -> LlavaForConditionalGeneration:
    config = LlavaConfig(
        vision_config=hf_vision_config(vision_cfg),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=c.lm_hidden, intermediate_size=int(c.lm_hidden * 2.75),
            num_hidden_layers=c.lm_layers, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(64 // c.patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(c.seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(open_clip_visual_to_hf(visual), strict=True)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model


def train(out_dir: Path, c: TrainConfig) -> dict:
    start = time.time()
    torch.manual_seed(c.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict = {}
    clip_dir = out_dir / "clip"
    clip_dir.mkdir(exist_ok=True)
    config_path = clip_dir / f"{CLIP_ARCH}.json"
    atomic_write_json(config_path, clip_config(c))
    open_clip.add_model_config(str(config_path))
    clip_model = open_clip.create_model(CLIP_ARCH)
    clip_tokenizer = open_clip.get_tokenizer(CLIP_ARCH)

    pool = render_pool(c.seed * 1_000_000, c.train_images + 512, c.cooccurrence)
    metrics.update(pretrain_tower(clip_model.visual, pool, c.tower_steps, c.batch_size, c.tower_lr, c.seed))
    metrics.update(train_clip(clip_model, clip_tokenizer, pool, c.clip_steps, c.batch_size // 2, c.clip_lr, c.seed))
    save_clip(clip_model.half(), str(clip_dir / f"{CLIP_ARCH}.safetensors"))  # fp16 on disk: half the size
    clip_model.float()

    tokenizer = build_tokenizer(corpus(), vocab_size=640)  # room for every word
    processor = make_processor(tokenizer, 64, c.patch_size)
    model = build_llava(c, tokenizer, clip_config(c)["vision_cfg"], clip_model.visual)
    module = SFTModule(model, c.sft_lr, warmup_steps=c.sft_steps // 20, total_steps=c.sft_steps)
    stream = SFTStream(pool, processor, c.seed, c.qa_fraction, c.caption_noise, model.config.image_seq_length)
    loader = DataLoader(stream, batch_size=c.sft_batch, collate_fn=partial(collate_sft, pool=pool,
                                                                           pad_id=tokenizer.pad_token_id))
    trainer = pl.Trainer(max_steps=c.sft_steps, accelerator="cpu", precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=50)
    trainer.fit(module, loader)
    metrics["sft/final_loss"] = float(trainer.logged_metrics["sft/loss"])
    model.eval()
    save_model(model.to(torch.bfloat16), processor, str(out_dir / "llava"))  # bf16 on disk: half the size
    metrics["seconds"] = round(time.time() - start, 1)
    atomic_write_json(out_dir / "train_config.json", asdict(c))
    atomic_write_json(out_dir / "train_metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the ShapesWorld LLaVA and CLIP from scratch (CPU).")
    parser.add_argument("out_dir", nargs="?", default=str(SHIPPED))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override TrainConfig fields")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    c = TrainConfig()
    set_fields(c, args.set)
    torch.set_num_threads(os.cpu_count() or 1)
    print(json.dumps(train(Path(args.out_dir), c), indent=2))
