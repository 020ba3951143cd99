"""`csr-reproduce`: run a finished run again from what it recorded.

    csr-reproduce outputs/2026-11-26/10-00-00 [key=value ...] [--run-dir DIR]
    csr-reproduce <MLflow run id> --tracking-uri sqlite:///$PWD/mlflow.db [key=value ...]

The source's resolved config.yaml (the run directory's, or the MLflow run's artifact) becomes the
primary config of a new `csr` run, so the conf/ files as they are today do not matter; extra
overrides apply on top. A run resumed with `resume.allow_changes` is replayed start by start: the
stages each config finished before the next change (config_changes.json) run alone under it, then
the last config runs as it was started. Differences between the recorded and the installed csr
commit and library versions are printed first: with them the numbers may differ.

The evaluation data must be the source's: each evaluator records the `settings` it ran with (for
ShapesWorld the split's version, size and sha256). A split that would differ is refused before
anything runs, and any recorded setting that differs after the run fails it (exit 3).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from csr.core.errors import CSRError
from csr.core.io import atomic_write_json, atomic_write_text, read_json
from csr.core.tracking import download_loop, flatten, sqlite_uri
from csr.run.run_dir import CHANGES, read_changes, read_saved_config
from csr.run.run_info import run_info, version_differences

SOURCE_DIR = "reproduced_from"  # inside the new run: the source's config.yaml, run_info.json, source.json
METRICS = "metrics"  # inside SOURCE_DIR: the source's iter_<k>.json (its iter_<k>/metrics.json)
DATA_DIFFERS = 3  # exit status of a reproduction that evaluated on other data than its source


def _from_run_dir(source: Path, into: Path) -> dict:
    if not (source / "config.yaml").is_file():
        raise CSRError(f"{source}: no config.yaml (not a csr run directory)")
    shutil.copy(source / "config.yaml", into / "config.yaml")
    if (source / "run_info.json").is_file():
        shutil.copy(source / "run_info.json", into / "run_info.json")
    for entry in read_changes(source):  # each names a config.<n>.yaml beside it, never a path elsewhere
        if not (source / entry["config"]).is_file():
            raise CSRError(f"{source / CHANGES} names {entry['config']}, which is not in {source}: copy the whole "
                           "run directory")
        shutil.copy(source / entry["config"], into / entry["config"])
    if (source / CHANGES).exists():
        shutil.copy(source / CHANGES, into / CHANGES)
    _upgrade_configs(into)
    (into / METRICS).mkdir(exist_ok=True)
    for path in source.glob("iter_*/metrics.json"):
        shutil.copy(path, into / METRICS / f"{path.parent.name}.json")
    return {"run_dir": str(source.resolve())}


def _upgrade_configs(into: Path) -> None:
    """The copied configs in today's key names (csr/config/upgrade.py): they become `csr`'s primary config,
    so each is first read as data and refused unless it holds exactly csr's keys (csr/run/run_dir.py)."""
    from omegaconf import OmegaConf

    for name in ["config.yaml", *(e["config"] for e in read_changes(into))]:
        atomic_write_text(into / name, OmegaConf.to_yaml(OmegaConf.create(read_saved_config(into / name))))


def _from_mlflow(run_id: str, tracking_uri: str, into: Path) -> dict:
    """The loop's parent run holds config.yaml and run_info.json as artifacts (an iteration run's
    id leads to its parent)."""
    parent_id = download_loop(run_id, tracking_uri, into, CHANGES, into / METRICS,
                              lambda d: [e["config"] for e in read_changes(d)])
    _upgrade_configs(into)
    return {"mlflow_run_id": parent_id, "tracking_uri": tracking_uri}


# -- the evaluation data must be the source's ----------------------------------------------------------


def eval_settings(metrics: dict) -> dict:
    """evaluator/settings -> what that evaluator recorded it ran on (csr/eval/*.py); the selection's
    evaluation (csr/run/selection.py) as select/evaluator/settings, so that its split is checked too."""
    found = {k: v for k, v in metrics.get("eval", {}).items() if k.endswith("/settings")}
    found.update({f"select/{k}": v for k, v in (metrics.get("select") or {}).items() if k.endswith("/settings")})
    return found


def settings_diff(source: dict, copy: dict) -> list[str]:
    """'key: source -> copy' for every recorded evaluation setting that differs."""
    a, b = flatten(source), flatten(copy)
    return [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]


def check_splits(into: Path) -> None:
    """Refuse before running when a ShapesWorld split the source evaluated on would differ here (another
    generator version or content): the numbers would be of other images and questions."""
    from omegaconf import OmegaConf

    from csr.worlds.shapesworld.splits import ensure_split, split_identity

    root = OmegaConf.select(OmegaConf.load(into / "config.yaml"), "eval.shapesworld.root")
    recorded = {}
    for path in sorted((into / METRICS).glob("iter_*.json")):
        for name, settings in eval_settings(read_json(path)).items():
            if isinstance(settings.get("split"), dict) and root:
                recorded[(name, settings["split"]["split"])] = (path.stem, settings["split"])
    for (name, split), (where, want) in recorded.items():
        have = split_identity(ensure_split(root, split, want["n"]))
        if have != want:
            raise CSRError(f"the {split!r} split here is not the one the source's {where} {name} ran on "
                           f"({'; '.join(settings_diff(want, have))}; split written in {root}): its numbers "
                           "would be of other images and questions. Run the csr version the source recorded")


