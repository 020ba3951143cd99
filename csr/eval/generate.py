"""The generic evaluator: answer an eval prompt file with the iteration's model and measure.

Answers are greedy, or with `eval.temperature` > 0 sampled (no top-k or top-p cut), seeded per batch by
`eval.sample_seed` and the batch's record ids, so the same run samples the same answers.

Generation is a LightningModule predict step (so it shards later) that appends to answers.jsonl.
Every evaluator answers through `generate_answers`, honours data.on_error (a bad prompt or image is
skipped and counted, or raises naming it) and records with its metrics the `settings` it ran with.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from csr.core.errors import CSRError
from csr.core.io import read_jsonl
from csr.data.images import load_image
from csr.data.prompts import PromptRecord, load_prompts
from csr.models.chat import drop_overlong
from csr.models.checkpoint import special_token_ids
from csr.models.families.base import Family
from csr.run.predict import RecordPredictor, predict_to_jsonl

log = logging.getLogger(__name__)


def decoding(temperature: float, sample_seed: int) -> str:
    """How GenerateModule chose tokens, as the evaluators' settings record it (special tokens are
    suppressed and answers stop at eos either way)."""
    return "greedy" if temperature == 0 else f"sampled (temperature {temperature}, seed {sample_seed})"


def sampling(eval_cfg) -> dict:
    """The eval config's decoding keys, as generate_answers and decoding take them."""
    return {"temperature": eval_cfg.temperature, "sample_seed": eval_cfg.sample_seed}


