"""The merge stage: the DPO adapter merged into a plain HF checkpoint, the next iteration's policy.

The merge runs in float32 whatever `model.dtype` is, loaded on the CPU: it moves to the run's GPU
only when the float32 model and its check fit there with the plan's headroom (csr/models/memory.py), so no
rank needs a GPU's worth of float32 weights (about 55 GiB at 13B). DPO at the paper's lr (1e-7) moves a weight
by ~1e-5, while bfloat16's spacing around a typical weight (~0.02) is ~1.2e-4: merged in bfloat16,
W + delta rounds back to W for most elements (tests/test_merge.py measures it). The merged
checkpoint is saved in `model.dtype` only when rounding to it keeps the update (UPDATE_KEPT),
otherwise in float32, so the weights on disk are the ones DPO trained and the deltas of later
iterations add up on them instead of being rounded away one by one. What a `model.dtype` load
of the saved model still sees of the update is measured too (`update/*_loaded`) and logged.
After every merge the merged model's log-probs on a few pairs must equal the adapter model's.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper

from csr.core.errors import CSRError
from csr.core.io import read_jsonl, replace_dir
from csr.models import memory as P
from csr.models.checkpoint import DTYPES, load_model, save_model
from csr.models.families.base import Family
from csr.run.context import StageContext

log = logging.getLogger(__name__)

ADAPTER = "default"  # peft's name for the one adapter csr trains
# Save in model.dtype only if rounding to it keeps this share of the updated elements and this
# cosine between the stored and the true update; else float32 (twice the disk, the update kept).
UPDATE_KEPT = 0.99
CHECK_PAIRS = P.MERGE_CHECK_PAIRS  # pairs whose log-probs the merged model must reproduce
# Merged vs adapter model, both float32: (W + BA)x and Wx + B(Ax) differ by float rounding only
# (~1e-6 on the tiny and ShapesWorld models); a wrong merge moves them by the update's own size.
CHECK_ATOL, CHECK_RTOL = 1e-3, 1e-5


# -- how much of the update a dtype keeps --------------------------------------------------------------

@dataclass
class UpdateStats:
    """Running sums over every updated tensor: stored update (kept) against the true one (delta)."""
    elements: int = 0  # elements the update changes (delta != 0)
    lost: int = 0  # of those, elements whose stored value does not change
    dot: float = 0.0
    kept_sq: float = 0.0
    delta_sq: float = 0.0

    def add(self, weight: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype) -> None:
        """weight and delta in float32; the model is stored (or loaded) in `dtype`."""
        kept = stored_update(weight, delta, dtype).double()
        delta = delta.double()
        changed = delta != 0
        self.elements += int(changed.sum())
        self.lost += int((changed & (kept == 0)).sum())
        self.dot += float((kept * delta).sum())
        self.kept_sq += float((kept * kept).sum())
        self.delta_sq += float((delta * delta).sum())

    def lost_fraction(self) -> float:
        return self.lost / self.elements if self.elements else 0.0

    def cosine(self) -> float:
        norm = math.sqrt(self.kept_sq * self.delta_sq)
        return self.dot / norm if norm else (1.0 if self.delta_sq == 0 else 0.0)

    def survives(self) -> bool:
        return 1 - self.lost_fraction() >= UPDATE_KEPT and self.cosine() >= UPDATE_KEPT

    def as_metrics(self, name: str) -> dict:
        return {f"update/lost_fraction_{name}": self.lost_fraction(), f"update/cosine_{name}": self.cosine()}


def stored_update(weight: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The change a model stored in `dtype` sees: round(W + delta) - round(W), in float32."""
    return (weight + delta).to(dtype).float() - weight.to(dtype).float()


def updates(model: PeftModel):
    """(float32 base weight, float32 update) of every LoRA layer and fully trained module (projector)."""
    for module in model.modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            weight = module.get_base_layer().weight
            yield weight.float(), module.get_delta_weight(ADAPTER).float()
        elif isinstance(module, ModulesToSaveWrapper) and ADAPTER in module.modules_to_save:
            trained = module.modules_to_save[ADAPTER].parameters()
            for base, new in zip(module.original_module.parameters(), trained, strict=True):
                yield base.float(), (new - base).float()


# -- the log-prob check -----------------------------------------------------------------------------

def check_logps(adapter: torch.Tensor, merged: torch.Tensor, base: torch.Tensor) -> dict:
    """Merged vs adapter model's summed answer log-probs (float32); the base's show the update's size."""
    diff = (merged - adapter).abs()
    limit = CHECK_ATOL + CHECK_RTOL * adapter.abs()
    return {"check/pairs": adapter.numel() // 2, "check/max_abs_diff": float(diff.max()),
            "check/max_abs_update": float((adapter - base).abs().max()), "check/passed": bool((diff <= limit).all())}


def pair_logps(model, batch: dict, device: str, family: Family) -> torch.Tensor:
    from csr.dpo.data import to_device
    from csr.dpo.module import concatenated_logps  # csr.dpo imports this module

    with torch.no_grad():
        return torch.cat(concatenated_logps(model, to_device(batch, device), family)).float().cpu()


