"""Reward stage: search.jsonl -> rewards.jsonl (R_I for every sentence, calibrated R, answers scored
under `pairs.rule`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from csr.core.io import read_jsonl
from csr.reward.module import RewardModule
from csr.reward.rules import PairRule, pair_rule
from csr.run.context import StageContext
from csr.run.predict import predict_to_jsonl


def run_reward(*, scorer, cfg, search_path: Path, out_path: Path, trainer_kwargs: dict) -> dict:
    records = read_jsonl(search_path)
    rule = pair_rule(cfg.pairs.rule, cfg.pairs.reference_clean)
    module = RewardModule(scorer, cfg.reward.lam, cfg.reward.calibration, cfg.data.image_root, rule)
    predict_to_jsonl(module, records, out_path, batch_size=cfg.search.prompts_per_batch, trainer_kwargs=trainer_kwargs)
    return reward_stats(read_jsonl(out_path), rule)


def reward_stats(scored: list[dict], rule: PairRule) -> dict:
    answers = [a for r in scored for a in r["answers"]]
    sentences = [s for a in answers for s in a["sentences"]]

    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]  # the reference rule's dropped sentences
        return sum(values) / len(values) if values else None

    stats = {
        "prompts": len(scored),
        "answers": len(answers),
        "mean_answer_score": mean([a["score"] for a in answers]),
        "mean_r_t": mean([s["r_t"] for s in sentences]),
        "mean_r_i": mean([s["r_i"] for s in sentences]),
        "mean_reward": mean([s["reward"] for s in sentences]),
    }
    if rule.cleans_tree:  # answers through a sentence its clean-up dropped, and why
        reasons = Counter(a["dropped"] for a in answers if "dropped" in a)
        stats["answers_dropped"] = sum(reasons.values())
        stats.update({f"answers_dropped/{reason}": n for reason, n in sorted(reasons.items())})
    return stats


def run(ctx: StageContext) -> dict:
    return run_reward(scorer=ctx.scorer(), cfg=ctx.cfg, search_path=ctx.require("search.jsonl"),
                      out_path=ctx.iter_dir / "rewards.jsonl", trainer_kwargs=ctx.trainer_kwargs)
