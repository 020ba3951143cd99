"""Supervised pre-training of the ShapesWorld LLaVA (the "base model" CSR then improves).

A LightningModule over an endless stream of (image, prompt, answer) samples: detailed
descriptions (with the planted co-occurrence prior) and balanced yes/no questions. The vision
tower stays frozen; the projector and the language model learn.
"""

from __future__ import annotations

import random

import pytorch_lightning as pl
import torch
from torch.utils.data import IterableDataset
from transformers import get_cosine_schedule_with_warmup

from csr.models.chat import IGNORE, generation_prompt
from csr.worlds.shapesworld.pool import Pool
from csr.worlds.shapesworld.text import DESCRIBE_PROMPTS, describe, question


class SFTStream(IterableDataset):
    """Endless samples drawn from the training pool with a seeded generator."""

    def __init__(self, pool: Pool, processor, seed: int, qa_fraction: float, noise: float, n_image_tokens: int):
        self.pool, self.processor, self.seed = pool, processor, seed
        self.qa_fraction, self.noise = qa_fraction, noise
        tok = processor.tokenizer
        image = processor.image_token
        self._prompt_cache: dict[str, list[int]] = {}
        self._expand = lambda text: text.replace(image, image * n_image_tokens)
        self.tok = tok

    def prompt_ids(self, prompt: str) -> list[int]:
        if prompt not in self._prompt_cache:
            text = self._expand(generation_prompt(self.processor, prompt))
            self._prompt_cache[prompt] = self.tok(text)["input_ids"]
        return self._prompt_cache[prompt]

    def __iter__(self):
        rng = random.Random(self.seed)
        n = len(self.pool.scenes) - 512  # the last 512 images are held out
        while True:
            i = rng.randrange(n)
            scene = self.pool.scenes[i]
            if rng.random() < self.qa_fraction:
                prompt, answer = question(scene, rng)
            else:
                prompt, answer = rng.choice(DESCRIBE_PROMPTS), describe(scene, rng, self.noise)
            # The answer continues "ASSISTANT:" after a space, as generation writes it.
            answer_ids = self.tok(" " + answer, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            yield {"index": i, "prompt_ids": self.prompt_ids(prompt), "answer_ids": answer_ids}


def collate_sft(items: list[dict], pool: Pool, pad_id: int) -> dict:
    seqs = [it["prompt_ids"] + it["answer_ids"] for it in items]
    labels = [[IGNORE] * len(it["prompt_ids"]) + it["answer_ids"] for it in items]
    width = max(len(s) for s in seqs)
    return {
        "input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
        "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for lab in labels]),
        "pixel_values": pool.batch(torch.tensor([it["index"] for it in items])),
    }


class SFTModule(pl.LightningModule):
    def __init__(self, model, lr: float, warmup_steps: int, total_steps: int):
        super().__init__()
        self.model, self.lr, self.warmup_steps, self.total_steps = model, lr, warmup_steps, total_steps
        self.model.model.vision_tower.requires_grad_(False)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("sft/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.01)
        schedule = get_cosine_schedule_with_warmup(optimizer, self.warmup_steps, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
