"""Reward stage: search.jsonl -> rewards.jsonl (R_I for every sentence, calibrated R, scored answers)."""

from __future__ import annotations

from pathlib import Path

from csr.io import read_jsonl
from csr.predict import predict_to_jsonl
from csr.reward.module import RewardModule


def run_reward(*, scorer, cfg, search_path: Path, out_path: Path, trainer_kwargs: dict) -> dict:
    records = read_jsonl(search_path)
    module = RewardModule(scorer, cfg.reward.lam, cfg.reward.calibration, cfg.data.image_root)
    predict_to_jsonl(module, records, out_path, batch_size=cfg.search.prompts_per_batch, trainer_kwargs=trainer_kwargs)
    scored = read_jsonl(out_path)
    answers = [a for r in scored for a in r["answers"]]
    sentences = [s for a in answers for s in a["sentences"]]

    def mean(field: str) -> float | None:
        return sum(s[field] for s in sentences) / len(sentences) if sentences else None

    return {
        "prompts": len(scored),
        "answers": len(answers),
        "mean_answer_score": sum(a["score"] for a in answers) / len(answers) if answers else None,
        "mean_r_t": mean("r_t"),
        "mean_r_i": mean("r_i"),
        "mean_reward": mean("reward"),
    }
