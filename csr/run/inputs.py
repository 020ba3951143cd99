"""The identity of what a run and each of its stages read (csr/core/identity.py), so that an input
replaced at the same path is noticed instead of mixing outputs of two inputs.

- The run's inputs from outside: the starting checkpoint (model.path) and the CLIP files
  (reward.clip.weights, reward.clip.config_json). inputs.json records them at the first start; a
  resume that finds one changed on disk under the same path is refused with the diff, as a changed
  config key is (csr/run/run_dir.py), and `resume.allow_changes=[model.path]` accepts it the same way.
  (The prompt file and the images are checked per record by the search, csr/search/stage.py.)
- What each stage was made from: its done marker records the identity of the outputs of earlier
  stages it read. When one of them was rebuilt or replaced since, the loop refuses to go on from the
  stale marker, and a stage run (`csr stage=<stage> iteration=<k> run_dir=D`) redoes the stage from
  scratch, as under a changed config (csr/run/stage_run.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from csr.core.identity import path_identity
from csr.core.io import atomic_write_json, read_json

INPUTS = "inputs.json"
INPUT_KEYS = ("model.path", "reward.clip.weights", "reward.clip.config_json")

# What each stage of iteration k reads from the run directory, relative to it ({prev}: iteration k - 1).
# The search of iteration 1, DPO and merge of iteration 1, and iteration 0's evaluation read model.path,
# which inputs.json covers.
READS = {
    "search": ("{prev}/merged",),
    "reward": ("{this}/search.jsonl",),
    "pairs": ("{this}/rewards.jsonl",),
    "dpo": ("{this}/pairs.jsonl", "{prev}/merged"),
    "merge": ("{this}/adapter", "{prev}/merged"),
    "eval": ("{this}/merged",),
}


def _select(cfg: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def _local(value: Any) -> Path | None:
    """The file or directory a path-valued key names, if it is one here (not "random", not a hub name)."""
    if not isinstance(value, str):
        return None
    path = Path(value).expanduser()
    if path.exists():
        return path
    if "/" in value and not value.startswith((".", "/", "~")):  # a model name: its snapshot in the HF cache
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(value, local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the cache: loading it says so in its own line
            return None
    return None


def current_inputs(cfg: dict[str, Any]) -> dict[str, dict[str, str]]:
    """key -> {value, content} for each input key naming a local file or directory."""
    found = {}
    for key in INPUT_KEYS:
        value = _select(cfg, key)
        path = _local(value)
        if path is not None:
            found[key] = {"value": value, "content": path_identity(path)}
    return found


def input_diff(run_dir: Path, cfg: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The inputs that changed on disk since the run recorded them, under the same path: key -> (old, new)
    shown as `path (content <sha256 prefix>)`. A changed path is a config change, not listed here."""
    path = run_dir / INPUTS
    if not path.exists():
        return {}
    recorded, now = read_json(path), current_inputs(cfg)
    diff = {}
    for key, old in recorded.items() if isinstance(recorded, dict) else ():
        new = now.get(key)
        if isinstance(old, dict) and new is not None and old.get("value") == new["value"] \
                and old.get("content") != new["content"]:
            diff[key] = (f"{old['value']} (content {str(old.get('content'))[:12]})",
                         f"{new['value']} (content {new['content'][:12]}, changed on disk)")
    return diff


def record_inputs(run_dir: Path, cfg: dict[str, Any]) -> None:
    """Write this start's inputs: at the first start, and after an accepted change."""
    now = current_inputs(cfg)
    path = run_dir / INPUTS
    if (now or path.exists()) and (not path.exists() or read_json(path) != now):
        atomic_write_json(path, now)


# -- what a stage was made from ---------------------------------------------------------------------------


def reads(run_dir: Path, k: int, stage: str) -> list[str]:
    """The run-directory paths (relative) the stage of iteration k reads that exist."""
    names = [r.format(this=f"iter_{k}", prev=f"iter_{k - 1}") for r in READS[stage]] if k > 0 else []
    return [n for n in names if not n.startswith("iter_0/") and (run_dir / n).exists()]


def made_from(run_dir: Path, k: int, stage: str) -> dict[str, str]:
    """path -> identity of what the stage of iteration k reads now: recorded in its done marker."""
    return {name: path_identity(run_dir / name) for name in reads(run_dir, k, stage)}


def stale_input(run_dir: Path, k: int, stage: str, recorded: dict[str, str] | None) -> str | None:
    """The first input the stage's marker recorded that has changed since, or None (also when the marker
    recorded none: a run of an earlier csr)."""
    if not isinstance(recorded, dict):
        return None
    now = made_from(run_dir, k, stage)
    return next((name for name, identity in recorded.items() if now.get(name) != identity), None)
