"""Pairs stage: chosen/rejected per prompt from the scored answers, every score kept, skips counted.
The choice is the pair rule's the reward stage scored the answers under (csr/reward/rules).

Also writes the two exchange layouts: the LLaVA conversation JSON the reference code emitted and
the prompt/chosen/rejected/images layout of TRL's DPOTrainer.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from csr.core.io import atomic_write_json, atomic_write_text, read_jsonl
from csr.data.prompts import resolve_image_path
from csr.pairs.filters import failed_filter
from csr.reward.rules import pair_rule
from csr.run.context import StageContext


def make_pair(record: dict, filters: Sequence[str]) -> tuple[dict | None, str | None]:
    """(pair, None) or (None, skip reason) for one reward record."""
    if "skipped" in record:
        return None, record["skipped"]
    rule = pair_rule(record.get("rule", "mean"))  # the pair rule the reward stage scored these answers under
    # A None score is an answer the rule's clean-up dropped (e.g. through a sentence under 4 characters).
    answers = [a for a in record["answers"] if a["score"] is not None and failed_filter(a["text"], filters) is None]
    choice = rule.choose([a["score"] for a in answers], [a["text"] for a in answers])
    if choice.skip:
        return None, choice.skip
    chosen, rejected = answers[choice.chosen], answers[choice.rejected]
    return {
        "id": record["id"],
        "image": record["image"],
        # The search's sha256 of the image file it read, carried by the reward record (None in runs
        # written before search hashed images); DPO refuses the pair if the file has changed since.
        "image_sha256": record.get("image_sha256"),
        "prompt": record["prompt"],
        "input": record["input"],
        "chosen": chosen["text"],
        "rejected": rejected["text"],
        "chosen_score": chosen["score"],
        "rejected_score": rejected["score"],
        "margin": rule.margin(chosen["score"], rejected["score"]),
        "chosen_sentences": chosen["sentences"],
        "rejected_sentences": rejected["sentences"],
        "n_answers": len(record["answers"]),
        "n_filtered": len(record["answers"]) - len(answers),
    }, None


def to_llava(pair: dict) -> dict:
    """The reference code's layout; the human turn is the raw prompt with its <image> placeholder."""
    human = {"from": "human", "value": pair["input"]}
    return {
        "id": pair["id"],
        "image": pair["image"],
        "conversations": [human, {"from": "gpt", "value": pair["chosen"].strip()}],
        "rejected_conversations": [human, {"from": "gpt", "value": pair["rejected"].strip()}],
    }


def to_trl(pair: dict, image_root: str) -> dict:
    """TRL's conversational DPO layout (the trainer applies the chat template itself)."""

    def assistant(text: str) -> list[dict]:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    return {
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": pair["prompt"]}]}],
        "chosen": assistant(pair["chosen"].strip()),
        "rejected": assistant(pair["rejected"].strip()),
        "images": [str(resolve_image_path(image_root, pair["image"]))],
    }


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def pair_stats(pairs: Sequence[dict], skips: Counter, n_prompts: int) -> dict:
    def sentence_mean(side: str, field: str) -> float | None:
        return _mean(s[field] for p in pairs for s in p[f"{side}_sentences"] if s[field] is not None)

    stats = {"prompts": n_prompts, "pairs": len(pairs), "skipped": sum(skips.values())}
    stats.update({f"skipped/{reason}": n for reason, n in sorted(skips.items())})
    for side in ("chosen", "rejected"):
        stats[f"{side}/score"] = _mean(p[f"{side}_score"] for p in pairs)
        for field in ("r_t", "r_i", "reward"):
            stats[f"{side}/{field}"] = sentence_mean(side, field)
    stats["margin"] = _mean(p["margin"] for p in pairs)
    return stats


def build_pairs(rewards_path: Path, out_dir: Path, filters: Sequence[str], image_root: str,
                export_llava: bool, export_trl: bool) -> dict:
    records = read_jsonl(rewards_path)
    pairs, skips = [], Counter()
    for record in records:
        pair, skip = make_pair(record, filters)
        if pair is None:
            skips[skip] += 1
        else:
            pairs.append(pair)
    # Small and fast to rebuild, so written whole and atomically rather than appended.
    atomic_write_text(out_dir / "pairs.jsonl", "".join(_line(p) for p in pairs))
    if export_llava:
        atomic_write_json(out_dir / "pairs_llava.json", [to_llava(p) for p in pairs])
    if export_trl:
        atomic_write_text(out_dir / "pairs_trl.jsonl", "".join(_line(to_trl(p, image_root)) for p in pairs))
    return pair_stats(pairs, skips, len(records))


def _line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def run(ctx: StageContext) -> dict:
    """Pairs stage: rewards.jsonl -> pairs.jsonl (and the exports); rank 0 only (files alone)."""
    p = ctx.cfg.pairs
    return build_pairs(ctx.require("rewards.jsonl"), ctx.iter_dir, list(p.filters), ctx.cfg.data.image_root,
                       p.export_llava, p.export_trl)
