"""End to end: the `csr` command, 2 iterations on the tiny models, then resume and error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from csr.core.io import read_json, read_jsonl
from csr.data.tiny import write_tiny_prompts

pytestmark = pytest.mark.slow

FAST = ["experiment=smoke", "logger.tracking_uri=null"]  # null: the run's own store, inside run_dir


def csr(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "csr"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def env(tiny_models) -> dict:
    root = Path(tiny_models.llava).parent
    write_tiny_prompts(root / "data", n=8)
    return {**os.environ, "CSR_TINY_DIR": str(root), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def run(env, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    csr("iterations=2", f"run_dir={run_dir}", *FAST, env=env)
    return run_dir


def test_every_output_exists_and_parses(run):
    assert (run / "config.yaml").exists()
    assert read_json(run / "iter_0" / "metrics.json")["eval"]["generate/answers"] == 4
    for k in (1, 2):
        d = run / f"iter_{k}"
        assert len(read_jsonl(d / "search.jsonl")) == 8
        assert len(read_jsonl(d / "rewards.jsonl")) == 8
        pairs = read_jsonl(d / "pairs.jsonl")
        assert pairs and all(p["chosen"] != p["rejected"] and p["margin"] > 0 for p in pairs)
        assert len(json.loads((d / "pairs_llava.json").read_text())) == len(pairs)
        assert len(read_jsonl(d / "pairs_trl.jsonl")) == len(pairs)
        assert (d / "adapter" / "adapter_config.json").exists()
        assert (d / "merged" / "config.json").exists() and (d / "merged" / "model.safetensors").exists()
        metrics = read_json(d / "metrics.json")
        assert set(metrics) == {"search", "reward", "pairs", "dpo", "merge", "eval"}
        assert metrics["pairs"]["pairs"] == len(pairs)
        assert metrics["dpo"]["steps"] == len(pairs)
    assert (run / "summary.md").exists() and (run / "summary.png").stat().st_size > 1000


def test_iteration_two_starts_from_iteration_one_merged_weights(run, tiny_models):
    stats = read_json(run / "iter_2" / "search.done.json")["stats"]
    assert stats["model_path"] == str(run / "iter_1" / "merged")
    base = load_file(Path(tiny_models.llava) / "model.safetensors")
    merged = load_file(run / "iter_1" / "merged" / "model.safetensors")
    assert base.keys() == merged.keys()  # a plain checkpoint: no LoRA keys left
    changed = [k for k in base if not (base[k] == merged[k]).all()]
    assert changed and all("language_model" in k for k in changed)  # vision tower and projector frozen
    assert not any("lm_head" in k for k in changed)


def test_mlflow_has_parent_and_nested_iteration_runs(run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "csr"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(nested) == 2
    assert parents[0].info.status == "FINISHED"
    for r in nested:
        assert r.data.params["reward.lam"] == "0.9" and r.data.params["search.beam_width"] == "5"
        assert r.data.metrics["pairs/pairs"] > 0 and "search/nodes_expanded" in r.data.metrics
        assert {"pairs/chosen/r_i", "pairs/margin", "eval/generate/mean_r_i"} <= set(r.data.metrics)
        history = client.get_metric_history(r.info.run_id, "rewards/chosen")
        assert len(history) == r.data.metrics["dpo/steps"]  # DPO metrics per optimizer step
    assert len(client.get_metric_history(parents[0].info.run_id, "eval/generate/mean_r_i")) == 3  # iter 0, 1, 2
    assert "config.yaml" in [a.path for a in client.list_artifacts(parents[0].info.run_id)]


def test_interrupted_search_resumes_without_loss_or_duplicates(run, env):
    path = run / "iter_1" / "search.jsonl"
    complete = path.read_text()
    lines = complete.splitlines(keepends=True)
    # What a kill leaves: some whole records, then half of one.
    path.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    csr("stage=search", "iteration=1", f"run_dir={run}", "iterations=2", *FAST, env=env)
    assert path.read_text() == complete  # deterministic decoding: the same 8 records, in order


def test_rerunning_a_finished_run_redoes_nothing(run, env):
    stamp = {p: p.stat().st_mtime_ns for p in run.glob("iter_*/*.jsonl")}
    proc = csr("iterations=2", f"run_dir={run}", *FAST, env=env)
    assert "| iteration |" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in run.glob("iter_*/*.jsonl")} == stamp


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("reward.lam=1.5", "'reward.lam': 1.5 must be in [0, 1]"),
        ("stage=foo", "stage"),
        ("model.path=/no/such/model", "model.path='/no/such/model'"),
        ("data.prompt_file=/no/such/prompts.json", "/no/such/prompts.json"),
    ],
)
def test_bad_input_fails_with_a_clear_message(env, tmp_path, override, message):
    proc = csr(f"run_dir={tmp_path}", "iterations=1", "logger.tracking_uri=null", override, env=env, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "iteration 0: eval done" not in proc.stdout + proc.stderr  # refused at start, not after the base eval
