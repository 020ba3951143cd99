"""What a run shows and reports: csr's own progress on the console (stage-labelled bars, the run
directory at start and end, no library chatter), DPO's summary as the epoch's mean, every DPO step
training (no step at lr 0), sweep loops named by their overrides, counters kept out of csr-compare."""

from __future__ import annotations

import copy
import json
import statistics

import pytest
from csr_runs import run, tiny_env

from csr.commands.compare import Run, metric_columns
from csr.dpo.schedule import lr_factor

CHATTER = ("Loading weights", "Writing model shards", "[root][INFO]", "v_num", "Setting accelerator",
           "mlflow.store.db.utils", "Creating initial MLflow", "alembic", "Predicting", "transfer_batch_to_device")


@pytest.fixture(scope="module")
def smoke(tiny_models, tmp_path_factory):
    base = tmp_path_factory.mktemp("console")
    run_dir = base / "run"
    proc = run("csr", "experiment=smoke", "iterations=1", f"run_dir={run_dir}", "logger.tracking_uri=null",
               env=tiny_env(tiny_models), cwd=base)
    return run_dir, proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_console_shows_csrs_progress_and_no_library_chatter(smoke):
    run_dir, out = smoke
    assert [c for c in CHATTER if c in out] == []
    lines = out.splitlines()
    assert f"run directory: {run_dir} (new)" in lines[0]
    assert lines[-1].endswith(f"done: {run_dir} (summary.md)")
    for label in ("iteration 0 eval generate: answers batches", "iteration 1 search: prompt batches",
                  "iteration 1 reward: prompt batches", "iteration 1 dpo: reference pass batches",
                  "iteration 1 dpo: epoch 1/1, pair batches", "iteration 1 eval generate: answers batches"):
        assert label in out, label


@pytest.mark.slow
def test_dpo_reports_the_epochs_mean_and_the_last_step_apart(smoke):
    from mlflow.tracking import MlflowClient

    run_dir, _ = smoke
    stats = json.loads((run_dir / "iter_1" / "dpo.done.json").read_text())["stats"]
    runs = json.loads((run_dir / "mlflow_runs.json").read_text())
    client = MlflowClient(runs["tracking_uri"])
    steps = client.get_metric_history(runs["iterations"]["1"], "rewards/accuracies")
    per_step = [m.value for m in sorted(steps, key=lambda m: m.step)]
    assert stats["steps"] == len(per_step) == 8  # one pair per step (smoke: dpo.batch_size 1)
    assert stats["rewards/accuracies"] == pytest.approx(statistics.mean(per_step))
    assert stats["last/rewards/accuracies"] == per_step[-1]
    lrs = [m.value for m in client.get_metric_history(runs["iterations"]["1"], "lr")]
    assert min(lrs) > 0  # no optimizer step at learning rate 0


def test_lr_factor_by_hand():
    # warmup 2 of 10 steps: 1/3, 2/3, then the cosine over the 8 remaining steps
    assert [lr_factor(s, 2, 10, "cosine") for s in (0, 1, 2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lr_factor(6, 2, 10, "cosine") == pytest.approx(0.5)  # halfway through the decay: cos(pi/2)
    assert lr_factor(9, 2, 10, "cosine") == pytest.approx(0.5 * (1 + (-0.9238795325)))  # cos(7/8 pi), not 0
    assert [lr_factor(s, 1, 4, "constant") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0, 4, "cosine") == 1.0  # no warmup: the first step at the full rate


def test_compare_leaves_counters_out_unless_asked():
    metrics = {1: {"eval/shapesworld/chair_s": 0.2, "eval/shapesworld/n_images": 500.0, "eval/generate/answers": 8.0,
                   "eval/shapesworld/skipped": 0.0, "eval/shapesworld/skipped/too_long": 0.0, "eval/seconds": 3.0,
                   "eval/shapesworld/pope_f1": 0.8, "eval/generate/mean_r_i": 20.0, "pairs/margin": 1.0}}
    run_ = Run("r", {}, metrics, None)
    assert metric_columns([run_], None) == ["pairs/margin", "eval/generate/mean_r_i", "eval/shapesworld/chair_s",
                                            "eval/shapesworld/pope_f1"]
    assert metric_columns([run_], ["eval/shapesworld/n_images"]) == ["eval/shapesworld/n_images"]


def test_a_sweep_job_is_named_by_its_overrides():
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from csr.cli import CONF_DIR
    from csr.run.run_info import sweep_run_name

    overrides = ["reward.lam=0.1", "search.beam_width=5", "run_dir=/tmp/x", "logger.tracking_uri=null"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    sweep_job = copy.deepcopy(cfg)
    HydraConfig.instance().set_config(cfg)
    assert sweep_run_name() is None  # a single run keeps its run directory's name
    sweep_job.hydra.mode = "MULTIRUN"
    HydraConfig.instance().set_config(sweep_job)
    assert sweep_run_name() == "reward.lam=0.1 search.beam_width=5"
