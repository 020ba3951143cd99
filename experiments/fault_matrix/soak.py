"""Soak: many CSR iterations in one process, recording what would reveal a leak.

    python experiments/fault_matrix/soak.py [--out DIR] [--iterations 10] [csr overrides ...]
    python experiments/fault_matrix/soak.py --tiny --out /tmp/soak   # checks it runs: 1 iteration, tiny models

After every iteration (and after the base evaluation) it records the process's resident memory
(now and the peak during the iteration), its open file descriptors and threads, the size of the
run directory and of that iteration's own outputs. Writes DIR/soak.json, DIR/soak.md and
DIR/soak.png. A leak shows as RSS or descriptors that climb with the iteration number; disk should
grow by exactly the iteration's outputs. `--tiny`: the tiny models (built under DIR/tiny), the smoke
experiment on 4 prompts, 1 iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _status(field: str) -> int:
    """A /proc/self/status value in KiB (VmRSS, VmHWM) or a count (Threads)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each iteration reports its own peak.
    Path("/proc/self/clear_refs").write_text("5")


def _size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def record(run_dir: Path, k: int, seconds: float) -> dict:
    return {
        "iteration": k,
        "rss_mib": round(_status("VmRSS") / 1024, 1),
        "peak_rss_mib": round(_status("VmHWM") / 1024, 1),
        "open_fds": len(os.listdir("/proc/self/fd")),
        "threads": _status("Threads"),
        "run_dir_mib": round(_size_mib(run_dir), 2),
        "iteration_outputs_mib": round(_size_mib(run_dir / f"iter_{k}"), 2),
        "seconds": round(seconds, 1),
    }


def to_markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iteration"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(it, [r["rss_mib"] for r in rows], "o-", label="RSS after")
    axes[0].plot(it, [r["peak_rss_mib"] for r in rows], "s--", label="peak during")
    axes[0].set_ylabel("MiB")
    axes[0].legend()
    axes[1].plot(it, [r["open_fds"] for r in rows], "o-", label="open fds")
    axes[1].plot(it, [r["threads"] for r in rows], "s--", label="threads")
    axes[1].legend()
    axes[2].plot(it, [r["run_dir_mib"] for r in rows], "o-", label="run dir")
    axes[2].plot(it, [sum(x["iteration_outputs_mib"] for x in rows[: i + 1]) for i in range(len(rows))], "s--",
                 label="sum of iteration outputs")
    axes[2].set_ylabel("MiB")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("iteration")
    fig.suptitle("soak: resources after each iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="multirun/soak")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="1 iteration of the smoke experiment on the tiny models")
    args, overrides = parser.parse_known_args()
    out = Path(args.out).resolve()
    run_dir = out / "run"
    if args.tiny:
        from csr.data.tiny import write_tiny_prompts
        from csr.models.tiny import build_tiny

        build_tiny(str(out / "tiny"))
        write_tiny_prompts(out / "tiny" / "data", n=4)
        os.environ["CSR_TINY_DIR"] = str(out / "tiny")
        args.iterations = 1
        overrides = ["experiment=smoke", "logger.tracking_uri=null", *overrides]
    rows: list[dict] = []

    import csr.loop

    iteration = csr.loop.Loop.iteration

    def measured_iteration(self, k, *a, **kw):
        _reset_peak()
        start = time.time()
        metrics = iteration(self, k, *a, **kw)
        rows.append(record(run_dir, k, time.time() - start))
        print(f"soak: {rows[-1]}", flush=True)
        return metrics

    csr.loop.Loop.iteration = measured_iteration
    from csr.cli import main as csr_main

    sys.argv = ["csr", f"run_dir={run_dir}", f"iterations={args.iterations}", *overrides]
    try:
        csr_main()
    except SystemExit as exit_:  # Hydra exits after the run; the figures are written either way
        if exit_.code not in (0, None):
            raise
    finally:
        if rows:
            (out / "soak.json").write_text(json.dumps(rows, indent=2) + "\n")
            (out / "soak.md").write_text(to_markdown(rows))
            plot(rows, out / "soak.png")
            print(to_markdown(rows))


if __name__ == "__main__":
    main()
