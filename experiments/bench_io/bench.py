"""Output writing at the paper's scale: 12,000 search records of realistic size through the predict
writer, timed per record at the start and at the end of the stage.

    .venv/bin/python experiments/bench_io/bench.py            # after: one writer per stage
    .venv/bin/python experiments/bench_io/bench.py --before   # before: a writer per batch (capped)
    .venv/bin/python experiments/bench_io/bench.py --tiny --out /tmp/bench_io   # checks it runs (seconds)

`--before` replays the old pattern (a new JsonlWriter per batch, which parsed the whole part file on
entry); it grows quadratically, so it stops after `--before-records` records and reports where it got.
Each mode's result goes into results.json beside this file; `--tiny` runs both modes on a few records
and writes results.json under --out only.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from csr.core.io import JsonlWriter, read_jsonl
from csr.run.predict import JsonlPredictionWriter

HERE = Path(__file__).resolve().parent
RECORD_BYTES = 73_000  # one search tree of ~200-token answers, beam 5 x K 5, as JSON
BATCH = 4  # search.prompts_per_batch of the paper presets


def synthetic_record(i: int, rng: random.Random) -> dict:
    """A search record of realistic size: ~60 nodes with text, token ids and scores."""
    nodes = []
    while len(json.dumps(nodes)) < RECORD_BYTES - 500:
        n = len(nodes)
        nodes.append({"id": n, "parent": max(0, n // 5), "depth": 1 + n // 10,
                      "text": " There is a small red cube to the left of the sphere.",
                      "token_ids": [rng.randrange(32000) for _ in range(160)],
                      "r_t": -rng.random(), "r_i": 30 * rng.random(), "reward": rng.random(),
                      "path_reward": rng.random(), "path_r_t": -rng.random(), "answer_tokens": 16 * n,
                      "finish": "delimiter", "final": False, "kept": True})
    return {"id": f"{i:012d}", "image": f"{i:012d}.jpg", "prompt": "Describe this image in detail.",
            "input": "Describe this image in detail.\n<image>", "nodes": nodes}


def run(n: int, before: bool, out: Path) -> list[tuple[int, float]]:
    """Write n records in batches; return (records written so far, seconds per record of that batch)."""
    rng = random.Random(0)
    template = [synthetic_record(i, rng) for i in range(BATCH)]
    writer = JsonlPredictionWriter(out)
    trainer = SimpleNamespace(global_rank=0)
    timings = []
    for b in range(0, n, BATCH):
        batch = [{**r, "id": f"{b + k:012d}"} for k, r in enumerate(template)]
        start = time.perf_counter()
        if before:  # the old writer: a new JsonlWriter per batch, which read the whole file first
            read_jsonl(out.with_name(out.name + ".part0"))
            with JsonlWriter(out.with_name(out.name + ".part0")) as w:
                for r in batch:
                    w.write(r)
        else:
            writer.write_on_batch_end(trainer, None, batch, None, batch, b // BATCH)
        timings.append((b + BATCH, (time.perf_counter() - start) / BATCH))
    if not before:
        writer.on_predict_end(trainer, None)
    return timings


def summary(timings: list[tuple[int, float]], window: int = 25) -> dict:
    def mean(rows):
        return sum(t for _, t in rows) / len(rows)
    return {"records": timings[-1][0], "first_ms_per_record": 1000 * mean(timings[:window]),
            "last_ms_per_record": 1000 * mean(timings[-window:])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=12_000)
    ap.add_argument("--before", action="store_true")
    ap.add_argument("--before-records", type=int, default=1_200)
    ap.add_argument("--tiny", action="store_true", help="both modes, 2 batches each, results under --out only")
    ap.add_argument("--out", type=Path, default=HERE, help="where results.json goes")
    args = ap.parse_args()
    if args.tiny and args.out == HERE:
        ap.error("--tiny writes its results under --out, never over this study's: give --out")
    modes = [(False, 2 * BATCH), (True, 2 * BATCH)] if args.tiny else \
        [(args.before, args.before_records if args.before else args.records)]
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for before, n in modes:
        with tempfile.TemporaryDirectory() as tmp:
            result = {"mode": "before" if before else "after", **summary(run(n, before, Path(tmp) / "search.jsonl"))}
        print(json.dumps(result))
        results[result["mode"]] = result
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
