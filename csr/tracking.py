"""MLflow: one parent run per loop, one nested run per iteration. The only module that talks to MLflow.

Runs are addressed by id through an explicit client (no global "active run"), and the ids are kept
in `<run_dir>/mlflow_runs.json`, so a resumed loop logs into the runs it started.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from csr.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

_BATCH = 100  # MLflow's limit of params per log_batch call


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """Thin wrapper over MlflowClient; with `enabled=False` every call is a no-op."""

    def __init__(self, run_dir: Path, enabled: bool, tracking_uri: str | None, experiment_name: str):
        self.run_dir, self.enabled = run_dir, enabled
        self.uri = tracking_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.ids_path = run_dir / "mlflow_runs.json"
        self.ids: dict[str, Any] = read_json(self.ids_path) if self.ids_path.exists() else {"iterations": {}}
        self.client = None
        if enabled:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name(experiment_name)
            # Artifacts beside a local sqlite store (MLflow's default is ./mlruns of the current directory).
            artifacts = None
            if self.uri.startswith("sqlite:///"):
                artifacts = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
            self.experiment_id = (
                experiment.experiment_id if experiment
                else self.client.create_experiment(experiment_name, artifact_location=artifacts)
            )
            self.experiment_name = experiment_name

    def _save_ids(self) -> None:
        atomic_write_json(self.ids_path, self.ids)

    def parent(self, run_name: str, params: Mapping[str, Any]) -> str | None:
        if not self.enabled:
            return None
        if "parent" not in self.ids:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags={"csr.run_dir": str(self.run_dir)})
            self.ids["parent"] = run.info.run_id
            self._save_ids()
            self.log_params(self.ids["parent"], params)
        else:
            self.client.update_run(self.ids["parent"], status="RUNNING")
        return self.ids["parent"]

    def iteration(self, k: int, params: Mapping[str, Any]) -> str | None:
        """The nested run of iteration k (created once; reused on resume)."""
        if not self.enabled:
            return None
        key = str(k)
        if key not in self.ids["iterations"]:
            tags = {"mlflow.parentRunId": self.ids["parent"], "csr.iteration": key}
            run = self.client.create_run(self.experiment_id, run_name=f"iter_{k}", tags=tags)
            self.ids["iterations"][key] = run.info.run_id
            self._save_ids()
            self.log_params(run.info.run_id, {**params, "iteration": k})
        return self.ids["iterations"][key]

    def log_params(self, run_id: str | None, params: Mapping[str, Any]) -> None:
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])

    def log_metrics(self, run_id: str | None, metrics: Mapping[str, Any], step: int = 0, prefix: str = "") -> None:
        """Logs the numeric, finite values; everything else (None, strings) is left out."""
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(prefix + k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + _BATCH])

    def log_artifact(self, run_id: str | None, path: Path) -> None:
        if self.enabled and run_id is not None:
            self.client.log_artifact(run_id, str(path))

    def finish(self, run_id: str | None, status: str = "FINISHED") -> None:
        if self.enabled and run_id is not None:
            self.client.set_terminated(run_id, status=status)

    def lightning_logger(self, run_id: str | None):
        """A Lightning logger writing into an existing run (DPO's per-step metrics)."""
        if not self.enabled or run_id is None:
            return None
        from pytorch_lightning.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name=self.experiment_name, tracking_uri=self.uri, run_id=run_id)
