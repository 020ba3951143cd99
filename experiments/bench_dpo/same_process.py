"""DPO step arithmetic, csr against TRL, in one process, step by step in turn: the ratio a shared machine
cannot skew (a change of load hits both sides within seconds of each other).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_dpo/same_process.py --workload small --steps 12
    .venv/bin/python experiments/bench_dpo/same_process.py --tiny --out /tmp/same_process   # checks it runs

bench.py times each real trainer (csr's Lightning stage, TRL's DPOTrainer) in its own process; this
times what a step computes, without either framework's loop around it, on the same checkpoint, pairs and
LoRA (bench.py's `prepare`), with the reference from the adapter disabled on both sides:

- csr: the reference log-probs with the adapter disabled, then `concatenated_logps` + `dpo_loss`, backward,
  clipping at 1.0, AdamW (what `DPOModule.training_step` and Lightning's optimizer step do);
- TRL: `DPOTrainer.training_step` on the batch its own collator makes (reference forward, policy forward,
  loss, backward), clipping at 1.0, AdamW.

Each side has its own model. The steps alternate csr, TRL, csr, ...; each side's time is the median over
its steps after the warm-up, the ratio csr / TRL the median of the ratios of adjacent steps. Prints one
JSON line and writes same_process.json under --out (this folder by default).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# bench.py's prepare and TRL setup (a file of this folder, loaded by path: "bench" is also a package's name).
_spec = importlib.util.spec_from_file_location("bench_dpo_bench", HERE / "bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def csr_step(paths: dict, lr: float):
    """A callable running one csr DPO step on the first pairs of the workload."""
    from csr.core.io import read_jsonl
    from csr.dpo.data import PairDataset, collate
    from csr.dpo.lora import wrap_lora
    from csr.dpo.loss import dpo_loss
    from csr.dpo.module import concatenated_logps
    from csr.models.checkpoint import load_model
    from csr.models.families import get_family

    family = get_family("llava")
    model, processor = load_model(paths["model"])
    dataset = PairDataset(read_jsonl(Path(paths["pairs"])), processor, paths["images"], family)
    batch = collate([dataset[i] for i in range(bench.PAIRS_PER_STEP)], processor.tokenizer.pad_token_id)
    policy = wrap_lora(model, bench.LORA["r"], bench.LORA["alpha"], bench.LORA["dropout"], family.lora_targets(),
                       None).train()
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)

    def step() -> None:
        with torch.no_grad(), policy.disable_adapter():
            ref_chosen, ref_rejected = concatenated_logps(policy, batch, family)
        chosen, rejected = concatenated_logps(policy, batch, family)
        losses, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, loss_type="sigmoid",
                                label_smoothing=0.0, ipo_form="mean", chosen_lengths=batch["chosen_lengths"],
                                rejected_lengths=batch["rejected_lengths"])
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def trl_step(paths: dict, lr: float, out: Path):
    """A callable running one TRL DPOTrainer step on the first batch its dataloader gives."""
    trainer = bench.trl_trainer(paths, out, lr)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    trainer.current_gradient_accumulation_steps = 1  # what its training loop sets before each step

    def step() -> None:
        trainer.training_step(model, dict(batch))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="small", choices=sorted(bench.BUILDERS))
    parser.add_argument("--steps", type=int, default=12, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="the tiny model, 2 steps a side, results under --out")
    parser.add_argument("--out", type=Path, default=HERE, help="where same_process.json goes")
    args = parser.parse_args()
    if args.tiny:
        if args.out == HERE:
            parser.error("--tiny writes its results under --out, never over this study's: give --out")
        args.workload, args.steps, args.warmup = "tiny", 2, 1
    torch.set_num_threads(args.threads)
    paths = bench.prepare(args.workload, 1)
    sides = {"csr": csr_step(paths, 1e-5), "trl": trl_step(paths, 1e-5, Path(paths["out"]) / "trl_same_process")}
    times: dict[str, list[float]] = {name: [] for name in sides}
    loads = []
    for _ in range(args.warmup + args.steps):
        loads.append(os.getloadavg()[0])
        for name, step in sides.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    timed = {name: t[args.warmup :] for name, t in times.items()}
    result = {
        "workload": paths["name"], "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
        "torch": torch.__version__, "trl": bench.version("trl"), "load": [min(loads), max(loads)],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "csr_step_s": statistics.median(timed["csr"]), "trl_step_s": statistics.median(timed["trl"]),
        "ratio": statistics.median(c / t for c, t in zip(timed["csr"], timed["trl"], strict=True)),
        "times": timed,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "times"}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "same_process.json"
    saved = json.loads(path.read_text()) if path.exists() and args.out == HERE else {}
    saved[paths["name"]] = result
    path.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
