"""The ShapesWorld evaluator: CHAIR and recall of greedy descriptions, POPE from yes/no answers.

Ground truth is exact (the generator knows every object), so hallucination is measured, not
estimated. Answers go through the same generation module as every evaluator.
"""

from __future__ import annotations

from pathlib import Path

from csr.data.prompts import PromptRecord
from csr.data.shapesworld.splits import ensure_split, ground_truth
from csr.data.shapesworld.vocab import PAIRS, synonym_table
from csr.eval.chair import caption_report, chair_scores
from csr.eval.generate import answer_metrics, generate_answers
from csr.eval.pope import STRATEGIES, load_pope_questions, pope_metrics, yes_no


def partner_hallucination_rate(answers: list[dict], truth: dict[str, set[str]]) -> float:
    """Of the images that show a trigger without its partner, the share whose answer names the partner:
    the language prior this world plants, measured directly."""
    synonyms = synonym_table()
    hits = total = 0
    for a in answers:
        gt = truth[a["id"]]
        missing = {PAIRS[s] for s in gt if s in PAIRS and PAIRS[s] not in gt}
        if missing:
            total += 1
            hits += bool(missing & set(caption_report(a["answer"], gt, synonyms)["hallucinated"]))
    return hits / total if total else 0.0


def evaluate_shapesworld(*, model, processor, scorer, eval_cfg, prompt_file: str, image_root: str,
                         out_dir: Path, trainer_kwargs: dict) -> dict:
    split_dir = ensure_split(eval_cfg.shapesworld_root, eval_cfg.split, eval_cfg.limit)
    truth = ground_truth(split_dir)
    ids = sorted(truth)[: eval_cfg.limit]
    describe = [PromptRecord(id=i, image=f"{i}.png", prompt="Describe this image in detail.", raw="") for i in ids]
    answers = generate_answers(model, processor, scorer, describe, split_dir / "images", out_dir / "answers.jsonl",
                               max_new_tokens=eval_cfg.max_new_tokens, batch_size=eval_cfg.batch_size,
                               trainer_kwargs=trainer_kwargs)
    answers = [a for a in answers if a["id"] in truth]
    metrics = chair_scores([a["answer"] for a in answers], [truth[a["id"]] for a in answers], synonym_table())
    metrics.update(answer_metrics(answers))
    metrics["partner_hallucination"] = partner_hallucination_rate(answers, truth)
    images = {f"{i}.png" for i in ids[: eval_cfg.pope_images]}
    f1 = []
    for strategy in STRATEGIES:
        questions = [q for q in load_pope_questions(split_dir / f"pope_{strategy}.jsonl") if q["image"] in images]
        records = [PromptRecord(id=f"{strategy}_{q['question_id']}", image=q["image"], prompt=q["text"], raw="")
                   for q in questions]
        replies = generate_answers(model, processor, None, records, split_dir / "images",
                                   out_dir / f"pope_{strategy}.jsonl", max_new_tokens=4,  # "Yes." / "No."
                                   batch_size=eval_cfg.batch_size, trainer_kwargs=trainer_kwargs)
        said = {r["id"]: yes_no(r["answer"]) for r in replies}
        result = pope_metrics([said[r.id] for r in records], [q["label"] == "yes" for q in questions])
        metrics.update({f"pope_{strategy}/{k}": v for k, v in result.items()})
        f1.append(result["f1"])
    metrics["pope_f1"] = sum(f1) / len(f1)
    return metrics


def pair_hallucination(pairs: list[dict], truth: dict[str, set[str]]) -> dict:
    """CHAIR_S and recall of the chosen and of the rejected answers: does the reward prefer the
    answers that hallucinate less? (Checked against ground truth before any training.)"""
    synonyms = synonym_table()
    known = [p for p in pairs if p["id"] in truth]
    out = {}
    for side in ("chosen", "rejected"):
        scores = chair_scores([p[side] for p in known], [truth[p["id"]] for p in known], synonyms)
        out[f"{side}/chair_s"], out[f"{side}/recall"] = scores["chair_s"], scores["recall"]
    return out