def check_batch(pairs_path: Path, processor, image_root: str, family: Family) -> dict | None:
    """The first CHECK_PAIRS pairs as one DPO batch (chosen and rejected rows), None without pairs."""
    from csr.dpo.data import PairDataset, collate

    pairs = read_jsonl(pairs_path)[:CHECK_PAIRS] if pairs_path.exists() else []
    if not pairs:
        return None
    dataset = PairDataset(pairs, processor, image_root, family)
    return collate([dataset[i] for i in range(len(dataset))], pad_id=processor.tokenizer.pad_token_id)


def check_bytes(model, batch: dict | None) -> int:
    """GPU memory the merge needs on the check's device (csr/models/memory.py merge_check_gpu): the float32
    model with its adapter, and the language model's working set in the check's forward over `batch`
    (the vision tower's, for CHECK_PAIRS images, is far smaller)."""
    from csr.models.planning import lm_dims

    weights = sum(p.numel() for p in model.parameters()) * 4
    if batch is None:
        return weights
    rows, length = batch["input_ids"].shape
    dims = P.LlavaDims(lm_dims(model.config.get_text_config(), tied=False), P.ViTDims(0, 1, 0, 0, 0), image_tokens=0)
    return weights + P.merge_check_gpu(dims, 0, rows, length, rows * length)["working"]


def merge_device(accelerator: str, need: int) -> str:
    """Where the merge and its check run: the run's GPU when `need` bytes fit beside what it holds with
    the plan's headroom (a float32 7B with its check takes 30 GiB, 13B 55 GiB), else the CPU, where
    the model was loaded; the weights never need a GPU."""
    if accelerator == "cpu" or not torch.cuda.is_available():
        return "cpu"
    torch.cuda.empty_cache()  # blocks the earlier stages' allocator still caches count as used otherwise
    free, device = torch.cuda.mem_get_info()
    if P.fits(need + device - free, device):
        return "cuda"
    log.warning("merge: %.1f GiB in float32 does not fit the GPU beside its %.1f GiB in use: merging and checking "
                "on the CPU", need / P.GIB, (device - free) / P.GIB)
    return "cpu"


# -- the merge stage --------------------------------------------------------------------------------

def run_merge(base_path: str, family: Family, iter_dir: Path, model_cfg, accelerator: str, image_root: str) -> dict:
    """iter_dir/adapter + the iteration's starting model (of `family`) -> iter_dir/merged, a plain
    checkpoint of that family (model + processor) that from_pretrained loads; checked against the adapter
    model on iter_dir/pairs.jsonl. No adapter (an iteration without pairs): the starting model is copied."""
    adapter_dir, out_dir = iter_dir / "adapter", iter_dir / "merged"
    model, processor = load_model(base_path, family, dtype="float32",
                                  attn_implementation=model_cfg.attn_implementation)
    stats: dict = {"adapter_found": adapter_dir.exists()}
    save_dtype = model_cfg.dtype
    if adapter_dir.exists():
        model = PeftModel.from_pretrained(model, str(adapter_dir))  # on the CPU, in float32
        batch = check_batch(iter_dir / "pairs.jsonl", processor, image_root, family)
        device = merge_device(accelerator, check_bytes(model, batch))
        model.to(device)
        loaded = UpdateStats()  # the model as a model.dtype load sees it
        for weight, delta in updates(model):
            loaded.add(weight, delta, DTYPES[model_cfg.dtype])
        if not loaded.survives():
            save_dtype = "float32"
            if model_cfg.dtype != "float32":
                log.warning("merge: %s would lose %.0f%% of the update's elements (cosine %.3f): merged model saved in "
                            "float32", model_cfg.dtype, 100 * loaded.lost_fraction(), loaded.cosine())
        saved = loaded
        if save_dtype != model_cfg.dtype:
            saved = UpdateStats()
            for weight, delta in updates(model):
                saved.add(weight, delta, DTYPES[save_dtype])
        stats.update({**loaded.as_metrics("loaded"), **saved.as_metrics("saved"), "update/elements": saved.elements,
                      "device": device})
        if batch is not None:
            adapter_logps = pair_logps(model, batch, device, family)
            with model.disable_adapter():
                base_logps = pair_logps(model, batch, device, family)
        model = model.merge_and_unload()
        model.to(DTYPES[save_dtype]).float()  # the weights as saved, so the check sees what is written
        if batch is not None:
            stats.update(check_logps(adapter_logps, pair_logps(model, batch, device, family), base_logps))
            if not stats["check/passed"]:
                raise CSRError(f"merge: the merged model's log-probs differ from the adapter model's by "
                               f"{stats['check/max_abs_diff']:.3g} (update {stats['check/max_abs_update']:.3g}) on "
                               f"{stats['check/pairs']} pairs of {iter_dir / 'pairs.jsonl'}: merged model not saved")
        model.cpu()
    stats["save_dtype"] = save_dtype
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model.to(DTYPES[save_dtype]), processor, str(tmp))
    replace_dir(tmp, out_dir)
    return stats


def run(ctx: StageContext) -> dict:
    """Merge stage: adapter/ + the starting model -> merged/, the next iteration's policy; rank 0 only."""
    return run_merge(ctx.model_path, ctx.family, ctx.iter_dir, ctx.cfg.model, ctx.cfg.trainer.accelerator,
                     ctx.cfg.data.image_root)
