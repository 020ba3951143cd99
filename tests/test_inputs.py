"""Inputs replaced at the same path are noticed (csr/run/inputs.py, csr/core/identity.py): the
starting checkpoint and CLIP files against inputs.json at a resume, and what each stage was made from
against its done marker. In-process, no model loads: the checkpoints are a config.json and one
safetensors file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compose_config import compose_config
from safetensors.torch import save_file

from csr.config.schema import validate
from csr.core.errors import CSRError
from csr.core.identity import path_identity
from csr.core.io import mark_done, read_json
from csr.loop import Loop
from csr.run.inputs import made_from


def checkpoint(path: Path, seed: int, shape: tuple[int, int] = (64, 64)) -> Path:
    """A checkpoint directory: a config.json and weights drawn with `seed` (same names and shapes)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llava", "hidden": shape[0]}))
    g = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randn(*shape, generator=g), "b": torch.randn(shape[0], generator=g)},
              path / "model.safetensors")
    return path


def start(run_dir: Path, inputs: Path, *overrides: str) -> Loop:
    loop = Loop(validate(compose_config(f"run_dir={run_dir}", f"model.path={inputs / 'model'}",
                                        f"reward.clip.weights={inputs / 'clip.safetensors'}", *overrides)))
    with loop.open_run_dir():
        pass
    return loop


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


@pytest.fixture
def inputs(tmp_path):
    checkpoint(tmp_path / "in" / "model", seed=0)
    save_file({"visual.proj": torch.ones(8, 8)}, tmp_path / "in" / "clip.safetensors")
    return tmp_path / "in"


def test_identity_is_the_content_not_the_place_or_time(tmp_path):
    a = path_identity(checkpoint(tmp_path / "a", seed=0))
    assert path_identity(checkpoint(tmp_path / "b", seed=0)) == a  # the same content elsewhere, written later
    (tmp_path / "b" / ".cache").mkdir()
    (tmp_path / "b" / ".cache" / "x").write_text("a cache")  # hidden: not read by a load
    assert path_identity(tmp_path / "b") == a
    assert path_identity(checkpoint(tmp_path / "b", seed=1)) != a  # other values, same names and shapes
    checkpoint(tmp_path / "b", seed=0)
    (tmp_path / "b" / "config.json").write_text('{"model_type": "llava", "hidden": 65}')
    assert path_identity(tmp_path / "b") != a
    assert path_identity(checkpoint(tmp_path / "c", seed=0, shape=(64, 65))) != a


def test_a_checkpoint_swapped_behind_model_path_is_refused_with_the_diff(tmp_path, inputs):
    run = tmp_path / "run"
    start(run, inputs)
    recorded = read_json(run / "inputs.json")
    assert recorded["model.path"]["content"] == path_identity(inputs / "model")
    assert recorded["reward.clip.weights"]["value"] == str(inputs / "clip.safetensors")
    start(run, inputs)  # the same inputs: a plain resume
    checkpoint(inputs / "model", seed=1)  # another model of the same architecture, at the same path
    before = snapshot(run)
    with pytest.raises(CSRError) as err:
        start(run, inputs)
    message = str(err.value)
    assert f"was started with other inputs (model.path: {inputs / 'model'} (content " in message
    assert "changed on disk)" in message and "resume.allow_changes=[model.path]" in message
    assert snapshot(run) == before  # a refusal writes nothing
    loop = start(run, inputs, "resume.allow_changes=[model.path]")  # accepted as a config change is
    assert list(loop.change["changes"]) == ["model.path"]
    assert read_json(run / "inputs.json")["model.path"]["content"] == path_identity(inputs / "model")
    start(run, inputs)  # recorded: resumes again without the allowance


def test_changed_clip_weights_are_refused_and_a_stage_run_takes_them_as_a_change(tmp_path, inputs):
    run = tmp_path / "run"
    start(run, inputs)
    save_file({"visual.proj": torch.zeros(8, 8)}, inputs / "clip.safetensors")
    with pytest.raises(CSRError, match=r"reward.clip.weights: .*changed on disk"):
        start(run, inputs)
    loop = start(run, inputs, "stage=reward", "iteration=1")  # a stage run: redone under the change
    assert list(loop.change["changes"]) == ["reward.clip.weights"]


def iteration_one(run: Path) -> None:
    """Iteration 1 finished up to pairs, each marker recording what its stage read (as Loop.run_stage does)."""
    d = run / "iter_1"
    d.mkdir()
    for stage, out in (("search", "search.jsonl"), ("reward", "rewards.jsonl"), ("pairs", "pairs.jsonl")):
        sources = made_from(run, 1, stage)
        (d / out).write_text(json.dumps({"id": "a", "stage": stage}) + "\n")
        mark_done(d, stage, {"n": 1}, sources)


def test_a_stage_made_from_a_replaced_input_is_refused_then_redone_by_a_stage_run(tmp_path, inputs, monkeypatch):
    run = tmp_path / "run"
    loop = start(run, inputs)
    iteration_one(run)
    assert read_json(run / "iter_1" / "reward.done.json")["made_from"] == {
        "iter_1/search.jsonl": path_identity(run / "iter_1" / "search.jsonl")}
    monkeypatch.setattr(Loop, "run_stage", lambda self, stage, k, run_id: {})  # no model: only the decisions
    loop.iteration(1, stages=("search", "reward", "pairs"))  # nothing changed: goes on
    (run / "iter_1" / "search.jsonl").write_text(json.dumps({"id": "b"}) + "\n")  # replaced by hand
    with pytest.raises(CSRError) as err:
        loop.iteration(1, stages=("search", "reward", "pairs"))
    assert str(err.value) == (
        f"{run}/iter_1/reward.done.json: iteration 1's reward was made from iter_1/search.jsonl as it was then, "
        f"which has changed since (rebuilt or replaced): redo it and what follows with `csr stage=reward iteration=1 "
        f"run_dir={run}`, or restore iter_1/search.jsonl")
    ran = []
    monkeypatch.setattr(Loop, "iteration", lambda self, k, stages, force: ran.append((k, stages)) or {})
    start(run, inputs, "stage=reward", "iteration=1").stage_alone("reward")  # the run's own config
    assert ran == [(1, ("reward",))]
    assert sorted(p.name for p in (run / "iter_1").iterdir()) == ["metrics.json", "search.done.json", "search.jsonl"]
