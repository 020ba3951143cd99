"""Every workload x stage of stage_peak.py, each in a fresh process: results.json and README.md's table.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/plan/run.py
    OMP_NUM_THREADS=1 .venv/bin/python experiments/plan/run.py --tiny --out /tmp/plan   # checks it runs (seconds)

`--tiny`: the tiny workload's four stages in one process, results.json under --out only (README untouched).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
WORKLOADS = ["tiny", "shapesworld", "mid"]
STAGES = ["search", "reference", "dpo", "eval"]
TOLERANCE = 0.20


def measure(workload: str, stages: list[str]) -> list[dict]:
    out = subprocess.run([sys.executable, str(HERE / "stage_peak.py"), "--workload", workload, "--stage", ",".join(stages)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"stage_peak.py --workload {workload} --stage {','.join(stages)} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def table(rows: list[dict]) -> str:
    lines = ["| workload | stage | measured MiB | plan MiB (run's lengths) | error | plan MiB (caps only) | lengths |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        error = r["plan"] / r["measured"] - 1
        flag = "" if abs(error) <= TOLERANCE else " **out**"
        if r["stage"] == "search":
            lengths = f"widths {'/'.join(str(s['width']) for s in r['steps'])}"
        else:
            lengths = f"answer {r['answer_tokens']}"
        lines.append(f"| {r['workload']} | {r['stage']} | {mib(r['measured'])} | {mib(r['plan'])} | {error:+.1%}{flag} | "
                     f"{mib(r['plan_caps'])} | prompt {r['prompt_tokens']}, {lengths} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny workload's stages in one process, results under --out")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json goes")
    args = parser.parse_args()
    if args.tiny and args.out == HERE:
        parser.error("--tiny writes its results under --out, never over this study's: give --out")
    start = time.time()
    if args.tiny:
        rows = measure("tiny", STAGES)
    else:  # each workload x stage in a fresh process
        rows = [row for w in WORKLOADS for s in STAGES for row in measure(w, [s])]
    if [(r["workload"], r["stage"]) for r in rows] != [(w, s) for w in (["tiny"] if args.tiny else WORKLOADS) for s in STAGES]:
        raise SystemExit(f"stage_peak.py reported {[(r['workload'], r['stage']) for r in rows]}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    worst = max(abs(r["plan"] / r["measured"] - 1) for r in rows)
    header = (f"Measured: torch {torch.__version__}, {platform.machine()}, float32 on the CPU, 1 thread; "
              f"{time.time() - start:.0f} s. Worst error {worst:.1%} (target {TOLERANCE:.0%}).")
    block = f"<!-- results:start -->\n{header}\n\n{table(rows)}\n<!-- results:end -->"
    print(block)
    if args.out != HERE:
        return
    readme = HERE / "README.md"
    text = readme.read_text()
    readme.write_text(re.sub(r"<!-- results:start -->.*<!-- results:end -->", lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    main()
