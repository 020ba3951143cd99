"""Reward stage: R_I for every sentence of a search tree, calibrated R per sibling set, scored answers.

A LightningModule predict step over search records, so CLIP scoring shards like generation does.
"""

from __future__ import annotations

import logging

from csr.data.images import load_image
from csr.errors import CSRError
from csr.pairs.select import answer_score
from csr.predict import RecordPredictor
from csr.search.tree import Node, path_to, score_siblings, siblings_by_parent

log = logging.getLogger(__name__)


def scored_answers(nodes: list[Node]) -> list[dict]:
    """Every complete answer (root to a final node) with its per-sentence scores and answer score."""
    answers = []
    for final in (n for n in nodes if n.final):
        path = path_to(nodes, final.id)
        rewards = [n.reward for n in path]
        answers.append({
            "node": final.id,
            "text": "".join(n.text for n in path),  # exact generated characters
            "finish": final.finish,
            "sentences": [{"text": n.text, "r_t": n.r_t, "r_i": n.r_i, "reward": n.reward} for n in path],
            "score": answer_score(rewards),
        })
    return answers


class RewardModule(RecordPredictor):
    def __init__(self, scorer, lam: float, calibration: str, image_root: str):
        super().__init__()
        self.scorer, self.lam, self.calibration, self.image_root = scorer, lam, calibration, image_root

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        return [self.score(record) for record in batch]

    def score(self, record: dict) -> dict:
        base = {k: record[k] for k in ("id", "image", "prompt", "input")}
        if "skipped" in record:
            return {**base, "skipped": record["skipped"], "answers": []}
        nodes = [Node(**n) for n in record["nodes"]]
        missing = [n for n in nodes[1:] if n.r_i is None]
        if missing:  # pruned by the LM score: CLIP has not seen these sentences yet
            try:
                image = load_image(self.image_root, record["image"])
            except CSRError as err:
                raise CSRError(f"search record id={record['id']!r}: {err}") from None
            for node, r_i in zip(missing, self.scorer.relevance(record["image"], image, [n.text for n in missing]), strict=True):
                node.r_i = r_i
        for siblings in siblings_by_parent(nodes, range(1, len(nodes))).values():
            score_siblings(siblings, self.lam, self.calibration)
        return {**base, "answers": scored_answers(nodes)}
