"""DPO benchmark: csr's DPO stage against TRL's DPOTrainer, same model, pairs, LoRA and batch size.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_dpo/bench.py --threads 1
    .venv/bin/python experiments/bench_dpo/bench.py --tiny --out /tmp/bench_dpo   # checks it runs (seconds)

Each trainer runs in its own process (so each peak RSS is its own), on the same saved checkpoint and
pairs, in rounds: every round runs the three trainers once, in alternating order, so csr's and TRL's
runs sit side by side in time and a change of the machine's load hits both; the csr / TRL ratio is
taken per round and its median reported. TRL refuses to precompute reference log-probs for vision
datasets, so the like-for-like comparison is csr with `dpo.reference=adapter_disabled` (TRL's way with
a LoRA policy): a step is a no-grad reference forward, a forward + backward over chosen and rejected,
and an optimizer step. csr's default, `precomputed`, is timed too. Writes results.json and
step_time.png beside this file and the table into README.md (between the results markers); `--tiny`
runs the csr-make-tiny model for one step in this process and writes only under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench_search"))  # the benchmark models are the search benchmark's
from workloads import CACHE, mid, shapesworld, tiny  # noqa: E402

from csr.core.io import atomic_write_text  # noqa: E402
from csr.data.tiny import write_tiny_prompts  # noqa: E402
from csr.models.checkpoint import save_model  # noqa: E402
from csr.models.families import get_family  # noqa: E402

PAIRS_PER_STEP = 2
TRAINERS = ("csr_adapter_disabled", "trl", "csr_precomputed")
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}  # TRL turns dropout off by default; so does the csr side here
WORDS = ["red", "blue", "green", "circle", "square", "triangle", "left", "right", "top", "bottom", "small", "large"]


BUILDERS = {"small": shapesworld, "mid": mid, "tiny": tiny}


def prepare(name: str, steps: int) -> dict:
    """Save the workload's model and write the pairs (answers of ~equal length, so padding is alike)."""
    out = CACHE / f"dpo_{name}"
    w = BUILDERS[name]()
    model_dir = out / f"llava_{w.name}"  # "small" is the shipped ShapesWorld model once it exists, else tiny
    if not (model_dir / "config.json").exists():
        save_model(w.model, w.processor, str(model_dir))
    data = out / "data"
    prompts = json.loads(write_tiny_prompts(data, n=8).read_text())
    rng = random.Random(0)

    def answer() -> str:
        return " ".join(f"There is a {rng.choice(WORDS)} {rng.choice(WORDS)} at the {rng.choice(WORDS)}." for _ in range(4))

    pairs = [{"id": str(i), "image": prompts[i % 8]["image"], "prompt": prompts[i % 8]["input"].replace("<image>", "").strip(),
              "chosen": answer(), "rejected": answer()} for i in range(PAIRS_PER_STEP * steps)]
    atomic_write_text(out / "pairs.jsonl", "".join(json.dumps(p) + "\n" for p in pairs))
    paths = {"model": str(model_dir), "pairs": str(out / "pairs.jsonl"), "images": str(data / "images"), "out": str(out),
             "name": w.name, "note": w.note}
    atomic_write_text(out / "paths.json", json.dumps(paths))
    return paths


def sequence_tokens(paths: dict) -> float:
    """Real (unpadded) tokens per optimizer step: prompt with image tokens + answer + EOS, chosen and rejected."""
    from csr.core.io import read_jsonl
    from csr.dpo.data import PairDataset
    from csr.models.checkpoint import load_model

    _, processor = load_model(paths["model"])
    ds = PairDataset(read_jsonl(Path(paths["pairs"])), processor, paths["images"], get_family("llava"))
    per_pair = [2 * len(ds[i]["prompt_ids"]) + len(ds[i]["chosen_ids"]) + len(ds[i]["rejected_ids"]) for i in range(len(ds))]
    return statistics.mean(per_pair) * PAIRS_PER_STEP


def run_csr(paths: dict, reference: str) -> list[float]:
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from csr.config.schema import DPOConfig, ModelConfig
    from csr.dpo.stage import run_dpo

    class Timer(pl.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_start(self, *args):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *args):  # after backward and the optimizer step
            self.times.append(time.perf_counter() - self.t0)

    dpo = OmegaConf.structured(DPOConfig)
    dpo.batch_size, dpo.lr, dpo.reference = PAIRS_PER_STEP, 1e-5, reference
    dpo.lora.r, dpo.lora.alpha, dpo.lora.dropout = LORA["r"], LORA["alpha"], LORA["dropout"]
    timer = Timer()
    run_dpo(model_path=paths["model"], family=get_family("llava"), pairs_path=Path(paths["pairs"]), adapter_dir=Path(paths["out"]) / "csr_adapter",
            image_root=paths["images"], model_cfg=OmegaConf.structured(ModelConfig), dpo_cfg=dpo, logger=None,
            trainer_kwargs={"accelerator": "cpu", "devices": 1, "callbacks": [timer], "enable_progress_bar": False})
    return timer.times


