"""`csr-reproduce`: run a finished run again from what it recorded.

    csr-reproduce outputs/2026-11-26/10-00-00 [key=value ...] [--run-dir DIR]
    csr-reproduce <MLflow run id> --tracking-uri sqlite:///$PWD/mlflow.db [key=value ...]

The source's resolved config.yaml (the run directory's, or the MLflow run's artifact) becomes the
primary config of a new `csr` run, so the conf/ files as they are today do not matter; extra
overrides apply on top. A run resumed with `resume.allow_changes` is replayed start by start: the
stages each config finished before the next change (config_changes.json) run alone under it, then
the last config runs as it was started. Differences between the recorded and the installed csr
commit and library versions are printed first: with them the numbers may differ.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from csr.errors import CSRError
from csr.io import atomic_write_json, read_json
from csr.run_dir import CHANGES
from csr.run_info import run_info, version_differences
from csr.tracking import sqlite_uri

SOURCE_DIR = "reproduced_from"  # inside the new run: the source's config.yaml, run_info.json, source.json


def _from_run_dir(source: Path, into: Path) -> dict:
    if not (source / "config.yaml").exists():
        raise CSRError(f"{source}: no config.yaml (not a csr run directory)")
    shutil.copy(source / "config.yaml", into / "config.yaml")
    if (source / "run_info.json").exists():
        shutil.copy(source / "run_info.json", into / "run_info.json")
    if (source / CHANGES).exists():
        shutil.copy(source / CHANGES, into / CHANGES)
        for entry in read_json(into / CHANGES):
            shutil.copy(source / entry["config"], into / entry["config"])
    return {"run_dir": str(source.resolve())}


def _from_mlflow(run_id: str, tracking_uri: str, into: Path) -> dict:
    """The loop's parent run holds config.yaml and run_info.json as artifacts (an iteration run's
    id leads to its parent)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
        parent_id = run.data.tags.get("mlflow.parentRunId", run_id)
        for name in ("config.yaml", "run_info.json"):
            client.download_artifacts(parent_id, name, str(into))
        if CHANGES in {a.path for a in client.list_artifacts(parent_id)}:
            client.download_artifacts(parent_id, CHANGES, str(into))
            for entry in read_json(into / CHANGES):
                client.download_artifacts(parent_id, entry["config"], str(into))
    except MlflowException as err:
        raise CSRError(f"MLflow run {run_id} in {tracking_uri}: {err.message}") from None
    return {"mlflow_run_id": parent_id, "tracking_uri": tracking_uri}


def _csr_command() -> list[str]:
    # The installed `csr` script itself, so that DDP's launcher can start it again on the other ranks.
    script = shutil.which("csr") or str(Path(sys.executable).parent / "csr")
    return [sys.executable, script]


def replay(into: Path) -> list[list[str]]:
    """The arguments of each `csr` start that replays the source: per accepted config change, the
    stages finished under the config before it, each alone; then the last config as it was started."""
    entries = read_json(into / CHANGES) if (into / CHANGES).exists() else []
    configs = ["config", *(e["config"].removesuffix(".yaml") for e in entries)]
    starts, done = [], []
    for name, entry in zip(configs, entries, strict=False):
        for where in entry["finished"]:
            if where not in done:
                iteration, stage = where.split("/")
                starts.append([f"--config-name={name}", f"stage={stage}", f"iteration={iteration.removeprefix('iter_')}"])
                done.append(where)
    return [*starts, [f"--config-name={configs[-1]}"]]


def reproduce(source: str, overrides: list[str], run_dir: Path | None, tracking_uri: str) -> int:
    if run_dir is None:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        run_dir = Path("outputs") / "reproduce" / f"{Path(source).name}-{stamp}"
    run_dir = run_dir.resolve()
    created = not run_dir.exists()
    into = run_dir / SOURCE_DIR
    into.mkdir(parents=True, exist_ok=True)
    try:
        where = _from_run_dir(Path(source), into) if Path(source).is_dir() else _from_mlflow(source, tracking_uri, into)
    except CSRError:
        if created:  # leave no empty run directory behind
            shutil.rmtree(run_dir)
        raise
    atomic_write_json(into / "source.json", {**where, "extra_overrides": overrides})
    if (into / "run_info.json").exists():
        recorded = read_json(into / "run_info.json")
        print(f"csr-reproduce: the source ran with overrides {recorded.get('overrides')}", file=sys.stderr)
        for line in version_differences(recorded, run_info()):
            print(f"csr-reproduce: warning: {line}", file=sys.stderr)
    else:
        print("csr-reproduce: warning: the source has no run_info.json; versions unknown", file=sys.stderr)
    for start in replay(into):
        command = [*_csr_command(), f"--config-path={into}", *start, f"run_dir={run_dir}", f"hydra.run.dir={run_dir}",
                   *overrides]
        print("csr-reproduce: " + " ".join(command[1:]), file=sys.stderr)
        code = subprocess.run(command).returncode
        if code != 0:
            return code
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="csr-reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a csr run directory, or an MLflow run id (parent or iteration run)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, key=value")
    parser.add_argument("--run-dir", type=Path, help="the new run's directory (default outputs/reproduce/<source>-<time>)")
    parser.add_argument("--tracking-uri", default=sqlite_uri(Path.cwd() / "mlflow.db"),
                        help="MLflow store of a run id (default: ./mlflow.db, the csr default)")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if o.split("=", 1)[0].lstrip("+~") in ("run_dir", "hydra.run.dir")]
    if bad:
        parser.error(f"{bad[0]}: give the new run's directory with --run-dir")
    try:
        sys.exit(reproduce(args.source, args.overrides, args.run_dir, args.tracking_uri))
    except CSRError as err:
        print(f"csr-reproduce: {err}", file=sys.stderr)
        sys.exit(2)
