"""Documented workflows: csr-reproduce refuses other evaluation data; a stage run alone on a run
directory starts from its config, redoes its stage and invalidates what follows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csr.data.shapesworld.splits import MARKER, ensure_split, split_identity
from csr.errors import CSRError
from csr.io import atomic_write_json
from csr.reproduce import METRICS, check_splits, data_differences, settings_diff

SPLIT_N = 4  # a small split: written in well under a second


def _source(into: Path, root: Path, identity: dict) -> None:
    (into / METRICS).mkdir(parents=True)
    (into / "config.yaml").write_text(f"eval:\n  shapesworld_root: {root}\n")
    atomic_write_json(into / METRICS / "iter_0.json",
                      {"eval": {"shapesworld/settings": {"split": identity, "n_images": SPLIT_N}}})


def test_settings_diff_names_each_differing_leaf():
    a = {"split": {"sha256": "aa", "n": 500}, "decoding": "greedy"}
    b = {"split": {"sha256": "bb", "n": 500}, "decoding": "greedy", "extra": 1}
    assert settings_diff(a, b) == ["extra: <absent> -> 1", "split.sha256: aa -> bb"]
    assert settings_diff(a, a) == []


def test_the_same_split_passes_and_another_is_refused_before_running(tmp_path):
    root = tmp_path / "data"
    identity = split_identity(ensure_split(root, "val", SPLIT_N))
    _source(tmp_path / "same", root, identity)
    check_splits(tmp_path / "same")  # same generator, same content: runs
    _source(tmp_path / "other", root, {**identity, "sha256": "0" * 64})  # the source saw other questions
    with pytest.raises(CSRError, match=r"'val' split here is not the one the source's iter_0 shapesworld/settings"
                                       r" ran on \(sha256: 0+ -> [0-9a-f]{64}"):
        check_splits(tmp_path / "other")
    marker = json.loads((root / "val" / MARKER).read_text())
    assert marker["n"] == SPLIT_N  # the check wrote the size the source recorded, nothing else


def test_differences_after_the_run_are_listed_per_iteration(tmp_path):
    into, run_dir = tmp_path / "src", tmp_path / "run"
    identity = {"split": "test", "version": 3, "n": 500, "sha256": "aa"}
    _source(into, tmp_path, identity)
    (run_dir / "iter_0").mkdir(parents=True)
    atomic_write_json(run_dir / "iter_0" / "metrics.json",
                      {"eval": {"shapesworld/settings": {"split": {**identity, "n": 200}, "n_images": SPLIT_N}}})
    assert data_differences(into, run_dir) == ["iter_0 shapesworld/settings.split.n: 500 -> 200"]