def trl_trainer(paths: dict, output_dir: Path, lr: float = 1e-5):
    """TRL's DPOTrainer on the workload's pairs, float32 as csr's run, LoRA on the same modules."""
    from datasets import Dataset
    from peft import LoraConfig
    from PIL import Image
    from trl import DPOConfig, DPOTrainer

    from csr.core.io import read_jsonl
    from csr.models.chat import generation_prompt
    from csr.models.checkpoint import load_model

    model, processor = load_model(paths["model"])
    pairs = read_jsonl(Path(paths["pairs"]))
    rows = {"prompt": [generation_prompt(processor, p["prompt"]) for p in pairs],
            "chosen": [p["chosen"] for p in pairs], "rejected": [p["rejected"] for p in pairs],
            "images": [[Image.open(Path(paths["images"]) / p["image"]).convert("RGB")] for p in pairs]}
    args = DPOConfig(
        output_dir=str(output_dir), per_device_train_batch_size=PAIRS_PER_STEP, learning_rate=lr,
        num_train_epochs=1, lr_scheduler_type="cosine", warmup_steps=0.03, max_grad_norm=1.0, beta=0.1,
        precompute_ref_log_probs=False, max_length=None, report_to=[], save_strategy="no", logging_steps=1,
        use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        # TRL defaults to bf16 autocast (even on a CPU) and gradient checkpointing; csr's run here is float32
        # without checkpointing, so both are switched off for the same arithmetic.
        bf16=False, gradient_checkpointing=False,
    )
    # The same modules as csr's default (the family's: every linear layer of the language model).
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=get_family("llava").lora_targets())
    return DPOTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), processing_class=processor,
                      peft_config=peft)


def run_trl(paths: dict) -> list[float]:
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *args, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, *args, **kwargs):  # after backward and the optimizer step
            self.times.append(time.perf_counter() - self.t0)

    timer = Timer()
    trainer = trl_trainer(paths, Path(paths["out"]) / "trl")
    trainer.add_callback(timer)
    trainer.train()
    return timer.times


