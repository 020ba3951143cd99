"""Documented workflows: csr-reproduce refuses other evaluation data; a stage run alone on a run
directory starts from its config, redoes its stage and invalidates what follows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from csr_runs import run, tiny_env

from csr.commands.reproduce import METRICS, check_splits, data_differences, settings_diff
from csr.core.errors import CSRError
from csr.core.io import atomic_write_json, mark_done, read_json, read_jsonl
from csr.run.stage_run import OUTPUTS, STAGES, invalidate, stage_iteration
from csr.worlds.shapesworld.splits import MARKER, ensure_split, split_identity

SPLIT_N = 4  # a small split: written in well under a second


def _source(into: Path, root: Path, identity: dict) -> None:
    (into / METRICS).mkdir(parents=True)
    (into / "config.yaml").write_text(f"eval:\n  shapesworld:\n    root: {root}\n")
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


# -- a stage run alone ------------------------------------------------------------------------------


def _mark(d: Path, *stages: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for s in stages:
        mark_done(d, s, {})


def test_without_iteration_a_stage_runs_where_its_input_is(tmp_path):
    _mark(tmp_path / "iter_0", "eval")
    _mark(tmp_path / "iter_1", *STAGES)
    # A finished 1-iteration run: every stage goes to iteration 1, never to an empty iteration 2.
    assert [stage_iteration(tmp_path, s, 1) for s in STAGES] == [1] * 6
    _mark(tmp_path / "iter_2", "search", "reward")  # a 3-iteration run stopped in iteration 2
    assert {s: stage_iteration(tmp_path, s, 3) for s in STAGES} == {
        "search": 2, "reward": 2, "pairs": 2, "dpo": 1, "merge": 1, "eval": 1}
    assert stage_iteration(tmp_path / "new", "eval", 3) == 0  # only the base model to evaluate


def test_invalidate_removes_later_stages_iterations_and_summary(tmp_path):
    for k in (1, 2):
        _mark(tmp_path / f"iter_{k}", *STAGES)
        for names in OUTPUTS.values():
            (tmp_path / f"iter_{k}" / names[0]).write_text("x")
    (tmp_path / "iter_1" / "ref_logps.json").write_text("{}")
    (tmp_path / "summary.md").write_text("|")
    removed = invalidate(tmp_path, 1, "pairs")
    assert removed == ["iter_1/pairs", "iter_1/dpo", "iter_1/merge", "iter_1/eval", "iter_2", "summary"]
    left = sorted(p.name for p in (tmp_path / "iter_1").iterdir())
    assert left == ["ref_logps.json", "reward.done.json", "rewards.jsonl", "search.done.json", "search.jsonl"]
    _mark(tmp_path / "iter_2", *STAGES)
    assert invalidate(tmp_path, 1, "eval") == []  # nothing reads an evaluation (and eval was removed above)
    assert (tmp_path / "iter_2" / "eval.done.json").exists()


@pytest.mark.slow
def test_rescoring_a_finished_search_with_another_lambda(tiny_models, tmp_path):
    env, run_dir = tiny_env(tiny_models), tmp_path / "run"
    run("csr", "experiment=smoke", "iterations=1", "logger.enabled=false", f"run_dir={run_dir}", env=env, cwd=tmp_path)
    d = run_dir / "iter_1"
    original, search = (d / "rewards.jsonl").read_bytes(), (d / "search.jsonl").read_bytes()
    proc = run("csr", "stage=reward", f"run_dir={run_dir}", "reward.lam=0.1", env=env, cwd=tmp_path)
    assert ("stage run: iteration 1 reward with reward.lam: 0.9 -> 0.1 (saved as config.1.yaml); removed what it"
            " invalidates: iter_1/reward, iter_1/pairs, iter_1/dpo, iter_1/merge, iter_1/eval, summary") in proc.stdout
    rescored = read_jsonl(d / "rewards.jsonl")
    before = read_jsonl_bytes(original)
    sentences = [(a, b) for x, y in zip(before, rescored, strict=True) for p, q in zip(x["answers"], y["answers"], strict=True)
                 for a, b in zip(p["sentences"], q["sentences"], strict=True)]
    assert all((a["r_t"], a["r_i"]) == (b["r_t"], b["r_i"]) for a, b in sentences)  # same search, same scores
    assert any(a["reward"] != b["reward"] for a, b in sentences)  # weighed by the new lambda
    assert (d / "search.jsonl").read_bytes() == search
    assert not any((d / n).exists() for n in ("pairs.jsonl", "adapter", "merged", "eval", "pairs.done.json"))
    assert read_json(run_dir / "config_changes.json")[0]["changes"] == {"reward.lam": [0.9, 0.1]}
    assert read_json(run_dir / "summary.json")[1]["iteration"] == 1  # written again from what is left
    # Back to the first lambda: the first run's rewards, byte for byte; then pairs, in iteration 1 again.
    run("csr", "stage=reward", f"run_dir={run_dir}", "reward.lam=0.9", env=env, cwd=tmp_path)
    assert (d / "rewards.jsonl").read_bytes() == original
    run("csr", "stage=pairs", f"run_dir={run_dir}", env=env, cwd=tmp_path)
    assert (d / "pairs.done.json").exists() and not (run_dir / "iter_2").exists()
    assert [e["config"] for e in read_json(run_dir / "config_changes.json")] == ["config.1.yaml", "config.2.yaml"]


def read_jsonl_bytes(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def test_openai_weights_under_a_gelu_config_are_refused():
    from csr.models.clip import check_activation

    with pytest.raises(CSRError, match=r"set reward.clip.arch=ViT-L-14-336-quickgelu"):
        check_activation("ViT-L-14-336", "/ckpt/openai_vit_l_14_336/open_clip_model.safetensors")
    check_activation("ViT-L-14-336-quickgelu", "/ckpt/openai_vit_l_14_336/open_clip_model.safetensors")
    check_activation("ViT-L-14-336", "/ckpt/laion/open_clip_model.safetensors")  # not OpenAI's: GELU is right
