"""Reproduction: a run records what it needs (config, overrides, versions, commit), and
`csr-reproduce` re-runs it to identical pairs and metrics in deterministic mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from csr_runs import LAMS, run, sweep, tiny_env
from mlflow.tracking import MlflowClient

from csr.commands.reproduce import _from_mlflow
from csr.core.io import read_json
from csr.run.run_info import LIBRARIES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tiny_models, tmp_path_factory) -> Path:
    return sweep(tmp_path_factory, tiny_env(tiny_models)) / "sweep" / "1"


@pytest.fixture(scope="module")
def reproduced(source, tiny_models, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("reproduced")
    # An extra override: the copy logs into its own store, not the sweep's.
    proc = run("csr-reproduce", str(source), "logger.tracking_uri=null", "--run-dir", str(out),
               env=tiny_env(tiny_models), cwd=out)
    return out, proc.stderr


def test_a_run_records_overrides_versions_and_commit(source):
    info = read_json(source / "run_info.json")
    assert f"reward.lam={LAMS[1]}" in info["overrides"] and "iterations=1" in info["overrides"]
    assert set(info["libraries"]) == set(LIBRARIES) and info["libraries"]["torch"]
    assert info["csr_version"] and info["git_commit"]  # the tests run from a git checkout
    client = MlflowClient(f"sqlite:///{source.parent.parent / 'mlflow.db'}")
    parent = client.get_run(read_json(source / "mlflow_runs.json")["parent"])
    assert parent.data.params["run.git_commit"] == info["git_commit"]
    assert parent.data.params["run.lib.transformers"] == info["libraries"]["transformers"]
    assert f"reward.lam={LAMS[1]}" in parent.data.params["run.overrides"]
    assert {"config.yaml", "run_info.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def _numbers(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if isinstance(v, int | float) and k != "seconds"}


def test_reproduced_run_has_identical_pairs_and_metrics(source, reproduced):
    out, stderr = reproduced
    assert "the source ran with overrides" in stderr
    assert (out / "reproduced_from" / "config.yaml").read_text() == (source / "config.yaml").read_text()
    for name in ("iter_1/search.jsonl", "iter_1/pairs.jsonl", "iter_0/eval/generate/answers.jsonl",
                 "iter_1/eval/generate/answers.jsonl"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name
    for k in (0, 1):
        a, b = read_json(source / f"iter_{k}" / "metrics.json"), read_json(out / f"iter_{k}" / "metrics.json")
        assert a.keys() == b.keys()
        for stage in a:
            assert _numbers(b[stage]) == _numbers(a[stage]), (k, stage)


def test_an_mlflow_run_id_leads_to_the_same_config(source, tmp_path):
    uri = f"sqlite:///{source.parent.parent / 'mlflow.db'}"
    nested = read_json(source / "mlflow_runs.json")["iterations"]["1"]
    where = _from_mlflow(nested, uri, tmp_path)  # an iteration run: its parent holds the config
    assert where["mlflow_run_id"] == read_json(source / "mlflow_runs.json")["parent"]
    assert (tmp_path / "config.yaml").read_text() == (source / "config.yaml").read_text()
    assert read_json(tmp_path / "run_info.json") == read_json(source / "run_info.json")
