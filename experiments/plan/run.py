"""Every workload x stage of stage_peak.py, each in a fresh process: results.json and README.md's table.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/plan/run.py
"""

from __future__ import annotations

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


def measure(workload: str, stage: str) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "stage_peak.py"), "--workload", workload, "--stage", stage],
                         capture_output=True, text=True, check=True)
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))


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
    start = time.time()
    rows = [measure(w, s) for w in WORKLOADS for s in STAGES]
    (HERE / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    worst = max(abs(r["plan"] / r["measured"] - 1) for r in rows)
    header = (f"Measured: torch {torch.__version__}, {platform.machine()}, float32 on the CPU, 1 thread; "
              f"{time.time() - start:.0f} s. Worst error {worst:.1%} (target {TOLERANCE:.0%}).")
    readme = HERE / "README.md"
    text = readme.read_text()
    block = f"<!-- results:start -->\n{header}\n\n{table(rows)}\n<!-- results:end -->"
    readme.write_text(re.sub(r"<!-- results:start -->.*<!-- results:end -->", lambda _: block, text, flags=re.S))
    print(block)


if __name__ == "__main__":
    main()
