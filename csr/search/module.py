"""The search as a LightningModule predict step: a batch of prompts in, one JSONL record per prompt out."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence

import torch

from csr.core.errors import CSRError
from csr.data.image_hash import image_sha256
from csr.data.images import load_image
from csr.data.prompts import PromptRecord
from csr.models.families.base import Family
from csr.reward.tree import Node
from csr.run.predict import RecordPredictor
from csr.search.decode import DecodeSettings
from csr.search.engine import RelevanceFn, SearchSettings, TreeSearch

log = logging.getLogger(__name__)


def tree_record(prompt: PromptRecord, nodes: Sequence[Node], image_digest: str) -> dict:
    finals = [n for n in nodes if n.final]
    return {
        "id": prompt.id,
        "image": prompt.image,
        "image_sha256": image_digest,  # of the file this search read: DPO refuses it once it changes
        "prompt": prompt.prompt,
        "input": prompt.raw,
        "nodes": [n.to_json() for n in nodes],
        "stats": {
            "nodes_expanded": sum(1 for n in nodes if n.kept),
            "sentences": len(nodes) - 1,
            "answers": len(finals),
        },
    }


def skip_record(prompt: PromptRecord, reason: str, message: str) -> dict:
    return {"id": prompt.id, "image": prompt.image, "prompt": prompt.prompt, "input": prompt.raw, "skipped": reason, "error": message}


class SearchModule(RecordPredictor):
    counts = "prompt batches"
    def __init__(
        self, model, processor, family: Family, settings: SearchSettings, decode: DecodeSettings,
        relevance: RelevanceFn | None, image_root: str, on_error: str, seed: int,
    ):
        super().__init__()
        self.policy = model
        self.engine = TreeSearch(model, processor, family, settings, decode, relevance)
        self.image_root, self.on_error, self.seed = image_root, on_error, seed

    def predict_step(self, batch: list[PromptRecord], batch_idx: int = 0) -> list[dict]:
        good, images, digests, out = [], [], [], {}
        for prompt in batch:
            try:
                images.append(load_image(self.image_root, prompt.image))
                digests.append(image_sha256(self.image_root, prompt.image))
                good.append(prompt)
            except CSRError as err:
                if self.on_error != "skip":
                    raise CSRError(f"prompt id={prompt.id!r}: {err}") from None
                log.warning("skipping prompt %s: %s", prompt.id, err)
                out[prompt.id] = skip_record(prompt, "bad_image", str(err))
        if good:
            # Seeded by the prompts themselves, so a resumed run samples what the first run would have.
            ids = ",".join(p.id for p in good).encode()
            # On the module's device (Lightning moved the policy there): tokens are sampled where the logits are.
            generator = torch.Generator(device=self.device)
            self.engine.decode.generator = generator.manual_seed(self.seed + zlib.crc32(ids))
            trees = self.engine.search([p.prompt for p in good], images, [p.image for p in good])
            for prompt, nodes, digest in zip(good, trees, digests, strict=True):
                out[prompt.id] = tree_record(prompt, nodes, digest)
        return [out[p.id] for p in batch]
