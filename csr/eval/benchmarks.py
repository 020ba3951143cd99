"""Evaluators on the real benchmarks' own files, with the same metric code as ShapesWorld.

`coco_chair`: describe COCO images (ids from the instances file) and score with CHAIR against the
instances + captions annotations. `pope`: answer a POPE question file (question_id, image, text,
label) and score yes/no. Paths come from `eval.coco` / `eval.pope`.
"""

from __future__ import annotations

import json
from pathlib import Path

from csr.data.prompts import PromptRecord
from csr.eval.chair import coco_chair
from csr.eval.generate import generate_answers
from csr.eval.pope import load_pope_questions, pope_metrics, yes_no
from csr.io import atomic_write_text, read_json

CHAIR_PROMPT = "Please describe this image in detail."  # the prompt CSR and LLaVA report CHAIR with


def evaluate_coco_chair(*, model, processor, scorer, eval_cfg, prompt_file: str, image_root: str,
                        out_dir: Path, trainer_kwargs: dict) -> dict:
    c = eval_cfg.coco
    images = read_json(c.instances)["images"][: eval_cfg.limit]
    records = [PromptRecord(id=str(im["id"]), image=im["file_name"], prompt=CHAIR_PROMPT, raw="") for im in images]
    answers = generate_answers(model, processor, scorer, records, c.image_root, out_dir / "answers.jsonl",
                               max_new_tokens=eval_cfg.max_new_tokens, batch_size=eval_cfg.batch_size,
                               trainer_kwargs=trainer_kwargs)
    generated = out_dir / "captions.jsonl"
    atomic_write_text(generated, "".join(json.dumps({"image_id": int(a["id"]), "caption": a["answer"]}) + "\n"
                                         for a in answers))
    return coco_chair(generated, c.instances, c.captions)


def evaluate_pope(*, model, processor, scorer, eval_cfg, prompt_file: str, image_root: str,
                  out_dir: Path, trainer_kwargs: dict) -> dict:
    p = eval_cfg.pope
    questions = load_pope_questions(p.questions)[: eval_cfg.limit]
    records = [PromptRecord(id=str(q["question_id"]), image=q["image"], prompt=q["text"], raw="") for q in questions]
    replies = generate_answers(model, processor, None, records, p.image_root, out_dir / "answers.jsonl",
                               max_new_tokens=8, batch_size=eval_cfg.batch_size, trainer_kwargs=trainer_kwargs)
    said = {r["id"]: yes_no(r["answer"]) for r in replies}
    return pope_metrics([said[r.id] for r in records], [q["label"] == "yes" for q in questions])
