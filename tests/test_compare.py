"""Sweeps and `csr-compare`: the launcher presets compose, a real 2-run joblib sweep, and its table
and plots from the sweep directory and from the MLflow store (no server)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from csr_runs import LAMS, sweep, tiny_env
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from csr.cli import CONF_DIR
from csr.commands.compare import compare, main, runs_from_dirs, runs_from_mlflow, table


def _hydra(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=["run_dir=/tmp/x", *overrides], return_hydra_config=True).hydra


def test_slurm_launcher_takes_partition_gpus_and_time():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    h = _hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
               "hydra.launcher.timeout_min=600")
    launcher = h.launcher
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 4, 600)
    assert launcher.tasks_per_node == 4  # one rank per GPU
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"


def test_parallel_launcher_prepares_the_shared_store_first():
    h = _hydra("hydra/launcher=parallel")
    assert h.launcher._target_.endswith("JoblibLauncher") and h.launcher.n_jobs == 2
    assert h.callbacks.tracking_store._target_ == "csr.cli.PrepareTrackingStore"
    assert _hydra("hydra/launcher=sequential").launcher._target_.endswith("BasicLauncher")


@pytest.fixture(scope="module")
def swept(tiny_models, tmp_path_factory) -> Path:
    return sweep(tmp_path_factory, tiny_env(tiny_models))


@pytest.mark.slow
def test_compare_a_sweep_directory(swept, tmp_path, capsys):
    main([str(swept / "sweep"), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| run | reward.lam | iteration |" in printed
    with (tmp_path / "comparison.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # runs x iterations (0 = the base model's evaluation), the swept key, then the metrics
    assert [(r["run"], r["reward.lam"], r["iteration"]) for r in rows] == [
        ("0", LAMS[0], "0"), ("0", LAMS[0], "1"), ("1", LAMS[1], "0"), ("1", LAMS[1], "1")]
    assert float(rows[1]["pairs/pairs"]) > 0 and rows[0]["pairs/pairs"] == ""
    assert {"pairs/margin", "dpo/rewards/accuracies", "eval/generate/mean_r_i"} <= set(rows[0])
    assert (tmp_path / "comparison.md").read_text().startswith("| run | reward.lam | iteration |")
    for plot in ("metric_vs_iteration.png", "score_gap.png", "r_i_before_after.png"):
        assert (tmp_path / plot).stat().st_size > 5000, plot


@pytest.mark.slow
def test_the_mlflow_store_gives_the_same_table(swept, tmp_path):
    uri = f"sqlite:///{swept / 'mlflow.db'}"
    from_store = runs_from_mlflow(uri, "csr", [])
    from_dirs = runs_from_dirs([swept / "sweep"])
    assert [r.name for r in from_store] == [f"lam_{lam}" for lam in LAMS]
    assert all(r.run_dir is not None for r in from_store)  # the csr.run.run_dir tag: per-answer files found
    metrics = ["pairs/pairs", "pairs/margin", "dpo/loss", "eval/generate/mean_r_i"]
    strip = [{k: v for k, v in row.items() if k != "run"} for row in table(from_dirs, ["reward.lam"], metrics)]
    assert [{k: v for k, v in row.items() if k != "run"} for row in table(from_store, ["reward.lam"], metrics)] == strip
    # An iteration run's id stands for its whole loop; the result is written like the directory's.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    every = client.search_runs([client.get_experiment_by_name("csr").experiment_id])
    nested = [r for r in every if r.data.tags.get("csr.iteration") == "1"]
    (run,) = runs_from_mlflow(uri, None, [nested[0].info.run_id])
    assert run.name in {f"lam_{lam}" for lam in LAMS} and sorted(run.metrics) == [0, 1]
    compare(from_store, tmp_path)
    assert (tmp_path / "comparison.csv").exists()


def test_compare_without_runs_fails_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2
    assert "no csr run" in capsys.readouterr().err


def test_parallel_sweeps_find_the_store_and_experiment_made(tmp_path):
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from csr.cli import PrepareTrackingStore

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = OmegaConf.create({"logger": {"enabled": True, "tracking_uri": uri, "experiment_name": "sweep"},
                               "hydra": {"sweep": {"dir": str(tmp_path)}}})
    PrepareTrackingStore().on_multirun_start(config)
    assert MlflowClient(uri).get_experiment_by_name("sweep") is not None
