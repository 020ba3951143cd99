"""The DPO and merge sections, on the saved full-width model: csr's DPO stage itself
(csr.dpo.stage.run_dpo: its reference pass, LoRA, DPOModule, trainer) under the preset's ZeRO-2
strategy with the precomputed reference (step-0 log-ratio, reference pass and step peaks against
csr-plan), csr against TRL's DPOTrainer on the same pairs, and csr's merge stage (csr.merge.stage.run_merge)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from measure import against_plan, fit_kwargs, planned, sync, timed
from models import build_model, build_processor
from PIL import Image
from transformers import AutoProcessor, TrainerCallback

from csr.core.io import read_jsonl
from csr.dpo.data import PairDataset
from csr.dpo.lora import save_adapter, wrap_lora
from csr.dpo.stage import run_dpo
from csr.merge.stage import run_merge
from csr.models.checkpoint import load_model, save_model
from csr.models.families import get_family

STEP0_TOL = 1e-3  # nats: the precomputed reference and the policy's first forward compute the same thing


class Probe(pl.Callback):
    """Peaks before the fit (load + the reference pass) and of the fit, each step's time, step 0's log-ratios."""

    def __init__(self, meter, beta: float):
        self.meter, self.beta = meter, beta
        self.times: list[float] = []
        self.before_fit: dict = {}
        self.fit: dict = {}
        self.step0: dict = {}

    def setup(self, trainer, pl_module, stage: str) -> None:  # after run_dpo's reference pass, before the strategy
        if stage == "fit":
            self.before_fit = self.meter.read()
            self.meter.reset()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        sync()
        self.times.append(time.perf_counter() - self.start)
        if batch_idx == 0:
            m = trainer.callback_metrics
            self.step0 = {"log_ratio_chosen": float(m["rewards/chosen"]) / self.beta,
                          "log_ratio_rejected": float(m["rewards/rejected"]) / self.beta}

    def on_train_end(self, trainer, pl_module) -> None:
        self.fit = self.meter.read()


def pair_lengths(cfg, model_dir: Path, pairs_path: Path, images: Path) -> tuple[int, int]:
    """The longest prompt (image tokens included) and answer of the pairs, as DPO tokenizes them."""
    processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    data = PairDataset(read_jsonl(pairs_path), processor, str(images), get_family(cfg.model.family))
    items = [data[i] for i in range(len(data))]
    return (max(len(i["prompt_ids"]) for i in items),
            max(max(len(i["chosen_ids"]), len(i["rejected_ids"])) - 1 for i in items))  # - 1: the plan adds EOS


def step_time(times: list[float]) -> float | None:
    """Median step time after the first (which pays for the allocator and kernel choice)."""
    return statistics.median(times[1:]) if len(times) > 1 else None


def csr_dpo(cfg, model_dir: Path, pairs_path: Path, images: Path, out: Path, meter) -> dict:
    """csr's DPO stage as `csr` runs it, with a probe among its callbacks."""
    probe = Probe(meter, cfg.dpo.beta)
    meter.reset()
    stats = run_dpo(model_path=str(model_dir), family=get_family(cfg.model.family), pairs_path=pairs_path,
                    adapter_dir=out / "adapter", image_root=str(images), model_cfg=cfg.model, dpo_cfg=cfg.dpo,
                    trainer_kwargs={**fit_kwargs(cfg), "callbacks": [probe]}, logger=None)
    return {"strategy": cfg.trainer.strategy, "precision": cfg.trainer.precision, "reference": cfg.dpo.reference,
            "steps": stats["steps"], "trainable_params": stats["trainable_params"], "step_times": probe.times,
            "step_s": step_time(probe.times), "step0": probe.step0, "peak_before_fit": probe.before_fit,
            "peak_fit": probe.fit}


def zero2_step(cfg, model_dir: Path, pairs_path: Path, images: Path, out: Path, meter) -> dict:
    """The preset's trainer (ZeRO-2 bf16 on a GPU) with the precomputed reference: step 0's log-ratio
    must be 0; the reference pass's and the steps' peaks against csr-plan."""
    result = csr_dpo(cfg, model_dir, pairs_path, images, out, meter)
    worst = max(abs(v) for v in result["step0"].values())
    result["step0_check"] = {"max_abs_log_ratio": worst, "tolerance": STEP0_TOL, "passed": worst <= STEP0_TOL}
    prompt, answer = pair_lengths(cfg, model_dir, pairs_path, images)
    predicted = planned(cfg, model_dir, prompt, answer)
    on = "gpu_gib" if torch.cuda.is_available() else "host_gib"
    result["reference_memory"] = against_plan(result["peak_before_fit"], predicted, "reference", on)
    result["dpo_memory"] = against_plan(result["peak_fit"], predicted, "dpo", on)
    return result


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, *args, **kwargs):
        sync()
        self.start = time.perf_counter()

    def on_step_end(self, *args, **kwargs):  # after backward and the optimizer step
        sync()
        self.times.append(time.perf_counter() - self.start)


