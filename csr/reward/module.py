"""Reward stage: R_I for every sentence of a search tree, calibrated R per sibling set, the answers
scored under `pairs.rule` (csr.reward.answers).

A LightningModule predict step over search records, so CLIP scoring shards like generation does.
"""

from __future__ import annotations

import logging

from csr.core.errors import CSRError
from csr.data.image_hash import image_sha256
from csr.data.images import load_image
from csr.reward.answers import score_tree
from csr.reward.rules import PairRule
from csr.reward.rules.mean import MEAN
from csr.reward.tree import Node
from csr.run.predict import RecordPredictor

log = logging.getLogger(__name__)


class RewardModule(RecordPredictor):
    counts = "prompt batches"
    def __init__(self, scorer, lam: float, calibration: str, image_root: str, rule: PairRule = MEAN):
        super().__init__()
        self.scorer, self.lam, self.calibration, self.image_root = scorer, lam, calibration, image_root
        self.rule = rule  # pairs.rule: the answer score written here is that rule's

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        return [self.score(record) for record in batch]

    def score(self, record: dict) -> dict:
        base = {k: record[k] for k in ("id", "image", "prompt", "input")}
        if "image_sha256" in record:  # the image's content hash, when the search recorded it
            base["image_sha256"] = record["image_sha256"]
        if "skipped" in record:
            return {**base, "skipped": record["skipped"], "answers": []}
        nodes = [Node(**n) for n in record["nodes"]]
        missing = [n for n in nodes[1:] if n.r_i is None]
        if missing:  # pruned by the LM score: CLIP has not seen these sentences yet
            try:
                image = load_image(self.image_root, record["image"])
                expected = record.get("image_sha256")  # the sentences the search scored saw that image
                if expected is not None and image_sha256(self.image_root, record["image"]) != expected:
                    raise CSRError(f"image {record['image']} changed on disk since the search read it (sha256 "
                                   f"{expected[:12]}...): restore the file, or run the iteration again from stage=search")
            except CSRError as err:
                raise CSRError(f"search record id={record['id']!r}: {err}") from None
            for node, r_i in zip(missing, self.scorer.relevance(record["image"], image, [n.text for n in missing]), strict=True):
                node.r_i = r_i
        return {**base, **score_tree(nodes, self.lam, self.calibration, self.rule)}