def batch_seed(seed: int, ids: list[str]) -> int:
    """The sampling seed of one batch: the same records under the same seed draw the same answers."""
    digest = hashlib.sha256("\n".join([str(seed), *ids]).encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


# What the run's summary table shows: (column, metric key).
SUMMARY = (("generated R_I", "mean_r_i"), ("generated tokens", "mean_answer_tokens"))


class GenerateModule(RecordPredictor):
    def __init__(self, model, processor, family: Family, image_root: str, max_new_tokens: int, scorer=None,
                 on_error: str = "raise", source: str = "eval prompts", temperature: float = 0.0, sample_seed: int = 0):
        super().__init__()
        self.temperature, self.sample_seed = temperature, sample_seed
        self.policy, self.processor, self.image_root = model, processor, image_root
        self.max_new_tokens, self.scorer = max_new_tokens, scorer
        self.on_error, self.source = on_error, source  # source: the input file, named in errors
        self.family = family  # the run's (csr/loop.py), as every stage's
        self.end_ids = self.family.end_token_ids(processor, model)
        self.suppress = special_token_ids(processor, self.end_ids)

    def predict_step(self, batch: list[PromptRecord], batch_idx: int = 0) -> list[dict]:
        good, images, out = [], [], {}
        for prompt in batch:
            try:
                images.append(load_image(self.image_root, prompt.image))
                good.append(prompt)
            except CSRError as err:
                where = f"{self.source}: record id={prompt.id!r}"
                if self.on_error != "skip":
                    raise CSRError(f"{where}: {err}") from None
                log.warning("skipping %s: %s", where, err)
                out[prompt.id] = {"id": prompt.id, "image": prompt.image, "prompt": prompt.prompt,
                                  "skipped": "bad_image", "error": str(err)}
        if good:
            out.update((r["id"], r) for r in self.answer(good, images))
        return [out[p.id] for p in batch]

    def _token_choice(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False}
        # top_k=0 and top_p=1 undo any cut a checkpoint's generation_config asks for: plain sampling
        return {"do_sample": True, "temperature": self.temperature, "top_k": 0, "top_p": 1.0}

    @contextlib.contextmanager
    def _seeded(self, batch: list[PromptRecord]):
        """Sampling draws from a stream seeded by the batch's records; fork_rng leaves the caller's random
        state as it was. Greedy answers draw nothing, so they skip both."""
        if self.temperature == 0:
            yield
            return
        device = self.policy.device
        forked = {"devices": []} if device.type == "cpu" else {"devices": [device], "device_type": device.type}
        with torch.random.fork_rng(**forked):
            torch.manual_seed(batch_seed(self.sample_seed, [str(p.id) for p in batch]))
            yield

    @torch.inference_mode()
    def answer(self, batch: list[PromptRecord], images: list) -> list[dict]:
        family = self.family
        inputs = family.encode(self.processor, [family.chat_prompt(self.processor, p.prompt) for p in batch], images)
        inputs.update(family.image_inputs(inputs, self.policy.dtype))
        tok = self.processor.tokenizer
        with self._seeded(batch):
            out = self.policy.generate(
                **inputs, **self._token_choice(), max_new_tokens=self.max_new_tokens,  # counts answer tokens only
                eos_token_id=sorted(self.end_ids), pad_token_id=tok.pad_token_id, suppress_tokens=self.suppress,
            )
        records = []
        for prompt, image, row in zip(batch, images, out[:, inputs["input_ids"].shape[1]:], strict=True):
            ids = row.tolist()
            end = next((i for i, t in enumerate(ids) if t in self.end_ids), None)
            ended = end is not None
            ids = ids[:end] if ended else [t for t in ids if t != tok.pad_token_id]
            answer = tok.decode(ids, skip_special_tokens=True)
            record = {"id": prompt.id, "image": prompt.image, "prompt": prompt.prompt, "answer": answer,
                      "answer_tokens": len(ids), "finish": "eos" if ended else "max_new_tokens"}
            if self.scorer is not None:
                record["r_i"] = self.scorer.relevance(prompt.image, image, [answer])[0] if answer.strip() else 0.0
            records.append(record)
        return records


def answer_metrics(records: list[dict]) -> dict:
    n = len(records)
    if n == 0:
        return {"answers": 0}
    metrics = {
        "answers": n,
        "mean_answer_tokens": sum(r["answer_tokens"] for r in records) / n,
        "mean_answer_words": sum(len(r["answer"].split()) for r in records) / n,
        "empty_answers": sum(1 for r in records if not r["answer"].strip()),
        "eos_rate": sum(1 for r in records if r["finish"] == "eos") / n,
    }
    if all("r_i" in r for r in records):
        metrics["mean_r_i"] = sum(r["r_i"] for r in records) / n
    return metrics


def set_digest(items: Iterable[str]) -> str:
    """sha256 of the sorted distinct items, one per line: the same set gives the same hash in any order."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(set(items))).encode()).hexdigest()


def image_set(images: Iterable[str]) -> dict:
    """n_images and image_ids_sha256 (set_digest of the image paths under the image root), so two
    runs show at a glance whether they scored the same images."""
    distinct = set(images)
    return {"n_images": len(distinct), "image_ids_sha256": set_digest(distinct)}


def skip_counts(skips: dict[str, int]) -> dict:
    """`skipped` (total) and `skipped/<reason>`, the names the search stage reports its skips under."""
    return {"skipped": sum(skips.values()), **{f"skipped/{k}": v for k, v in sorted(skips.items()) if v}}


def generate_answers(model, processor, family: Family, scorer, records: list[PromptRecord], image_root, out_path: Path, *,
                     max_new_tokens: int, batch_size: int, trainer_kwargs: dict, on_error: str = "raise",
                     source: str | None = None, temperature: float = 0.0,
                     sample_seed: int = 0) -> tuple[list[dict], dict[str, int]]:
    """Answers to `records` (greedy, or sampled at `temperature` > 0), appended to `out_path`
    (resumable); returns (the answers to `records`, in their order, skip counts by reason).

    A prompt too long for the model (`too_long`) or an unreadable image (`bad_image`) raises naming
    `source` (the input file) and the record, or with on_error="skip" is left out and counted.
    With `scorer` each answer also gets its R_I; the evaluators all answer through here."""
    source = source or f"{out_path.parent.name} eval prompts"
    records, too_long = drop_overlong(records, processor, model, family, image_root, max_new_tokens, on_error, source)
    module = GenerateModule(model, processor, family, str(image_root), max_new_tokens, scorer, on_error, str(source),
                            temperature, sample_seed)
    module.counts = f"{out_path.stem} batches"  # an evaluator may write several files
    predict_to_jsonl(module, records, out_path, batch_size=batch_size, trainer_kwargs=trainer_kwargs)
    # Only this call's records: the file may also hold answers to records no longer asked for.
    written = {str(r["id"]): r for r in read_jsonl(out_path)}
    mine = [written[r.id] for r in records]
    skips = Counter(r["skipped"] for r in mine if "skipped" in r)
    if too_long:
        skips["too_long"] = too_long
    return [r for r in mine if "skipped" not in r], dict(skips)


def evaluate_generate(*, model, processor, family: Family, scorer, eval_cfg, prompt_file: str, image_root: str,
                      out_dir: Path, trainer_kwargs: dict, on_error: str = "raise") -> dict:
    prompts, skips = load_prompts(prompt_file, image_root, limit=eval_cfg.limit, on_error=on_error)
    answers, more = generate_answers(
        model, processor, family, scorer, prompts, image_root, out_dir / "answers.jsonl",
        max_new_tokens=eval_cfg.max_new_tokens, batch_size=eval_cfg.batch_size, trainer_kwargs=trainer_kwargs,
        on_error=on_error, source=prompt_file, **sampling(eval_cfg),
    )
    texts = {a["prompt"] for a in answers}
    settings = {
        # The prompts come from the file, one per record: named when they are all the same.
        "prompt": texts.pop() if len(texts) == 1 else "per record (prompt_file)",
        "prompt_file": str(prompt_file),
        "prompts_sha256": set_digest(f"{a['id']}\t{a['prompt']}" for a in answers),
        "decoding": decoding(**sampling(eval_cfg)), "max_new_tokens": eval_cfg.max_new_tokens,
        **image_set(a["image"] for a in answers),
    }
    return {**answer_metrics(answers), **skip_counts(Counter(skips) + Counter(more)), "settings": settings}
