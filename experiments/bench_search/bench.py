"""Search benchmark: csr's engine against the reference algorithm and a per-node `model.generate` loop,
same process, same prompts.

    .venv/bin/python experiments/bench_search/bench.py
    .venv/bin/python experiments/bench_search/bench.py --tiny --out /tmp/bench_search   # checks it runs (seconds)

Writes results.json, speedup.png and scaling.png beside this file and the tables into README.md
(between the results markers). Every run asserts both engines wrote the same trees first. `--tiny`
runs the csr-make-tiny model (a short search, the generate loop, one point per scaling knob) and
writes only under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import matplotlib
import torch
from generate_loop import GenerateLoop
from measure import assert_same_trees, run_engine, same_prompts, warm_up
from workloads import Workload, llava7b, mid, qwen25_mid, shapesworld, tiny

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
BUILDERS = {"shapesworld": shapesworld, "mid": mid, "qwen25_mid": qwen25_mid, "llava7b": llava7b, "tiny": tiny}
# Scaling sweeps on the mid model (one knob at a time, the rest at SWEEP_BASE: a shorter search than the
# mid workload's, so that the reference's runs fit in minutes).
SWEEP_BASE = {"prompts": 2, "max_sentences": 3, "max_new_tokens": 12, "max_answer_tokens": 64}
SWEEPS = {  # three values per knob: with the 32k vocabulary and the generate loop the run stays < 20 min
    "beam_width": [1, 2, 4],
    "candidates_per_step": [2, 5, 8],
    "max_sentences": [1, 2, 4],
    "prompts": [1, 2, 4],
}


def compare(w: Workload, repeats: int, generate: bool = False) -> dict:
    """csr (best of `repeats`) against the reference, and, with `generate`, against the generate loop
    expanding the nodes csr expanded."""
    fast = run_engine("csr", w, repeats=repeats)
    ref = run_engine("reference", w)
    n = w.shape.prompts
    gen_s = GenerateLoop(w.model, w.processor, *w.settings()).seconds(fast.trees, w.prompts[:n], w.images[:n]) \
        if generate else None
    if w.model.dtype == torch.float32:
        d_t, d_i = assert_same_trees(fast.trees, ref.trees)
    else:  # bfloat16 rounds differently with padding and batch shape: ties break apart; report, do not assert
        d_t = d_i = float("nan")
        print(f"{w.name}: identical trees for {same_prompts(fast.trees, ref.trees):.0%} of prompts", flush=True)
    return {
        "workload": w.name, "shape": vars(w.shape).copy(),
        "nodes": sum(len(t) - 1 for t in fast.trees), "tokens": fast.tokens,
        "csr_s": fast.seconds, "ref_s": ref.seconds, "speedup": ref.seconds / fast.seconds,
        "generate_s": gen_s, "speedup_generate": None if gen_s is None else gen_s / fast.seconds,
        "csr_tok_s": fast.tokens_per_s, "ref_tok_s": ref.tokens_per_s,
        "csr_peak_mb": fast.peak_mb, "ref_peak_mb": ref.peak_mb,
        "max_diff_r_t": d_t, "max_diff_r_i": d_i,
    }


def _or_dash(x: float | None, form: str) -> str:
    return "–" if x is None else form.format(x)


def workload_table(rows: list[dict], notes: dict[str, str]) -> str:
    head = ("| workload | prompts x beam x K x sentences | sentences | tokens | csr s | reference s | **speed-up** "
            "| generate loop s | **vs generate** | csr tok/s | reference tok/s | csr peak MB | reference peak MB "
            "| max abs diff R_T / R_I |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        s = r["shape"]
        lines.append(
            f"| {r['workload']} | {s['prompts']} x {s['beam_width']} x {s['candidates_per_step']} x {s['max_sentences']} "
            f"| {r['nodes']} | {r['tokens']} | {r['csr_s']:.2f} | {r['ref_s']:.2f} | **{r['speedup']:.1f}x** "
            f"| {_or_dash(r['generate_s'], '{:.2f}')} | {_or_dash(r['speedup_generate'], '**{:.1f}x**')} "
            f"| {r['csr_tok_s']:.0f} | {r['ref_tok_s']:.0f} | {r['csr_peak_mb']:.0f} | {r['ref_peak_mb']:.0f} "
            f"| {r['max_diff_r_t']:.1e} / {r['max_diff_r_i']:.1e} |")
    return head + "\n".join(lines) + "\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in notes.items()) + "\n"


def scaling_table(sweeps: dict[str, list[dict]]) -> str:
    out = ["| knob | value | sentences | csr s | reference s | speed-up |", "|---|---|---|---|---|---|"]
    for knob, rows in sweeps.items():
        for r in rows:
            out.append(f"| {knob} | {r['shape'][knob]} | {r['nodes']} | {r['csr_s']:.2f} | {r['ref_s']:.2f} "
                       f"| {r['speedup']:.1f}x |")
    return "\n".join(out) + "\n"


def plot_scaling(sweeps: dict[str, list[dict]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.4))
    for ax, (knob, rows) in zip(axes, sweeps.items(), strict=True):
        xs = [r["shape"][knob] for r in rows]
        ax.plot(xs, [r["ref_s"] for r in rows], "o-", label="reference")
        ax.plot(xs, [r["csr_s"] for r in rows], "s-", label="csr")
        ax.set_xlabel(knob)
        ax.set_ylabel("search seconds")
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Search time vs one knob (mid model; the rest: 2 prompts, beam 3, K 5, 3 sentences of 12 tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_speedup(rows: list[dict], path: Path) -> None:
    """Per workload: csr against the reference and, where it ran, against the generate loop."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bars = [("speedup", "vs reference", "tab:green", -0.2), ("speedup_generate", "vs generate loop", "tab:blue", 0.2)]
    for key, label, color, shift in bars:
        xs = [i + shift for i, r in enumerate(rows) if r.get(key) is not None]
        ys = [r[key] for r in rows if r.get(key) is not None]
        ax.bar(xs, ys, width=0.4, color=color, label=label)
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y, f"{y:.1f}x", ha="center", va="bottom")
    ax.axhline(10, color="grey", linestyle="--", linewidth=1, label="10x target (mid)")
    ax.set_xticks(range(len(rows)), [r["workload"] for r in rows])
    ax.set_ylabel("baseline time / csr time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


TINY_SHAPE = {"prompts": 2, "max_sentences": 2}  # --tiny: the tiny model's search, shortened


def write_readme(block: str, marker: str) -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    readme.write_text(f"{head}{start}\n{block}{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (recorded)")
    parser.add_argument("--repeats", type=int, default=3, help="csr runs per point (best kept)")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--workloads", default="shapesworld,mid",
                        help="comma-separated: shapesworld, mid, qwen25_mid (CPU), llava7b (needs a GPU: --no-scaling)")
    parser.add_argument("--families", action="store_true",
                        help="the other families' workloads (qwen25_mid) alone: results_families.json and "
                             "README's families block, the LLaVA results untouched")
    parser.add_argument("--csr-only", action="store_true",
                        help="time csr's engine alone and print it (to compare two versions of the engine)")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny model: a short search against both baselines, one point per scaling knob, "
                             "results under --out only")
    parser.add_argument("--out", type=Path, default=HERE, help="where results*.json and the plots go")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tiny:
        if args.out == HERE:
            parser.error("--tiny writes its results under --out, never over this study's: give --out")
        args.workloads, args.repeats = "tiny", 1
    if args.families:
        args.workloads, args.no_scaling = "qwen25_mid", True
    if args.csr_only:
        for name in args.workloads.split(","):
            w = BUILDERS[name]()
            run_engine("csr", w.with_shape(max_sentences=1, prompts=1))
            r = run_engine("csr", w, repeats=args.repeats)
            print(json.dumps({"workload": w.name, "csr_s": r.seconds, "tok_s": r.tokens_per_s, "peak_mb": r.peak_mb}))
        return
    started = time.time()
    rows, notes = [], {}
    for name in args.workloads.split(","):
        w = BUILDERS[name]()
        if args.tiny:
            w = w.with_shape(**TINY_SHAPE)
        warm_up(w)
        # mid only: the generate loop prefills K copies of image + prompt + answer per node, minutes on a
        # CPU (and it is written for LLaVA)
        rows.append(compare(w, args.repeats, generate=name in ("mid", "llava7b", "tiny")))
        notes[w.name] = w.note
        print(json.dumps(rows[-1]), flush=True)
    sweeps: dict[str, list[dict]] = {}
    if not args.no_scaling:
        base = tiny().with_shape(**TINY_SHAPE) if args.tiny else mid().with_shape(**SWEEP_BASE)
        for knob, values in SWEEPS.items():
            sweeps[knob] = []
            for v in values[:1] if args.tiny else values:
                sweeps[knob].append(compare(base.with_shape(**{knob: v}), args.repeats))
                print(json.dumps(sweeps[knob][-1]), flush=True)
    gpu = "llava7b" in args.workloads
    device = f"{torch.cuda.get_device_name()}, bfloat16" if gpu else f"{platform.machine()} CPU, float32"
    env = (f"torch {torch.__version__}, {args.threads} threads, {device}; csr best of {args.repeats} runs, "
           f"reference 1 run; total {time.time() - started:.0f} s")
    suffix = "_gpu" if gpu else "_families" if args.families else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results{suffix}.json").write_text(json.dumps({"env": env, "workloads": rows, "scaling": sweeps}, indent=1))
    plot_speedup(rows, args.out / f"speedup{suffix}.png")
    block = f"Measured: {env}.\n\n" + workload_table(rows, notes) + f"\n![speed-up](speedup{suffix}.png)\n"
    if sweeps:
        plot_scaling(sweeps, args.out / "scaling.png")
        block += "\n### Scaling\n\n" + scaling_table(sweeps) + "\n![scaling](scaling.png)\n"
    print(block)
    if args.out == HERE:
        write_readme(block, "results-gpu" if gpu else "results-families" if args.families else "results")


if __name__ == "__main__":
    main()
