"""MLflow: one parent run per loop, one nested run per iteration. The only module that talks to MLflow.

Runs are addressed by id through an explicit client (no global "active run"), and the ids are kept
in `<run_dir>/mlflow_runs.json`, so a resumed loop logs into the runs it started.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from csr.core.errors import CSRError
from csr.core.extras import require
from csr.core.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

_BATCH = 100  # MLflow's limit of params per log_batch call
PROBE_SECONDS = 5.0  # MLflow itself retries an unreachable server or a broken store for minutes


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


def sqlite_path(uri: str) -> Path | None:
    """The file SQLAlchemy opens for a sqlite:/// URI: up to a '?' (a query), percent-decoded."""
    return Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0])) if uri.startswith("sqlite:///") else None


def sqlite_uri(path: Path) -> str:
    """The sqlite:/// URI of a file; '%' and '?' escaped, or SQLAlchemy decodes or cuts the path there."""
    return "sqlite:///" + str(Path(path).resolve()).replace("%", "%25").replace("?", "%3F")


def check_store(uri: str, key: str = "logger.tracking_uri") -> None:
    """Fail in one line, before any model loads, on a store MLflow could only retry against."""
    where = f"{key}={uri!r}"
    path = sqlite_path(uri)
    if path is not None:
        if not path.exists():
            if not os.access(path.parent, os.W_OK):
                raise CSRError(f"{where}: cannot create the MLflow store: {path.parent} is not a writable directory")
            return
        if path.is_dir() or not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK):
            why = "it is a directory" if path.is_dir() else "it (or its directory) is not readable and writable"
            raise CSRError(f"{where}: cannot access the MLflow store {path}: {why}")
        try:
            with sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=PROBE_SECONDS) as db:
                db.execute("PRAGMA schema_version").fetchone()
        except sqlite3.Error as err:
            raise CSRError(f"{where}: {path} is not a usable MLflow store ({err}): move it away or point "
                           "logger.tracking_uri at another store") from None
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS).close()
        except urllib.error.HTTPError:
            pass  # something answered; MLflow's own calls say what is wrong with it
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise CSRError(f"{where}: cannot reach the MLflow tracking server ({reason}): start it, or set "
                           "logger.tracking_uri=null for a store inside the run directory") from None


def reading_client(uri: str, key: str = "--tracking-uri"):
    """An MlflowClient on a store a command only reads (csr-compare, csr-reproduce): a store that is not
    there, is not a store, or has a scheme MLflow does not know is one line naming it (they were
    SQLAlchemy's or MLflow's tracebacks), and a missing sqlite file is not created."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise CSRError(f"{key} {uri}: no MLflow store at {path}{' (a directory)' if path.is_dir() else ''}: "
                       "name the store the runs were tracked in")
    check_store(uri, key)
    try:
        return MlflowClient(tracking_uri=uri)
    except MlflowException as err:
        reason = " ".join(err.message.split()).split(". See ")[0]
        raise CSRError(f"{key} {uri}: not a store MLflow can read ({reason})") from None


@contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """Two runs creating one fresh sqlite store at once race in MLflow's schema migration: take turns."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


class Tracker:
    """Thin wrapper over MlflowClient; with `enabled=False` every call is a no-op."""

    def __init__(self, run_dir: Path, enabled: bool, tracking_uri: str | None, experiment_name: str):
        self.run_dir, self.enabled = run_dir, enabled
        self.uri = tracking_uri or sqlite_uri(run_dir / "mlflow.db")
        self.ids_path = run_dir / "mlflow_runs.json"
        self.ids: dict[str, Any] = read_json(self.ids_path) if self.ids_path.exists() else {"iterations": {}}
        self.client = None
        self.started = False  # this start opened the parent run (it holds the run directory)
        if enabled:
            require("mlflow", "logger.enabled=true (tracking in MLflow; logger.enabled=false runs without it)")
            from mlflow.tracking import MlflowClient

            check_store(self.uri)
            with creation_lock(self.uri):  # the client may create the store's schema, the experiment
                self.client = MlflowClient(tracking_uri=self.uri)
                experiment = self.client.get_experiment_by_name(experiment_name)
                # Artifacts beside a local sqlite store (MLflow's default is ./mlruns of the current directory).
                artifacts = None
                if self.uri.startswith("sqlite:///"):
                    artifacts = (sqlite_path(self.uri).parent / "mlartifacts").resolve().as_uri()
                self.experiment_id = (
                    experiment.experiment_id if experiment
                    else self.client.create_experiment(experiment_name, artifact_location=artifacts)
                )
            self.experiment_name = experiment_name
            self._check_ids()

    def _check_ids(self) -> None:
        """A resume must find its runs: from another working directory the default store is another file."""
        from mlflow.exceptions import MlflowException

        if "parent" not in self.ids:
            return
        try:
            self.client.get_run(self.ids["parent"])
        except MlflowException:
            was = self.ids.get("tracking_uri", "another store")
            raise CSRError(
                f"{self.ids_path} names MLflow run {self.ids['parent']}, which the store {self.uri} does not hold "
                f"(the run was tracked in {was}): resume from the directory the run started in, or pass "
                "logger.tracking_uri=<that store>"
            ) from None

    def _save_ids(self) -> None:
        atomic_write_json(self.ids_path, self.ids)

    def parent(self, run_name: str, params: Mapping[str, Any]) -> str | None:
        if not self.enabled:
            return None
        if "parent" not in self.ids:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags={"csr.run_dir": str(self.run_dir)})
            self.ids["parent"] = run.info.run_id
            self.ids["tracking_uri"] = self.uri  # named by the error of a resume that finds another store
            self._save_ids()
            self.log_params(self.ids["parent"], params)
        else:
            self.client.update_run(self.ids["parent"], status="RUNNING")
        self.started = True
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
        elif self.client.get_run(self.ids["iterations"][key]).info.status in ("KILLED", "FAILED"):
            self.client.update_run(self.ids["iterations"][key], status="RUNNING")  # resumed
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

    def set_tags(self, run_id: str | None, tags: Mapping[str, str]) -> None:
        if self.enabled and run_id is not None:
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)

    def finish(self, run_id: str | None, status: str = "FINISHED") -> None:
        if self.enabled and run_id is not None:
            self.client.set_terminated(run_id, status=status)

    def close_open_runs(self, status: str, finished_iterations: Collection[str]) -> None:
        """After a signal or an error: this start's parent run and every iteration run not finished end
        as `status` (KILLED / FAILED), so none stays RUNNING (Lightning's logger may have marked an
        iteration FINISHED when DPO ended)."""
        if not self.enabled or not self.started:
            return
        for key, run_id in self.ids["iterations"].items():
            if key not in finished_iterations:
                self.client.set_terminated(run_id, status=status)
        self.client.set_terminated(self.ids["parent"], status=status)

    def lightning_logger(self, run_id: str | None):
        """A Lightning logger writing into an existing run (DPO's per-step metrics)."""
        if not self.enabled or run_id is None:
            return None
        from pytorch_lightning.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name=self.experiment_name, tracking_uri=self.uri, run_id=run_id)


