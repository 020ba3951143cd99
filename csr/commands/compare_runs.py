"""The runs `csr-compare` puts side by side: read from run directories (a sweep's or single ones) or from
the MLflow store, each as a `Run` (its flattened config and per-iteration metrics)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from csr.core.errors import CSRError
from csr.core.io import read_json
from csr.core.tracking import flatten, loop_runs
from csr.run.run_dir import read_saved_config


@dataclass
class Run:
    name: str
    params: dict[str, str]  # the flattened resolved config, values as strings (as MLflow keeps them)
    metrics: dict[int, dict[str, float]]  # iteration -> "stage/key" -> value (MLflow's metric names)
    run_dir: Path | None  # where the per-answer files are, when it is on this machine


def _numeric(stats: dict) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def run_from_dir(run_dir: Path, name: str | None = None) -> Run:
    config = read_saved_config(run_dir / "config.yaml")  # data only: refused unless it holds csr's keys
    metrics = {}
    for path in run_dir.glob("iter_*/metrics.json"):
        k = int(path.parent.name.removeprefix("iter_"))
        stages = read_json(path)
        metrics[k] = {f"{stage}/{key}": v for stage, stats in stages.items() for key, v in _numeric(stats or {}).items()}
    params = {k: str(v) for k, v in flatten(config).items()}
    return Run(name or run_dir.name, params, metrics, run_dir)


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def runs_from_dirs(paths: list[Path]) -> list[Run]:
    """Each path is a run directory or a directory holding runs (a sweep), found by their iter_* folders."""
    runs = []
    for root in paths:
        if not root.is_dir():
            raise CSRError(f"{root}: not a directory")
        found = sorted({p.parent for p in root.rglob("config.yaml") if any(p.parent.glob("iter_*"))}, key=_natural)
        if not found:
            raise CSRError(f"{root}: no csr run (a directory with config.yaml and iter_*/) under it")
        runs += [run_from_dir(d, str(d.relative_to(root)) if d != root else d.name) for d in found]
    return runs


def runs_from_mlflow(tracking_uri: str, experiment: str | None, run_ids: list[str]) -> list[Run]:
    """The loops' parent runs (of an experiment, or the parents of the given runs) with their iterations."""
    return [Run(name, params, metrics, Path(run_dir) if run_dir and Path(run_dir).is_dir() else None)
            for name, params, metrics, run_dir in loop_runs(tracking_uri, experiment, run_ids)]
