"""Saved configs written before a key was renamed or added read as today's: a run directory, an MLflow
run or a config.yaml from an earlier csr resumes, reproduces and inspects under the current schema.

Each rename is (old dotted key, new dotted key); a saved config holding the old key gets its value at
the new one (the new key wins when both are there, which a saved config never has). Each added key
is (dotted key, the value that does what csr did before the key existed): a reproduction of an old
run runs as it ran, and resuming it under today's default is a config change like any other.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def _harness_preset(name: str) -> dict[str, Any]:
    """conf/eval/harness/<name>.yaml as today's config holds it. Before the harness evaluators no harness
    ran, and a block that eval.evaluators does not name does nothing: an old run reads as one with
    today's block, so it resumes without a change."""
    path = Path(__file__).resolve().parents[2] / "conf" / "eval" / "harness" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


RENAMED = (
    # ShapesWorld's settings became blocks of their own (csr/worlds/shapesworld/, 2026-12)
    ("data.shapesworld_root", "data.shapesworld.root"),
    ("data.shapesworld_split", "data.shapesworld.split"),
    ("data.shapesworld_size", "data.shapesworld.size"),
    ("eval.shapesworld_root", "eval.shapesworld.root"),
    ("eval.split", "eval.shapesworld.split"),
    ("eval.pope_images", "eval.shapesworld.pope_images"),
)
ADDED = (
    ("search.compact_fraction", 0.0),  # finished rows left the decode batch at once (2026-12)
    ("model.family", "llava"),  # csr ran LLaVA-1.5 only (2026-12)
    ("eval.temperature", 0.0),  # evaluations were greedy (2026-12)
    ("eval.sample_seed", 0),
    # no iteration was selected (2026-12): every iteration ran, the last one stood for the run
    ("eval.select", None),
    ("pairs.reference_clean", "short"),  # the reference rule dropped only sentences under 4 characters (2026-12)
    ("eval.lmms_eval", _harness_preset("lmms_eval")),  # external harnesses (csr/eval/harness.py, 2026-12)
    ("eval.vlmevalkit", _harness_preset("vlmevalkit")),
    ("eval.lmms_eval.only_selected", False),  # a harness ran on every evaluated checkpoint (2026-12)
    ("eval.vlmevalkit.only_selected", False),
)


def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` (a plain container, as OmegaConf.to_container gives) with every renamed key moved; the
    input is not changed."""
    out = copy.deepcopy(saved)
    for old, new in RENAMED:
        *old_parents, old_leaf = old.split(".")
        holder = _walk(out, old_parents)
        if holder is None or old_leaf not in holder or isinstance(holder[old_leaf], dict):
            continue
        value = holder.pop(old_leaf)
        *new_parents, new_leaf = new.split(".")
        target = out
        for part in new_parents:
            target = target.setdefault(part, {})
        target.setdefault(new_leaf, value)
    for key, before in ADDED:
        *parents, leaf = key.split(".")
        holder = _walk(out, parents)
        if holder is not None and leaf not in holder:  # a saved config without the key's whole block is no csr run's
            holder[leaf] = before
    return out


def _walk(tree: dict[str, Any], parts: list[str]) -> dict[str, Any] | None:
    for part in parts:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return None
    return tree