def data_differences(into: Path, run_dir: Path) -> list[str]:
    lines = []
    for path in sorted((into / METRICS).glob("iter_*.json")):
        copy = run_dir / path.stem / "metrics.json"
        if copy.exists():
            lines += [f"{path.stem} {d}" for d in settings_diff(eval_settings(read_json(path)), eval_settings(read_json(copy)))]
    return lines


def _csr_command() -> list[str]:
    # The installed `csr` script itself, so that DDP's launcher can start it again on the other ranks.
    script = shutil.which("csr") or str(Path(sys.executable).parent / "csr")
    return [sys.executable, script]


def replay(into: Path) -> list[list[str]]:
    """The arguments of each `csr` start that replays the source: per accepted config change, the
    stages finished under the config before it, each alone; then the last config as it was started."""
    entries = read_changes(into)
    configs = ["config", *(e["config"].removesuffix(".yaml") for e in entries)]
    starts, done = [], []
    for name, entry in zip(configs, entries, strict=False):
        for where in entry["finished"]:
            if where not in done:
                iteration, stage = where.split("/")
                starts.append([f"--config-name={name}", f"stage={stage}", f"iteration={iteration.removeprefix('iter_')}"])
                done.append(where)
    return [*starts, [f"--config-name={configs[-1]}"]]


def check_target(run_dir: Path) -> None:
    """The new run's directory: new, empty, or an earlier reproduction (resumed); anything else is someone's."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CSRError(f"--run-dir {run_dir} is a file, not a directory: pass a new directory")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / SOURCE_DIR / "source.json").is_file():
        raise CSRError(f"--run-dir {run_dir} is not empty and holds no earlier reproduction: csr-reproduce "
                       "writes only into a new or empty directory (or resumes its own); pass another --run-dir")
    existing = next((p for p in run_dir.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise CSRError(f"--run-dir {run_dir}: part of the path ({existing}) is a file, not a directory")


def stage_source(source: str, overrides: list[str], tracking_uri: str, into: Path) -> None:
    """The source's configs, run_info and metrics copied into `into` (a private temporary directory),
    each checked: whatever is refused here leaves nothing in the new run's place."""
    if not Path(source).is_dir() and (Path(source).exists() or "/" in source):  # a path (an MLflow run id has no '/')
        raise CSRError(f"{source}: {'a file, not' if Path(source).exists() else 'no such directory:'} a csr run "
                       "directory (give a run directory, or an MLflow run id)")
    where = _from_run_dir(Path(source), into) if Path(source).is_dir() else _from_mlflow(source, tracking_uri, into)
    atomic_write_json(into / "source.json", {**where, "extra_overrides": overrides})
    check_splits(into)


def reproduce(source: str, overrides: list[str], run_dir: Path | None, tracking_uri: str) -> int:
    if run_dir is None:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        run_dir = Path("outputs") / "reproduce" / f"{Path(source).name}-{stamp}"
    run_dir = run_dir.resolve()
    check_target(run_dir)
    with tempfile.TemporaryDirectory(prefix="csr-reproduce-") as staging:
        stage_source(source, overrides, tracking_uri, Path(staging))
        into = run_dir / SOURCE_DIR
        if into.exists():  # an earlier reproduction's copy, made by csr-reproduce: replaced by this one's
            shutil.rmtree(into)
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, into)
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
    differences = data_differences(into, run_dir)
    for line in differences:
        print(f"csr-reproduce: error: evaluated on other data or settings than the source: {line}", file=sys.stderr)
    if differences:
        print("csr-reproduce: error: the reproduction's numbers are not comparable with the source's", file=sys.stderr)
    return DATA_DIFFERS if differences else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="csr-reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a csr run directory, or an MLflow run id (parent or iteration run)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, key=value")
    parser.add_argument("--run-dir", type=Path, help="the new run's directory (default outputs/reproduce/<source>-<time>)")
    parser.add_argument("--tracking-uri", default=sqlite_uri(Path.cwd() / "mlflow.db"),
                        help="MLflow store of a run id (default: ./mlflow.db, the csr default)")
    # Intermixed: overrides may follow options (`csr-reproduce <id> --tracking-uri URI trainer=gpu`).
    args = parser.parse_intermixed_args(argv)
    bad = [o for o in args.overrides if o.split("=", 1)[0].lstrip("+~") in ("run_dir", "hydra.run.dir")]
    if bad:
        parser.error(f"{bad[0]}: give the new run's directory with --run-dir")
    try:
        sys.exit(reproduce(args.source, args.overrides, args.run_dir, args.tracking_uri))
    except CSRError as err:
        print(f"csr-reproduce: {err}", file=sys.stderr)
        sys.exit(2)
