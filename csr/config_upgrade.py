"""Saved configs written before a key was renamed read as today's: a run directory, an MLflow run or
a config.yaml from an earlier csr resumes, reproduces and inspects under the current schema.

Each rename is (old dotted key, new dotted key); a saved config holding the old key gets its value at
the new one (the new key wins when both are there, which a saved config never has).
"""

from __future__ import annotations

from typing import Any

RENAMED = (
    # ShapesWorld's settings became blocks of their own (csr/worlds/shapesworld/, 2026-12)
    ("data.shapesworld_root", "data.shapesworld.root"),
    ("data.shapesworld_split", "data.shapesworld.split"),
    ("data.shapesworld_size", "data.shapesworld.size"),
    ("eval.shapesworld_root", "eval.shapesworld.root"),
    ("eval.split", "eval.shapesworld.split"),
    ("eval.pope_images", "eval.shapesworld.pope_images"),
)


def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` (a plain container, as OmegaConf.to_container gives) with every renamed key moved; the
    input is not changed."""
    out = _copy(saved)
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
    return out


def _walk(tree: dict[str, Any], parts: list[str]) -> dict[str, Any] | None:
    for part in parts:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return None
    return tree


def _copy(tree: Any) -> Any:
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree
