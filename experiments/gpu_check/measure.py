"""What the check's sections share: the run's config (csr's own presets), peak memory, time, and
csr-plan's prediction for what was measured."""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from pathlib import Path

import torch
from models import IMAGE_SIZE

from csr.commands import plan as plan_cli
from csr.models import memory as P
from csr.models.families import get_family

GIB = 1 << 30
_LIBC = ctypes.CDLL("libc.so.6")


def compose_cfg(preset: str, model_dir: Path, work: Path, dry: bool, overrides: list[str] = ()):
    """The paper's LLaVA-1.5-7B experiment (beam 5, K 5, LoRA r128/a256, ZeRO-2 bf16) on `preset`'s
    model (conf/model/<preset>.yaml), shortened where the check has no time for the paper's length:
    3 sentences of at most 24 tokens, 4 prompts a batch, 4 DPO pairs each an optimizer step, one
    device (the preset's -1 would also make the reference pass a one-rank DDP). Pruning
    by the LM score (R_T): CLIP's cost is not what this check measures. The dry run: the CPU trainer,
    float32, sentences of 8 tokens."""
    base = ["experiment=paper_llava15_7b", f"model={preset}", f"model.path={model_dir}", f"run_dir={work}/run",
            "logger.tracking_uri=null", "reward.clip.weights=/unused", f"data.prompt_file={work}/prompts.json",
            f"data.image_root={work}/images", "search.prune_by=lm", "search.max_sentences=3",
            f"search.max_new_tokens_per_sentence={8 if dry else 24}", "search.prompts_per_batch=4",
            "dpo.grad_accumulation=1", "trainer.devices=1"]
    if dry:
        base += ["trainer=cpu", "model.dtype=float32"]
    return plan_cli.compose([*base, *overrides])


def fit_kwargs(cfg) -> dict:
    """The Lightning arguments csr's DPO stage fits with (csr/dpo/stage.py run, csr/loop.py trainer_kwargs)."""
    from csr.core.distributed import fit_strategy

    t = cfg.trainer
    return {"accelerator": t.accelerator, "devices": t.devices, "num_nodes": t.num_nodes, "precision": t.precision,
            "deterministic": t.deterministic, "strategy": fit_strategy(t), "log_every_n_steps": t.log_every_n_steps,
            "enable_progress_bar": False}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakMeter:
    """Peak memory since the last reset: the GPU's allocated bytes (torch's allocator, weights included),
    and the process's resident bytes, absolute and above their level at the reset (sampled every 10 ms:
    the merge and the dry run work in host memory)."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.base = self.host = _rss()
        self.gpu_base = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.host = max(self.host, _rss())

    def reset(self) -> None:
        gc.collect()
        _LIBC.malloc_trim(0)  # freed heap back to the OS, so the level at the reset is honest
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.base = self.host = _rss()
        # what an earlier part of the section still holds counts in the next peak: recorded beside it
        self.gpu_base = torch.cuda.memory_allocated() if self.cuda else None

    def read(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
        self.host = max(self.host, _rss())
        return {"gpu_gib": round(torch.cuda.max_memory_allocated() / GIB, 3) if self.cuda else None,
                "gpu_at_reset_gib": None if self.gpu_base is None else round(self.gpu_base / GIB, 3),
                "host_gib": round(self.host / GIB, 3), "host_rise_gib": round((self.host - self.base) / GIB, 3)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args, **kwargs):
    """fn(*args, **kwargs) and its wall seconds, the GPU's queue drained at both ends."""
    sync()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync()
    return out, time.perf_counter() - start


def planned(cfg, model_dir: Path, prompt_length: int, answer_tokens: int | None) -> dict:
    """csr-plan's prediction (csr/models/planning.py, one device) in GiB per stage, and the merge's host
    RAM as `merge_host`, for prompts of `prompt_length` tokens (image included; the images are
    IMAGE_SIZE) and answers of `answer_tokens`; {"error": ...} when csr-plan cannot plan this model."""
    try:
        family = get_family(cfg.model.family)
        dims, _ = plan_cli.model_dims(str(model_dir), cfg.model.name, family, IMAGE_SIZE[::-1])
        clip = plan_cli.clip_dims(cfg.reward.clip.arch, cfg.reward.clip.config_json)
        prompt = prompt_length - dims.image_tokens
        stages = plan_cli.plan(cfg, family, dims, clip, 1, prompt, answer_tokens)
        answers = answer_tokens if answer_tokens is not None else cfg.search.max_answer_tokens
        stages["merge_host"] = plan_cli.merge_parts(cfg, family, dims, prompt, answers)[0]
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the check records why and goes on
        return {"error": f"csr-plan failed: {type(err).__name__}: {err}"}
    return {stage: round(P.total(parts) / GIB, 3) for stage, parts in stages.items()}


def against_plan(measured: dict, predicted: dict, stage: str, on: str) -> dict:
    """A measured peak beside csr-plan's for `stage`; within plan: measured <= predicted (the plan is an
    upper bound: a GPU it says fits must fit). `on`: which of measured's figures the plan predicts."""
    row = {"measured_gib": measured.get(on), "memory": on, "predicted_gib": predicted.get(stage)}
    if "error" in predicted:
        row["plan_error"] = predicted["error"]
    if row["measured_gib"] and row["predicted_gib"]:
        row["measured_over_predicted"] = round(row["measured_gib"] / row["predicted_gib"], 3)
        row["within_plan"] = row["measured_gib"] <= row["predicted_gib"]
    return row
