"""A stage run alone on an existing run directory (`csr stage=reward run_dir=D reward.lam=0.1`).

It starts from the run's latest saved config (csr/cli.py puts it under the overrides), may change
any key (that is its point: the change is recorded like an allowed resume, csr/run/run_dir.py, and
csr-reproduce replays it). Under a changed config it redoes its stage from scratch and removes every
output the new one invalidates: the later stages of its iteration, all
later iterations (they start from its merged model; not after eval, which nothing reads) and the
summary, which is written again from what is left. Under the run's own config it completes the
stage's output where it stopped (the inputs are the same, so is what follows).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from csr.core.io import is_done

log = logging.getLogger(__name__)

STAGES = ("search", "reward", "pairs", "dpo", "merge", "eval")  # an iteration's stages, in order (the loop's too)
# What each stage writes into iter_<k>/ besides its marker. Not here: ref_logps.json, a cache keyed
# by content (csr/dpo/reference.py) that stays right whatever changes.
OUTPUTS = {
    "search": ("search.jsonl",),
    "reward": ("rewards.jsonl",),
    "pairs": ("pairs.jsonl", "pairs_llava.json", "pairs_trl.jsonl"),
    "dpo": ("adapter",),
    "merge": ("merged",),
    "eval": ("eval",),
}
SUMMARY = ("summary.md", "summary.json", "summary.png")


def has_input(run_dir: Path, k: int, stage: str) -> bool:
    """Whether iteration k holds what `stage` reads: the stage before it, or for search the model of
    iteration k - 1 (the base model for k = 1); eval at k = 0 evaluates the base model."""
    if stage == "search":
        return k == 1 or is_done(run_dir / f"iter_{k - 1}", "merge")
    if stage == "eval" and k == 0:
        return True
    return is_done(run_dir / f"iter_{k}", STAGES[STAGES.index(stage) - 1])


def check_input(run_dir: Path, stage: str, k: int) -> None:
    """Refuse a stage run whose input is not done: it would fail late, or read a base model for a merge."""
    from csr.core.errors import CSRError

    if has_input(run_dir, k, stage):
        return
    needed = f"iter_{k - 1}/merge (the model it searches with)" if stage == "search" else \
        f"iter_{k}/{STAGES[STAGES.index(stage) - 1]}"
    raise CSRError(f"stage={stage} iteration={k} reads {needed}, which is not done in {run_dir}: run that stage "
                   "first, or the whole loop (csr run_dir=<dir>)")


def stage_iteration(run_dir: Path, stage: str, iterations: int) -> int:
    """Without `iteration=`: the last iteration (up to `iterations`) that holds the stage's input."""
    lowest = 0 if stage == "eval" else 1
    return next((k for k in range(iterations, lowest - 1, -1) if has_input(run_dir, k, stage)), 1)


def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    else:
        return False
    return True


def _clear_stage(d: Path, stage: str) -> bool:
    removed = [_remove(d / name) for name in (*OUTPUTS[stage], f"{stage}.done.json")]
    return any(removed)


def invalidate(run_dir: Path, k: int, stage: str) -> list[str]:
    """Remove the outputs of `stage` in iteration k (so that it starts afresh instead of resuming them)
    and what a new one makes stale; returns what was removed, for the log."""
    d = run_dir / f"iter_{k}"
    removed = [f"iter_{k}/{stage}"] if _clear_stage(d, stage) else []
    later = STAGES[STAGES.index(stage) + 1:] if k > 0 else ()  # iteration 0 has only eval
    removed += [f"iter_{k}/{s}" for s in later if _clear_stage(d, s)]
    if stage != "eval":  # nothing reads an evaluation; every later iteration starts from this one's model
        for other in sorted(p for p in run_dir.glob("iter_*") if p.name[5:].isdigit() and int(p.name[5:]) > k):
            shutil.rmtree(other)
            removed.append(other.name)
    if [_remove(run_dir / name) for name in SUMMARY].count(True):
        removed.append("summary")
    return removed


def describe(k: int, stage: str, change: dict | None, removed: list[str] | None, stale: str | None = None) -> str:
    """The one log line of a stage run: what it redoes, under which change, what it removed."""
    from csr.run.run_dir import show_diff

    if change is None and stale is not None:
        gone = f": removed {', '.join(removed)}" if removed else ""
        return f"stage run: iteration {k} {stage} again, from scratch: {stale} changed since it was made{gone}"
    if change is None:
        return (f"stage run: iteration {k} {stage} under the run's config: its output is completed where it "
                "stopped, later outputs are kept (change a key to redo it)")
    gone = f"; removed what it invalidates: {', '.join(removed)}" if removed else ""
    return f"stage run: iteration {k} {stage} with {show_diff(change['changes'])} (saved as {change['config']}){gone}"