def child(trainer: str, workload: str, threads: int, out: Path) -> None:
    torch.set_num_threads(threads)
    paths = json.loads((CACHE / f"dpo_{workload}" / "paths.json").read_text())
    (Path(paths["out"]) / "ref_logps.json").unlink(missing_ok=True)  # csr reuses it: start every run without
    times = run_trl(paths) if trainer == "trl" else run_csr(paths, trainer.removeprefix("csr_"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps({"times": times, "peak_mb": peak_mb}))


def measure(workload: str, threads: int, rounds: int, warmup: int, steps: int, fresh_process: bool = True) -> dict:
    """Every trainer once per round, in alternating order; step times are the median over all rounds' steps
    after each run's warm-up, the ratio csr / TRL the median of the rounds' own ratios."""
    paths = prepare(workload, warmup + steps)
    row = {"workload": paths["name"], "note": paths["note"], "tokens_per_step": sequence_tokens(paths)}
    times: dict[str, list[list[float]]] = {t: [] for t in TRAINERS}
    peaks: dict[str, list[float]] = {t: [] for t in TRAINERS}
    loads, started = [], time.time()  # the machine's 1-minute load average as each run starts (it is shared)
    for k in range(rounds):
        for trainer in TRAINERS if k % 2 == 0 else TRAINERS[::-1]:
            loads.append(os.getloadavg()[0])
            out = Path(paths["out"]) / f"{trainer}.json"
            if fresh_process:
                subprocess.run([sys.executable, __file__, "--child", trainer, "--workload", workload, "--threads",
                                str(threads), "--out", str(out)], check=True)
            else:  # --tiny: one process, seconds; the peaks then mean nothing
                child(trainer, workload, threads, out)
            result = json.loads(out.read_text())
            if len(result["times"]) != warmup + steps:
                raise RuntimeError(f"{trainer} ran {len(result['times'])} steps, expected {warmup + steps}")
            times[trainer].append(result["times"][warmup:])
            peaks[trainer].append(result["peak_mb"])
    for trainer in TRAINERS:
        step_s = statistics.median(t for run in times[trainer] for t in run)
        row[trainer] = {"step_s": step_s, "steps": steps * rounds, "peak_mb": max(peaks[trainer]),
                        "tok_s": row["tokens_per_step"] / step_s}
    per_round = {key: [statistics.median(a) / statistics.median(b)
                       for a, b in zip(times[key], times["trl"], strict=True)]
                 for key in ("csr_adapter_disabled", "csr_precomputed")}
    row["ratio"] = statistics.median(per_round["csr_adapter_disabled"])
    row["ratio_precomputed"] = statistics.median(per_round["csr_precomputed"])
    row["ratio_rounds"] = per_round["csr_adapter_disabled"]
    row["runs"] = {"rounds": rounds, "warmup": warmup, "steps": steps, "load": [min(loads), max(loads)],
                   "seconds": time.time() - started, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    return row


def table(rows: list[dict]) -> str:
    out = ["| workload | tokens / step | csr s / step | TRL s / step | **csr / TRL** | each round | csr tok/s "
           "| TRL tok/s | csr peak MB | TRL peak MB | csr precomputed s / step | its / TRL | its peak MB | runs |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, t, p = r["csr_adapter_disabled"], r["trl"], r["csr_precomputed"]
        each = ", ".join(f"{x:.2f}" for x in r["ratio_rounds"])
        runs = r.get("runs")
        when = (f"{runs['rounds']} rounds x {runs['steps']} steps after {runs['warmup']}, {runs['date']}, load average "
                f"{runs['load'][0]:.1f}-{runs['load'][1]:.1f}") if runs else "–"
        out.append(f"| {r['workload']} | {r['tokens_per_step']:.0f} | {c['step_s']:.3f} | {t['step_s']:.3f} "
                   f"| **{r['ratio']:.2f}** | {each} | {c['tok_s']:.0f} | {t['tok_s']:.0f} | {c['peak_mb']:.0f} "
                   f"| {t['peak_mb']:.0f} | {p['step_s']:.3f} | {r['ratio_precomputed']:.2f} | {p['peak_mb']:.0f} | {when} |")
    return "\n".join(out) + "\n\n" + "\n".join(f"- **{r['workload']}**: {r['note']}" for r in rows) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    xs = range(len(rows))
    for shift, key, label in ((-0.2, "ratio", "csr, reference = adapter disabled (as TRL)"),
                              (0.2, "ratio_precomputed", "csr, precomputed reference (default)")):
        ratios = [r[key] for r in rows]
        ax.bar([x + shift for x in xs], ratios, 0.4, label=label)
        for x, v in zip(xs, ratios, strict=True):
            ax.text(x + shift, v, f"{v:.2f}", ha="center", va="bottom")
    ax.axhline(1.0, color="black", linewidth=1, label="TRL DPOTrainer = 1")
    ax.axhline(1.1, color="grey", linestyle="--", linewidth=1, label="target 1.1")
    ax.set_xticks(list(xs), [r["workload"] for r in rows])
    ax.set_ylabel("seconds per step / TRL's")
    ax.set_ylim(0, 1.6)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (recorded)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each trainer, interleaved")
    parser.add_argument("--warmup", type=int, default=1, help="steps per run not timed")
    parser.add_argument("--steps", type=int, default=5, help="steps per run timed")
    parser.add_argument("--workloads", default="small,mid", help="comma-separated: small (ShapesWorld), mid, tiny")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny model, 1 round of 1 + 1 steps in this process, results under --out only")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json and step_time.png go")
    parser.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="mid", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workload, args.threads, args.out)
        return
    if args.tiny:
        if args.out == HERE:
            parser.error("--tiny writes its results under --out, never over this study's: give --out")
        args.workloads, args.rounds, args.warmup, args.steps = "tiny", 1, 1, 1
    rows = [measure(w, args.threads, args.rounds, args.warmup, args.steps, fresh_process=not args.tiny)
            for w in args.workloads.split(",")]
    env = (f"torch {torch.__version__}, trl {version('trl')}, {args.threads} threads, {platform.machine()}, float32, "
           f"CPU; {PAIRS_PER_STEP} pairs per step; LoRA r={LORA['r']}; each trainer's step time the median of its "
           "timed steps over all rounds, csr / TRL the median of the rounds' own ratios")
    results = args.out / "results.json"
    if args.out == HERE and results.exists():  # the workloads not measured now keep their rows
        measured = {r["workload"] for r in rows}
        rows = [r for r in json.loads(results.read_text())["rows"] if r["workload"] not in measured] + rows
        rows.sort(key=lambda r: r["tokens_per_step"])
    args.out.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    plot(rows, args.out / "step_time.png")
    print(table(rows))
    if args.out != HERE:
        return
    readme = HERE / "README.md"
    head, rest = readme.read_text().split("<!-- results:start -->")
    _, tail = rest.split("<!-- results:end -->")
    block = f"Measured: {env}.\n\n{table(rows)}\n![step time](step_time.png)\n"
    readme.write_text(f"{head}<!-- results:start -->\n{block}<!-- results:end -->{tail}")


if __name__ == "__main__":
    main()