def trl_dpo(cfg, model_dir: Path, pairs_path: Path, images: Path, out: Path, meter, dry: bool) -> dict:
    """TRL's DPOTrainer on the same pairs, LoRA, batch size, beta and precision (bf16 autocast on a GPU),
    its reference the disabled adapter (TRL refuses precomputed reference log-probs for images)."""
    import trl
    from datasets import Dataset
    from peft import LoraConfig

    family = get_family(cfg.model.family)
    model, processor = load_model(str(model_dir), family, dtype=cfg.model.dtype,
                                  attn_implementation=cfg.model.attn_implementation)
    pairs = read_jsonl(pairs_path)
    rows = {"prompt": [family.chat_prompt(processor, p["prompt"]) for p in pairs],
            "chosen": [p["chosen"] for p in pairs], "rejected": [p["rejected"] for p in pairs],
            "images": [[Image.open(images / p["image"]).convert("RGB")] for p in pairs]}
    d = cfg.dpo
    args = trl.DPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=d.batch_size, learning_rate=d.lr, max_steps=len(pairs),
        lr_scheduler_type="cosine", max_grad_norm=d.max_grad_norm, beta=d.beta, precompute_ref_log_probs=False,
        max_length=None, report_to=[], save_strategy="no", logging_steps=1, use_cpu=dry, dataloader_num_workers=0,
        seed=0, disable_tqdm=True, bf16=not dry, gradient_checkpointing=False)
    lora = LoraConfig(r=d.lora.r, lora_alpha=d.lora.alpha, lora_dropout=d.lora.dropout,
                      target_modules=d.lora.target_modules or family.lora_targets())
    timer = StepTimer()
    meter.reset()
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), processing_class=processor,
                             peft_config=lora, callbacks=[timer])
    trainer.train()
    return {"version": trl.__version__, "steps": len(timer.times), "step_times": timer.times,
            "step_s": step_time(timer.times), "peak": meter.read()}


def against_trl(csr: dict, trl_result: dict) -> dict:
    """csr's step time and peak over TRL's: csr passes at <= 1.1 each (experiments/bench_dpo's target)."""
    on = "gpu_gib" if torch.cuda.is_available() else "host_gib"
    time_ratio = csr["step_s"] / trl_result["step_s"] if csr["step_s"] and trl_result["step_s"] else None
    memory_ratio = csr["peak_fit"][on] / trl_result["peak"][on]
    return {"step_s_ratio": time_ratio, "peak_ratio": memory_ratio, "memory": on, "limit": 1.1,
            "passed": time_ratio is not None and time_ratio <= 1.1 and memory_ratio <= 1.1}


def merge_check(cfg, spec, base_dir: Path, pairs_path: Path, images: Path, iter_dir: Path, meter, device: str) -> dict:
    """csr's merge stage on `spec` (the full width, fewer decoder layers: it loads the model in float32),
    with an adapter of random B (as after training): its peak against csr-plan's merge, its own check."""
    dtype = getattr(torch, cfg.model.dtype)
    model = build_model(spec, device, dtype)
    save_model(model, build_processor(spec), str(base_dir))
    del model
    family = get_family(cfg.model.family)
    model, _ = load_model(str(base_dir), family, dtype=cfg.model.dtype)
    lora = cfg.dpo.lora
    policy = wrap_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules or family.lora_targets(), None)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1e-3)
    iter_dir.mkdir(parents=True, exist_ok=True)
    save_adapter(policy, iter_dir / "adapter")
    (iter_dir / "pairs.jsonl").write_text(pairs_path.read_text())
    del model, policy
    meter.reset()
    stats, seconds = timed(run_merge, str(base_dir), get_family(cfg.model.family), iter_dir, cfg.model,
                           cfg.trainer.accelerator, str(images))
    peak = meter.read()
    prompt, answer = pair_lengths(cfg, base_dir, pairs_path, images)
    predicted = planned(cfg, base_dir, prompt, answer)
    text = spec.config.get_text_config()
    return {"text_layers": text.num_hidden_layers, "hidden": text.hidden_size, "seconds": seconds,
            "check_passed": stats.get("check/passed"), "save_dtype": stats.get("save_dtype"), "peak": peak,
            "host_memory": against_plan(peak, predicted, "merge_host", "host_rise_gib"),
            "gpu_memory": against_plan(peak, predicted, "merge", "gpu_gib") if peak["gpu_gib"] else None}
