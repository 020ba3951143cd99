"""The ShapesWorld evaluator: CHAIR and recall of greedy descriptions, their well-formedness and
attribute binding errors (grammar.py), POPE from yes/no answers.

Ground truth is exact (the generator knows every object), so hallucination is measured, not
estimated. Answers go through the same generation module as every evaluator.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from csr.core.errors import CSRError
from csr.data.pope_questions import QUESTION_TEMPLATE, STRATEGIES
from csr.data.prompts import PromptRecord
from csr.eval.chair import caption_report, chair_scores
from csr.eval.generate import answer_metrics, decoding, generate_answers, image_set, sampling, skip_counts
from csr.eval.pope import pope_metrics, read_pope_questions, yes_no
from csr.worlds.shapesworld.grammar import grammar_metrics
from csr.worlds.shapesworld.splits import (
    HELD_OUT_SIZE,
    ensure_split,
    ground_truth,
    scene_objects,
    split_identity,
)
from csr.worlds.shapesworld.vocab import PAIRS, synonym_table


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


DESCRIBE_PROMPT = "Describe this image in detail."
POPE_MAX_NEW_TOKENS = 4  # "Yes." / "No."
# What the run's summary table shows: (column, metric key).
SUMMARY = (("CHAIR_S", "chair_s"), ("CHAIR_I", "chair_i"), ("recall", "recall"), ("POPE F1", "pope_f1"),
           ("partner halluc.", "partner_hallucination"), ("answer R_I", "mean_r_i"),
           ("answer words", "mean_answer_words"), ("well-formed", "well_formed"),
           ("binding errors", "binding_errors"))


def _pope(model, processor, family, eval_cfg, split_dir: Path, images: set[str], out_dir: Path, trainer_kwargs: dict,
          on_error: str) -> tuple[dict, Counter[str], list[str]]:
    """POPE of each strategy on `images`: (metrics, skip counts, the images its scored questions showed)."""
    metrics: dict = {}
    skips: Counter[str] = Counter()
    shown: list[str] = []
    f1 = []
    for strategy in STRATEGIES:
        questions, bad = read_pope_questions(split_dir / f"pope_{strategy}.jsonl", on_error)
        questions = [q for q in questions if q["image"] in images]
        records = [PromptRecord(id=f"{strategy}_{q['question_id']}", image=q["image"], prompt=q["text"], raw="")
                   for q in questions]
        replies, more = generate_answers(model, processor, family, None, records, split_dir / "images",
                                         out_dir / f"pope_{strategy}.jsonl", max_new_tokens=POPE_MAX_NEW_TOKENS,
                                         batch_size=eval_cfg.batch_size, trainer_kwargs=trainer_kwargs,
                                         on_error=on_error, source=str(split_dir / f"pope_{strategy}.jsonl"),
                                         **sampling(eval_cfg))
        said = {r["id"]: yes_no(r["answer"], eval_cfg.pope.parser) for r in replies}
        scored = [(said[r.id], q) for r, q in zip(records, questions, strict=True) if r.id in said]
        result = pope_metrics([s for s, _ in scored], [q["label"] == "yes" for _, q in scored])
        metrics.update({f"pope_{strategy}/{k}": v for k, v in result.items()})
        f1.append(result["f1"])
        skips += Counter(bad) + Counter(more)
        shown += [q["image"] for _, q in scored]
    metrics["pope_f1"] = sum(f1) / len(f1)
    return metrics, skips, shown


def evaluate_shapesworld(*, model, processor, family, scorer, eval_cfg, prompt_file: str, image_root: str,
                         out_dir: Path, trainer_kwargs: dict, on_error: str = "raise") -> dict:
    if eval_cfg.limit is not None and eval_cfg.limit > HELD_OUT_SIZE:
        raise CSRError(f"config key 'eval.limit': {eval_cfg.limit} is more than the {HELD_OUT_SIZE} images of a"
                       f" ShapesWorld held-out split")
    # Always the whole split, whatever the limit: its POPE negatives are drawn over all of it.
    split_dir = ensure_split(eval_cfg.shapesworld.root, eval_cfg.shapesworld.split, HELD_OUT_SIZE)
    truth = ground_truth(split_dir)
    ids = sorted(truth)[: eval_cfg.limit]
    describe = [PromptRecord(id=i, image=f"{i}.png", prompt=DESCRIBE_PROMPT, raw="") for i in ids]
    answers, skips = generate_answers(model, processor, family, scorer, describe, split_dir / "images",
                                      out_dir / "answers.jsonl", max_new_tokens=eval_cfg.max_new_tokens,
                                      batch_size=eval_cfg.batch_size, trainer_kwargs=trainer_kwargs,
                                      on_error=on_error, **sampling(eval_cfg), source=str(split_dir))
    answers = [a for a in answers if a["id"] in truth]
    metrics = chair_scores([a["answer"] for a in answers], [truth[a["id"]] for a in answers], synonym_table())
    metrics.update(answer_metrics(answers))
    metrics["partner_hallucination"] = partner_hallucination_rate(answers, truth)
    objects = scene_objects(split_dir)
    metrics.update(grammar_metrics([a["answer"] for a in answers], [objects[a["id"]] for a in answers]))
    pope, pope_skips, shown = {}, Counter(), []  # pope_images: 0 (a selection on CHAIR alone, csr/run/selection.py)
    if eval_cfg.shapesworld.pope_images > 0:
        pope, pope_skips, shown = _pope(model, processor, family, eval_cfg, split_dir,
                                        {f"{i}.png" for i in ids[: eval_cfg.shapesworld.pope_images]},
                                        out_dir, trainer_kwargs, on_error)
    metrics.update(pope)
    metrics.update(skip_counts(Counter(skips) + pope_skips))
    how = decoding(**sampling(eval_cfg))
    metrics["settings"] = {
        "split": split_identity(split_dir), "prompt": DESCRIBE_PROMPT, "decoding": how,
        "max_new_tokens": eval_cfg.max_new_tokens, **image_set(a["image"] for a in answers),
        "pope": {"prompt": QUESTION_TEMPLATE, "decoding": how, "max_new_tokens": POPE_MAX_NEW_TOKENS,
                 "parser": eval_cfg.pope.parser, **image_set(shown)} if pope else None,
    }
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
