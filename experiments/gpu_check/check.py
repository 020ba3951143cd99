"""The GPU check: what csr does on full-width LLaVA-1.5-7B and Qwen2.5-VL-7B in bf16, measured
(experiments/gpu_check/README.md says what each figure means and when it passes).

    python experiments/gpu_check/check.py --out DIR                # one CUDA GPU, under 9 minutes
    python experiments/gpu_check/check.py --out DIR --cpu-dry-run  # no GPU: narrow copies, float32, CPU

Writes DIR/log.txt and DIR/results.json; exits 1 when a check that ran failed. On a GPU every section
runs in its own process under a time limit (its memory peak is its own, and the whole stays within
--budget-s); the dry run calls the same sections in this process.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import PeakMeter, compose_cfg, timed  # noqa: E402
from models import PROMPTS, build_model, build_processor, load_spec, write_images, write_pairs  # noqa: E402

# (section, model, seconds it may take on an H100), in the order they run: what matters most first.
PLAN = [("search", "llava", 130), ("zero2", "llava", 80), ("search", "qwen", 130), ("zero2", "qwen", 80),
        ("compare", "llava", 90), ("merge", None, 90), ("compare", "qwen", 90)]
MIN_SECONDS = 40  # a section is not started with less time left
PAIRS, ANSWER_SENTENCES = 4, 14  # DPO: 4 pairs (one step each), answers of ~130 tokens
MERGE_LAYERS = 2  # the merge check's decoder layers (full width): a 7B float32 merge alone would take minutes


def environment() -> dict:
    import peft
    import pytorch_lightning
    import transformers

    # nvidia-smi, not torch: this process stays off the GPU (the sections' processes use it)
    smi = shutil.which("nvidia-smi")
    gpu = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip() if smi else None
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu,
           "transformers": transformers.__version__, "peft": peft.__version__, "lightning": pytorch_lightning.__version__}
    for name in ("deepspeed", "trl", "datasets"):  # installed or not (not imported: the sections say whether they import)
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True)
    env["commit"] = commit.stdout.strip() or None
    return env


# -- sections (each records its results as it goes) --------------------------------------------------------


def section_search(model_key: str, a, record, meter) -> None:
    from search_checks import run_search_sections

    from csr.data.images import load_image
    from csr.models.checkpoint import save_model
    from csr.models.families import get_family

    spec = load_spec(model_key, narrow_copy=a.cpu_dry_run)
    dtype = torch.float32 if a.cpu_dry_run else torch.bfloat16
    processor = build_processor(spec)
    model, seconds = timed(build_model, spec, "cpu" if a.cpu_dry_run else "cuda", dtype)
    params = sum(p.numel() for p in model.parameters())
    record("model", {"config": spec.name, "params": params, "expected_params": spec.expected_params,
                     "params_match": spec.expected_params in (None, params), "dtype": str(dtype), "build_s": seconds})
    model_dir = a.work / model_key / "model"
    _, seconds = timed(save_model, model, processor, str(model_dir))
    record("saved", {"seconds": seconds})
    processor.tokenizer.padding_side = "left"  # as load_model sets it
    cfg = compose_cfg(spec.preset, model_dir, a.work, a.cpu_dry_run)
    names = sorted(p.name for p in (a.work / "images").iterdir())[: cfg.search.prompts_per_batch]
    images = [load_image(str(a.work / "images"), n) for n in names]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(names))]
    run_search_sections(model, processor, get_family(spec.family), cfg, model_dir, prompts, images, names, meter,
                        budget_s=3.0 if a.cpu_dry_run else 15.0, record=record)


def section_zero2(model_key: str, a, record, meter) -> None:
    from dpo_checks import zero2_step

    spec = load_spec(model_key, narrow_copy=a.cpu_dry_run)
    if not a.cpu_dry_run:
        try:
            import deepspeed  # noqa: F401
        except Exception as err:  # noqa: BLE001
            record("skipped", f"deepspeed cannot be imported ({type(err).__name__}: {err}): carry its wheel (README)")
            return
    else:
        record("note", "dry run: the CPU trainer (Lightning's DeepSpeed strategy needs CUDA); same stage, same reference")
    model_dir = a.work / model_key / "model"
    cfg = compose_cfg(spec.preset, model_dir, a.work, a.cpu_dry_run)
    record("zero2", zero2_step(cfg, model_dir, a.work / "pairs.jsonl", a.work / "images", a.work / model_key / "zero2",
                               meter))


def section_compare(model_key: str, a, record, meter) -> None:
    from dpo_checks import against_trl, csr_dpo, trl_dpo

    spec = load_spec(model_key, narrow_copy=a.cpu_dry_run)
    model_dir = a.work / model_key / "model"
    # TRL's way with a LoRA policy: one device, bf16 autocast, the reference = the adapter disabled
    overrides = ["dpo.reference=adapter_disabled"] + ([] if a.cpu_dry_run else ["trainer=gpu"])
    cfg = compose_cfg(spec.preset, model_dir, a.work, a.cpu_dry_run, overrides)
    pairs, images = a.work / "pairs.jsonl", a.work / "images"
    csr = csr_dpo(cfg, model_dir, pairs, images, a.work / model_key / "csr_plain", meter)
    record("csr", csr)
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except Exception as err:  # noqa: BLE001
        record("trl_skipped", f"trl cannot be imported ({type(err).__name__}: {err}): carry its wheels (README)")
        return
    result = trl_dpo(cfg, model_dir, pairs, images, a.work / model_key / "trl", meter, a.cpu_dry_run)
    record("trl", result)
    record("against_trl", against_trl(csr, result))


def section_merge(model_key: str | None, a, record, meter) -> None:
    from dpo_checks import merge_check

    for key in a.models:
        spec = load_spec(key, narrow_copy=a.cpu_dry_run, text_layers=None if a.cpu_dry_run else MERGE_LAYERS)
        base = a.work / "merge" / key / "base"
        cfg = compose_cfg(spec.preset, base, a.work, a.cpu_dry_run)
        record(key, merge_check(cfg, spec, base, a.work / "pairs.jsonl", a.work / "images",
                                a.work / "merge" / key / "iter_1", meter, "cpu" if a.cpu_dry_run else "cuda"))
        shutil.rmtree(a.work / "merge" / key, ignore_errors=True)


SECTIONS = {"search": section_search, "zero2": section_zero2, "compare": section_compare, "merge": section_merge}


def part_path(a, section: str, model: str | None) -> Path:
    return a.out / "parts" / f"{section}{'-' + model if model else ''}.json"


def run_section(a, section: str, model: str | None) -> None:
    """One section; its results go to DIR/parts/<section>-<model>.json as each is known, so a section
    stopped by its time limit still leaves what it measured."""
    path = part_path(a, section, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    part: dict = {}

    def record(key: str, value) -> None:
        part[key] = value
        path.write_text(json.dumps(part, indent=1, default=str))

    meter = PeakMeter()
    try:
        SECTIONS[section](model, a, record, meter)
    except Exception as err:  # noqa: BLE001 - recorded; the other sections still run
        record("error", f"{type(err).__name__}: {err}")
        traceback.print_exc()
    finally:
        meter.close()


# -- the run ------------------------------------------------------------------------------------------------


class Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> None:
        for s in self.streams:
            s.write(text)
            s.flush()

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def prepare(a) -> None:
    """Images and pairs every section shares (the prompts are fixed strings)."""
    names = write_images(a.work / "images", 4)
    write_pairs(a.work / "pairs.jsonl", names, PAIRS, 4 if a.cpu_dry_run else ANSWER_SENTENCES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where log.txt and results.json go")
    parser.add_argument("--cpu-dry-run", action="store_true", help="narrow copies on the CPU, float32, in-process")
    parser.add_argument("--models", default="llava,qwen", help="comma-separated: llava, qwen")
    parser.add_argument("--budget-s", type=float, default=510.0, help="the whole check's wall-clock limit")
    parser.add_argument("--work", type=Path, default=None, help="models and data (default DIR/work, removed after)")
    parser.add_argument("--keep-work", action="store_true")
    parser.add_argument("--isolate", action="store_true", help="the dry run's sections in processes too, as on a GPU")
    parser.add_argument("--child", nargs=2, metavar=("SECTION", "MODEL"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    a.out = a.out.resolve()
    a.work = (a.work or a.out / "work").resolve()
    a.models = a.models.split(",")
    if a.child:
        torch.manual_seed(0)
        run_section(a, a.child[0], None if a.child[1] == "-" else a.child[1])
        return
    start = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(a.out / "parts", ignore_errors=True)
    log = open(a.out / "log.txt", "w")  # noqa: SIM115 - open for the whole run
    sys.stdout = Tee(sys.__stdout__, log)
    sys.stderr = Tee(sys.__stderr__, log)
    if not a.cpu_dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; use --cpu-dry-run")
    results: dict = {"mode": "cpu-dry-run" if a.cpu_dry_run else "gpu", "environment": environment(),
                     "budget_s": a.budget_s, "sections": {}}
    print(json.dumps(results["environment"]))
    prepare(a)
    from report import evaluate, table

    for section, model, seconds in PLAN:
        if model is not None and model not in a.models:
            continue
        key = f"{section}{'-' + model if model else ''}"
        left = a.budget_s - (time.time() - start)
        print(f"== {time.strftime('%H:%M:%S')} {key} ({left:.0f} s left)", flush=True)
        if left < MIN_SECONDS and not a.cpu_dry_run:
            results["sections"][key] = {"skipped": f"time budget: {left:.0f} s left of {a.budget_s:.0f}"}
            continue
        t0, status = time.time(), "ran"
        if a.cpu_dry_run and not a.isolate:
            run_section(a, section, model)
        else:
            cmd = [sys.executable, __file__, "--out", str(a.out), "--work", str(a.work), "--models", ",".join(a.models),
                   *(["--cpu-dry-run"] if a.cpu_dry_run else []), "--child", section, model or "-"]
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=min(seconds, left)).returncode
                status = "ran" if rc == 0 else f"exit {rc}"
            except subprocess.TimeoutExpired:
                status = f"stopped at its time limit ({min(seconds, left):.0f} s)"
        path = part_path(a, section, model)
        part = json.loads(path.read_text()) if path.exists() else {}
        results["sections"][key] = {"status": status, "seconds": round(time.time() - t0, 1), **part}
        print(json.dumps(results["sections"][key], default=str)[:3000], flush=True)
        if section == "compare":  # its model's last use: 15 GB of disk back
            shutil.rmtree(a.work / model, ignore_errors=True)
    results["checks"] = evaluate(results, a.models, dry=a.cpu_dry_run)
    results["seconds"] = round(time.time() - start, 1)
    (a.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(table(results["checks"]))
    failed = [c for c in results["checks"] if c["counts"] and c["passed"] is False]
    print(f"gpu_check: {results['seconds']:.0f} s; {len(failed)} counted check(s) failed")
    if not a.keep_work:
        shutil.rmtree(a.work, ignore_errors=True)
    sys.stdout.flush()
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
