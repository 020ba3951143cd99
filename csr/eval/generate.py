"""The generic evaluator: answer an eval prompt file with the iteration's model, greedy, and measure.

Generation is a LightningModule predict step (so it shards later) that appends to answers.jsonl.
"""

from __future__ import annotations

from pathlib import Path

import torch

from csr.data.images import load_image
from csr.data.prompts import PromptRecord, load_prompts
from csr.io import read_jsonl
from csr.models.chat import drop_overlong, generation_prompt
from csr.models.llava import special_token_ids
from csr.predict import RecordPredictor, predict_to_jsonl


class GenerateModule(RecordPredictor):
    def __init__(self, model, processor, image_root: str, max_new_tokens: int, scorer=None):
        super().__init__()
        self.policy, self.processor, self.image_root = model, processor, image_root
        self.max_new_tokens, self.scorer = max_new_tokens, scorer
        self.suppress = special_token_ids(processor)

    @torch.inference_mode()
    def predict_step(self, batch: list[PromptRecord], batch_idx: int = 0) -> list[dict]:
        images = [load_image(self.image_root, p.image) for p in batch]
        texts = [generation_prompt(self.processor, p.prompt) for p in batch]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.policy.dtype)
        tok = self.processor.tokenizer
        out = self.policy.generate(
            **inputs, do_sample=False, max_new_tokens=self.max_new_tokens,  # counts answer tokens only
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, suppress_tokens=self.suppress,
        )
        records = []
        for prompt, image, row in zip(batch, images, out[:, inputs["input_ids"].shape[1]:], strict=True):
            ids = row.tolist()
            ended = tok.eos_token_id in ids
            ids = ids[: ids.index(tok.eos_token_id)] if ended else [t for t in ids if t != tok.pad_token_id]
            answer = tok.decode(ids, skip_special_tokens=True)
            record = {"id": prompt.id, "image": prompt.image, "prompt": prompt.prompt, "answer": answer,
                      "answer_tokens": len(ids), "finish": "eos" if ended else "max_new_tokens"}
            if self.scorer is not None:
                record["r_i"] = self.scorer.relevance(prompt.image, image, [answer])[0] if answer.strip() else 0.0
            records.append(record)
        return records


def answer_metrics(records: list[dict]) -> dict:
    n = len(records)
    if n == 0:
        return {"answers": 0}
    metrics = {
        "answers": n,
        "mean_answer_tokens": sum(r["answer_tokens"] for r in records) / n,
        "mean_answer_words": sum(len(r["answer"].split()) for r in records) / n,
        "empty_answers": sum(1 for r in records if not r["answer"].strip()),
        "eos_rate": sum(1 for r in records if r["finish"] == "eos") / n,
    }
    if all("r_i" in r for r in records):
        metrics["mean_r_i"] = sum(r["r_i"] for r in records) / n
    return metrics


def generate_answers(model, processor, scorer, records: list[PromptRecord], image_root, out_path: Path, *,
                     max_new_tokens: int, batch_size: int, trainer_kwargs: dict) -> list[dict]:
    """Greedy answers to `records`, appended to `out_path` (resumable); returns every answer written there.

    With `scorer` each answer also gets its R_I; the evaluators all answer through here."""
    # Evaluation has no skip mode: a prompt that cannot fit would be scored on garbage.
    records, _ = drop_overlong(records, processor, model, max_new_tokens, "raise", f"{out_path.parent.name} eval prompts")
    module = GenerateModule(model, processor, str(image_root), max_new_tokens, scorer)
    predict_to_jsonl(module, records, out_path, batch_size=batch_size, trainer_kwargs=trainer_kwargs)
    return read_jsonl(out_path)


def evaluate_generate(*, model, processor, scorer, eval_cfg, prompt_file: str, image_root: str,
                      out_dir: Path, trainer_kwargs: dict) -> dict:
    prompts, _ = load_prompts(prompt_file, image_root, limit=eval_cfg.limit)
    return answer_metrics(generate_answers(
        model, processor, scorer, prompts, image_root, out_dir / "answers.jsonl",
        max_new_tokens=eval_cfg.max_new_tokens, batch_size=eval_cfg.batch_size, trainer_kwargs=trainer_kwargs,
    ))
