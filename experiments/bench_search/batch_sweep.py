"""csr's search throughput against its batch knobs, on the mid model (CPU; for choosing GPU presets).

    .venv/bin/python experiments/bench_search/batch_sweep.py --threads 1
    .venv/bin/python experiments/bench_search/batch_sweep.py --tiny --out /tmp/batch_sweep   # checks it runs

Searches the same 8 prompts in batches of `search.prompts_per_batch` prompts, each decode batch capped
at `search.max_batch_rows` rows, and prints one JSON line per point (also written to batch_sweep.json):
candidate tokens per second, best of 2 runs. `--tiny`: the csr-make-tiny model, two points, results
under --out only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from measure import run_engine
from workloads import mid, tiny

from csr.models.clip import ClipScorer
from csr.models.families import get_family
from csr.search.engine import TreeSearch

HERE = Path(__file__).resolve().parent
PROMPTS = 8
PROMPTS_PER_BATCH = [1, 2, 4, 8]
MAX_BATCH_ROWS = [32, 64, 128]


def tokens_per_s(w, prompts_per_batch: int, max_batch_rows: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        settings, decode = w.settings(max_batch_rows=max_batch_rows)
        search = TreeSearch(w.model, w.processor, get_family("llava"), settings, decode, ClipScorer(w.clip).relevance).search
        tokens, t0 = 0, time.perf_counter()
        for a in range(0, w.shape.prompts, prompts_per_batch):
            b = a + prompts_per_batch
            tokens += sum(len(n.token_ids) for t in search(w.prompts[a:b], w.images[a:b], w.keys[a:b]) for n in t)
        best = max(best, tokens / (time.perf_counter() - t0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tiny model, 2 prompts, 2 points, results under --out")
    parser.add_argument("--out", type=Path, default=HERE, help="where batch_sweep.json goes")
    args = parser.parse_args()
    if args.tiny and args.out == HERE:
        parser.error("--tiny writes its results under --out, never over this study's: give --out")
    torch.set_num_threads(args.threads)
    prompts, per_batch, rows = (2, [1, 2], [8]) if args.tiny else (PROMPTS, PROMPTS_PER_BATCH, MAX_BATCH_ROWS)
    w = (tiny if args.tiny else mid)(n_prompts=PROMPTS)
    w = w.with_shape(max_sentences=2, max_new_tokens=12, max_answer_tokens=64, prompts=prompts)
    run_engine("csr", w.with_shape(max_sentences=1, prompts=1))  # warm-up
    points = []
    for p in per_batch:
        for r in rows:
            points.append({"prompts_per_batch": p, "max_batch_rows": r,
                           "tok_s": round(tokens_per_s(w, p, r, 1 if args.tiny else args.repeats), 1)})
            print(json.dumps(points[-1]), flush=True)
    env = f"torch {torch.__version__}, {args.threads} threads, CPU, float32; {w.name} model, {prompts} prompts, {w.shape}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_sweep.json").write_text(json.dumps({"env": env, "points": points}, indent=1))


if __name__ == "__main__":
    main()
