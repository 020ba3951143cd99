"""What a run needs to be reproduced besides its resolved config: the command-line overrides, the
csr version and git commit, and the versions of the libraries that decide its numbers; at its end,
the iteration it selected (csr/run/selection.py)."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from csr.core.io import atomic_write_text

LIBRARIES = ("torch", "torchvision", "transformers", "tokenizers", "peft", "pytorch-lightning",
             "open_clip_torch", "hydra-core", "omegaconf", "mlflow", "deepspeed")
SOURCE = Path(__file__).resolve().parents[2]  # the checkout (git commit and dirty state)
SELECTION = "selection"  # added at the end of a run with an eval.select block (record_selection)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def hydra_overrides() -> list[str]:
    """The task overrides of the running Hydra job (`reward.lam=0.5 ...`); [] outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def sweep_run_name() -> str | None:
    """A sweep job's MLflow name: its overrides (`reward.lam=0.1 search.beam_width=5`), so that the
    loops of a sweep, and of two sweeps, tell apart by what they ran; None outside a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    shown = [o for o in hydra_overrides() if not o.lstrip("+~").startswith(("run_dir=", "logger.", "hydra."))]
    return " ".join(shown) or None


def run_info() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "overrides": hydra_overrides(),
        "csr_version": _version("csr"),
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,  # uncommitted changes to tracked files
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


def record_selection(path: Path, selection: dict[str, Any] | None) -> None:
    """Write the run's selected iteration (csr/run/selection.py) into its run_info.json at the end of the run,
    replacing an earlier one; None removes it (a run whose summary no longer selects)."""
    info = json.loads(path.read_text())
    if info.get(SELECTION) == selection or (selection is None and SELECTION not in info):
        return
    info.pop(SELECTION, None)
    if selection is not None:
        info[SELECTION] = selection
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")


def started_as(path: Path) -> str:
    """A run_info.json's text as its start wrote it: without the selection its end added."""
    info = json.loads(path.read_text())
    if SELECTION not in info:
        return path.read_text()
    info.pop(SELECTION)
    return json.dumps(info, indent=2) + "\n"


def run_info_params(info: dict[str, Any]) -> dict[str, str]:
    """The same as MLflow params (`run.*`) of the loop's parent run."""
    params = {f"run.{k}": str(v) for k, v in info.items() if k not in ("overrides", "libraries")}
    params["run.overrides"] = json.dumps(info["overrides"])
    params.update({f"run.lib.{k}": str(v) for k, v in info["libraries"].items()})
    return params


def version_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable lines for every version or commit that differs between two run_info dicts."""
    old = {"csr": recorded.get("csr_version"), "git commit": recorded.get("git_commit"),
           "python": recorded.get("python"), **recorded.get("libraries", {})}
    new = {"csr": current.get("csr_version"), "git commit": current.get("git_commit"),
           "python": current.get("python"), **current.get("libraries", {})}
    return [f"{k}: recorded {old[k]}, now {new.get(k)}" for k in old if old[k] != new.get(k)]
