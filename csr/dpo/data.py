"""Pairs -> token tensors for DPO: prompt (image tokens expanded) + answer + EOS, labels on the answer only."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Dataset

from csr.core.errors import CSRError
from csr.core.identity import file_sha256
from csr.data.images import load_image
from csr.data.prompts import resolve_image_path
from csr.models.chat import IGNORE
from csr.models.families.base import Family

log = logging.getLogger(__name__)


def check_images(pairs: list[dict], image_root: str) -> list[str]:
    """The sha256 of every pair's image now; a pair whose image differs from the search's is refused.

    Pairs from runs before search hashed its images carry no hash: they are counted and said once.
    """
    digests, unhashed = [], 0
    for pair in pairs:
        try:
            path = resolve_image_path(image_root, pair["image"])
            if not path.is_file():
                raise CSRError(f"image {path}: file not found")
            digest = file_sha256(path)
        except (CSRError, OSError) as err:
            raise CSRError(f"pair id={pair['id']!r}: {err}") from None
        expected = pair.get("image_sha256")
        if expected is None:
            unhashed += 1
        elif digest != expected:
            raise CSRError(
                f"pair id={pair['id']!r}: image {path} changed on disk since the search read it "
                f"(sha256 {expected[:12]}..., now {digest[:12]}...); restore the file, or run the "
                "iteration again from stage=search"
            )
        digests.append(digest)
    if unhashed:
        log.warning("%d of %d pairs carry no image hash (written before csr hashed images): their images are "
                    "not checked against the search's", unhashed, len(pairs))
    return digests


class PairDataset(Dataset):
    def __init__(self, pairs: list[dict], processor: Any, image_root: str, family: Family,
                 ref_logps: list[tuple[float, float]] | None = None):
        self.pairs, self.processor, self.image_root, self.ref_logps = pairs, processor, image_root, ref_logps
        self.family = family

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        pair = self.pairs[i]
        try:
            image = load_image(self.image_root, pair["image"])
        except CSRError as err:
            raise CSRError(f"pair id={pair['id']!r}: {err}") from None
        family, tok = self.family, self.processor.tokenizer
        inputs = family.encode(self.processor, [family.chat_prompt(self.processor, pair["prompt"])], [image])
        end = family.answer_end_id(self.processor)  # the chat template's end of turn

        def answer(text: str) -> list[int]:
            return tok(text, add_special_tokens=False)["input_ids"] + [end]

        item = {
            "id": pair["id"],
            "prompt_ids": inputs["input_ids"][0].tolist(),
            "chosen_ids": answer(pair["chosen"]),
            "rejected_ids": answer(pair["rejected"]),
            # token types of the prompt (text 0 / image): answers and padding are text
            "prompt_types": {key: inputs[key][0].tolist() for key in family.token_keys},
            "image": {key: inputs[key] for key in family.image_keys if key in inputs},  # batch dim 1
        }
        if self.ref_logps is not None:
            item["ref_chosen"], item["ref_rejected"] = self.ref_logps[i]
        return item


def collate(items: list[dict], pad_id: int) -> dict[str, Any]:
    """Chosen rows first, then rejected rows (one concatenated forward), right-padded; one image per
    pair (both rows of a pair share it: the vision tower runs once per image). `image` holds the
    family's image inputs of the pairs, `types` its token types per row."""
    sequences, labels, types = [], [], {key: [] for key in items[0]["prompt_types"]}
    for side in ("chosen_ids", "rejected_ids"):
        for item in items:
            sequences.append(item["prompt_ids"] + item[side])
            labels.append([IGNORE] * len(item["prompt_ids"]) + item[side])
            for key, prompt_types in item["prompt_types"].items():
                types[key].append(prompt_types + [0] * len(item[side]))
    width = max(len(s) for s in sequences)
    batch = {
        "ids": [item["id"] for item in items],
        "input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
        "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for lab in labels]),
        "types": {key: torch.tensor([t + [0] * (width - len(t)) for t in rows]) for key, rows in types.items()},
        "image": {key: concat_padded([item["image"][key] for item in items]) for key in items[0]["image"]},
    }
    # Answer tokens (+ EOS) per completion: what IPO's per-token form divides by (TRL's completion mask).
    batch["chosen_lengths"] = torch.tensor([len(item["chosen_ids"]) for item in items])
    batch["rejected_lengths"] = torch.tensor([len(item["rejected_ids"]) for item in items])
    if "ref_chosen" in items[0]:
        batch["ref_bits"] = float32_bits([[item["ref_chosen"], item["ref_rejected"]] for item in items])
    return batch


# The precomputed reference log-probs travel in the batch as the bits of their float32 values, in an
# int32 tensor: Lightning's precision plugins cast every floating tensor of a batch in convert_input
# (DeepSpeed's and bf16-true's to bf16, whose spacing at a summed log-prob of -200 is 1 nat), and
# leave integer tensors alone. So the loss sees the float32 the reference pass wrote, under every preset.
def float32_bits(values: list[list[float]]) -> torch.Tensor:
    """[pairs, 2] (chosen, rejected) float32 values as int32 bit patterns (a view, no rounding)."""
    return torch.tensor(values, dtype=torch.float32).view(torch.int32)


def reference_from_batch(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen and rejected reference log-probs (float32) that collate packed into `batch`."""
    values = batch["ref_bits"].view(torch.float32)
    return values[:, 0], values[:, 1]


def concat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One tensor from per-example processor outputs: each zero-padded in every dim after the first to
    the largest, then concatenated on dim 0. Tiling families pad a batch's images to its most crops
    (and drop all-zero crops again); patch-list families (Qwen) only concatenate."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pad = [p for d in reversed(range(1, t.dim())) for p in (0, shape[d - 1] - t.shape[d])]
        padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.cat(padded)


def to_device(batch: dict, device: torch.device | str) -> dict:
    """`batch` with every tensor (nested dicts included) on `device`."""
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """[rows, T] bool: the positions whose logits predict a labelled (answer) token. Only these need
    the LM head and a log-softmax over the vocabulary (image and prompt positions are ~75%)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def sequence_logps(answer_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label) over each row's answer tokens, from the logits at answer_positions(labels)
    only ([N, vocab], rows in order, as logits[answer_positions(labels)] lays them out)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    token_logps = torch.gather(answer_logits.float().log_softmax(-1), 1, targets[mask].unsqueeze(-1)).squeeze(-1)
    # Put back at their positions (zeros elsewhere) and summed over the row as the full-width sum was:
    # the same additions in the same order, so the sums equal the full-logits version's to the bit.
    per_position = torch.zeros(mask.shape, dtype=token_logps.dtype, device=token_logps.device)
    return per_position.masked_scatter(mask, token_logps).sum(-1)