# -- reading loops back (csr-compare, csr-reproduce) -------------------------------------------------


def loop_runs(tracking_uri: str, experiment: str | None,
              run_ids: list[str]) -> list[tuple[str, dict[str, str], dict[int, dict[str, float]], str | None]]:
    """(name, params, iteration -> metrics, the csr.run.run_dir tag) of each loop's parent run: of an
    experiment, or the parents of the given runs. Iteration 0 (the base model's evaluation) lives in the
    parent at step 0, iteration k in its nested run."""
    require("mlflow", "reading runs from an MLflow store")
    client = reading_client(tracking_uri)
    if run_ids:
        parents = []
        for run_id in run_ids:
            run = client.get_run(run_id)
            parent_id = run.data.tags.get("mlflow.parentRunId")
            parents.append(client.get_run(parent_id) if parent_id else run)
        experiment_ids = sorted({p.info.experiment_id for p in parents})
    else:
        found = client.get_experiment_by_name(experiment or "csr")
        if found is None:
            raise CSRError(f"{tracking_uri}: no experiment named {experiment or 'csr'!r}")
        experiment_ids = [found.experiment_id]
        parents = None
    every = client.search_runs(experiment_ids, max_results=50000, order_by=["attributes.start_time ASC"])
    if parents is None:
        parents = [r for r in every if "mlflow.parentRunId" not in r.data.tags]
    loops = []
    for parent in {p.info.run_id: p for p in parents}.values():
        pid = parent.info.run_id
        metrics: dict[int, dict[str, float]] = {}
        for child in every:
            if child.data.tags.get("mlflow.parentRunId") == pid and "csr.iteration" in child.data.tags:
                metrics[int(child.data.tags["csr.iteration"])] = dict(child.data.metrics)
        base = {key: m.value for key in parent.data.metrics if key.startswith("eval/")
                for m in client.get_metric_history(pid, key) if m.step == 0}
        if base:
            metrics[0] = base
        loops.append((parent.info.run_name or pid, dict(parent.data.params), metrics, parent.data.tags.get("csr.run_dir")))
    return loops


def download_loop(run_id: str, tracking_uri: str, into: Path, changes: str, metrics_dir: Path,
                  config_names: Callable[[Path], list[str]]) -> str:
    """The files a loop's parent run holds (config.yaml, run_info.json, the `changes` file and the configs
    it names: `config_names(into)`, which checks each name) into `into`, each iteration's metrics.json as
    metrics_dir/iter_<k>.json; returns the parent's id (an iteration run's id leads to its parent)."""
    require("mlflow", "reading a run from an MLflow store")
    from mlflow.exceptions import MlflowException

    client = reading_client(tracking_uri)
    try:
        parent_id = client.get_run(run_id).data.tags.get("mlflow.parentRunId", run_id)
        for name in ("config.yaml", "run_info.json"):
            client.download_artifacts(parent_id, name, str(into))
        if changes in {a.path for a in client.list_artifacts(parent_id)}:
            client.download_artifacts(parent_id, changes, str(into))
            for name in config_names(into):
                client.download_artifacts(parent_id, name, str(into))
        parent = client.get_run(parent_id)
        metrics_dir.mkdir(exist_ok=True)
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
        for k, run in [(0, parent), *((r.data.tags.get("csr.iteration"), r) for r in children)]:
            if "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}:
                client.download_artifacts(run.info.run_id, "metrics.json", str(metrics_dir))
                (metrics_dir / "metrics.json").replace(metrics_dir / f"iter_{k}.json")
    except MlflowException as err:
        raise CSRError(f"MLflow run {run_id} in {tracking_uri}: {err.message}") from None
    return parent_id
