"""Evaluators on the real benchmarks' own files, with the same metric code as ShapesWorld.

`coco_chair`: describe COCO images (ids from the instances file) and score with CHAIR against the
instances + captions annotations. `pope`: answer a POPE question file (question_id, image, text,
label) and score yes/no. Paths come from `eval.coco` / `eval.pope`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from csr.core.io import atomic_write_text, read_json
from csr.data.prompts import PromptRecord
from csr.eval.chair import coco_chair
from csr.eval.generate import decoding, generate_answers, image_set, sampling, set_digest, skip_counts
from csr.eval.pope import pope_metrics, read_pope_questions, yes_no

CHAIR_PROMPT = "Please describe this image in detail."  # the prompt CSR and LLaVA report CHAIR with
POPE_MAX_NEW_TOKENS = 8  # room for "Yes, there is a ..." : the verdict is in the first words
# What the run's summary table shows of each: (column, metric key).
COCO_CHAIR_SUMMARY = (("COCO CHAIR_S", "chair_s"), ("COCO CHAIR_I", "chair_i"), ("COCO recall", "recall"))
POPE_SUMMARY = (("POPE acc", "accuracy"), ("POPE F1 (bench)", "f1"))


def evaluate_coco_chair(*, model, processor, family, scorer, eval_cfg, prompt_file: str, image_root: str,
                        out_dir: Path, trainer_kwargs: dict, on_error: str = "raise") -> dict:
    c = eval_cfg.coco
    images = read_json(c.instances)["images"][: eval_cfg.limit]
    records = [PromptRecord(id=str(im["id"]), image=im["file_name"], prompt=CHAIR_PROMPT, raw="") for im in images]
    answers, skips = generate_answers(model, processor, family, scorer, records, c.image_root, out_dir / "answers.jsonl",
                                      max_new_tokens=eval_cfg.max_new_tokens, batch_size=eval_cfg.batch_size,
                                      trainer_kwargs=trainer_kwargs, on_error=on_error, source=c.instances,
                                      **sampling(eval_cfg))
    generated = out_dir / "captions.jsonl"
    atomic_write_text(generated, "".join(json.dumps({"image_id": int(a["id"]), "caption": a["answer"]}) + "\n"
                                         for a in answers))
    settings = {"prompt": CHAIR_PROMPT, "decoding": decoding(**sampling(eval_cfg)),
                "max_new_tokens": eval_cfg.max_new_tokens,
                "chair_variant": eval_cfg.chair.variant, **image_set(a["image"] for a in answers)}
    return {**coco_chair(generated, c.instances, c.captions, variant=eval_cfg.chair.variant),
            **skip_counts(skips), "settings": settings}


def evaluate_pope(*, model, processor, family, scorer, eval_cfg, prompt_file: str, image_root: str,
                  out_dir: Path, trainer_kwargs: dict, on_error: str = "raise") -> dict:
    p = eval_cfg.pope
    questions, skips = read_pope_questions(p.questions, on_error)
    questions = questions[: eval_cfg.limit]
    records = [PromptRecord(id=str(q["question_id"]), image=q["image"], prompt=q["text"], raw="") for q in questions]
    replies, more = generate_answers(model, processor, family, None, records, p.image_root, out_dir / "answers.jsonl",
                                     max_new_tokens=POPE_MAX_NEW_TOKENS, batch_size=eval_cfg.batch_size,
                                     trainer_kwargs=trainer_kwargs, on_error=on_error, source=p.questions,
                                     **sampling(eval_cfg))
    said = {r["id"]: yes_no(r["answer"], p.parser) for r in replies}
    scored = [(said[r.id], q) for r, q in zip(records, questions, strict=True) if r.id in said]
    settings = {"prompt": "per question (questions)", "questions": str(p.questions),
                "questions_sha256": set_digest(f"{q['question_id']}\t{q['text']}\t{q['label']}" for _, q in scored),
                "decoding": decoding(**sampling(eval_cfg)), "max_new_tokens": POPE_MAX_NEW_TOKENS,
                "parser": p.parser,
                **image_set(q["image"] for _, q in scored)}
    return {**pope_metrics([s for s, _ in scored], [q["label"] == "yes" for _, q in scored]),
            **skip_counts(Counter(skips) + Counter(more)), "settings": settings}
