"""Which directories a run may use, and the one-config rule for resuming one.

csr writes into its run directory and cleans up after itself there, so it only uses
- a new or empty directory (empty but for what Hydra or csr put there for this very start), or
- a csr run directory: one holding the run_info.json and config.yaml every run writes first.
Anything else is refused before anything is written: csr never writes into, or deletes from,
someone else's directory.

A run directory has one config. A resume whose resolved config changes a result-relevant key is
refused with the diff, unless `resume.allow_changes` names every changed key; then this start's
config is kept as config.<n>.yaml and the change appended to config_changes.json with the stages
finished before it, which MLflow also gets and `csr-reproduce` replays (csr/commands/reproduce.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from csr.config.schema import RootConfig
from csr.config.upgrade import upgrade
from csr.core.errors import CSRError
from csr.core.io import atomic_write_json, atomic_write_text, is_temp_name, read_json
from csr.core.tracking import flatten
from csr.run.inputs import input_diff

log = logging.getLogger(__name__)

CONFIG, RUN_INFO, CHANGES = "config.yaml", "run_info.json", "config_changes.json"
OWN = {".lock", "reproduced_from"}  # csr's own, and there before the run's first files

# Keys that no output depends on: a resume may change them freely. Not here, on purpose: the batch
# sizes and memory caps of search, reward and eval (tests/test_search*.py show the same trees, but
# scores equal only to ~1e-5, so the files are not the same) and trainer.devices / num_nodes /
# strategy (DPO's step sees batch x accumulation x devices pairs). Change them with
# resume.allow_changes, which records that the outputs before and after may differ.
EXEMPT = (
    "run_dir",  # the directory itself (moved, or named instead of Hydra's default)
    "stage", "iteration",  # which part of the loop this start runs, not how
    "iterations",  # how far the loop goes: iteration k reads only iteration k - 1's outputs
    "trainer.log_every_n_steps",  # how often DPO's metrics are logged
    "logger",  # where and under which names MLflow records
    "resume",  # this rule's own allowance
)
_ABSENT = "<absent>"
PROBE_BYTES = 64 << 10  # more than Hydra's .hydra/*.yaml and csr's first files of a start


def _is_csr_run_info(path: Path) -> bool:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and {"csr_version", "libraries"} <= content.keys()


def is_run_dir(directory: Path) -> bool:
    return (directory / CONFIG).is_file() and _is_csr_run_info(directory / RUN_INFO)


def hydra_outputs(run_dir: Path) -> set[str]:
    """What Hydra itself wrote into run_dir for this job: its .hydra/ and log when run_dir is Hydra's
    output directory, the top of that directory (outputs/) when it lies inside run_dir."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir).resolve()
    if out == run_dir:
        return {f"{hc.job.name}.log", *([Path(hc.output_subdir).parts[0]] if hc.output_subdir else [])}
    return {out.relative_to(run_dir).parts[0]} if run_dir in out.parents else set()


def unwritable(run_dir: Path) -> str | None:
    """Why nothing can be written into run_dir (or, when it does not exist yet, into the directory it
    would be made in), or None. Checked before Hydra writes its .hydra/ and log there, which on a
    read-only file system would fail in Hydra's own code with a traceback."""
    import tempfile

    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return None  # a file where a directory should be: check_run_dir says so, in the app
    try:  # with bytes in it: on a full disk an empty file can still be made (Hydra's first files cannot)
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".csr-probe-", suffix=".tmp") as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        return (f"run_dir {run_dir}: cannot write into {existing}: {err.strerror}. Nothing was written: fix the "
                "permissions or pass another run_dir, then rerun the same command")
    return None


def check_run_dir(run_dir: Path, hydra_names: set[str] = frozenset()) -> bool:
    """True for a csr run directory (a resume), False for a new one; anything else is a CSRError.
    Only reads."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CSRError(f"run_dir {run_dir} is a file, not a directory: pass a new directory, "
                       "or a csr run directory to resume it")
    if not run_dir.exists():
        existing = next((p for p in run_dir.parents if p.exists()), None)
        if existing is not None and not existing.is_dir():  # refused here, before Hydra makes its directory
            raise CSRError(f"run_dir {run_dir}: part of the path is a file, not a directory; pass another run_dir")
        return False
    if is_run_dir(run_dir):
        return True
    own = OWN | hydra_names
    other = sorted(p.name for p in run_dir.iterdir() if p.name not in own and not is_temp_name(p.name)
                   and not (p.name == RUN_INFO and _is_csr_run_info(p)))  # a first start cut short
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise CSRError(f"run_dir {run_dir} is not a csr run directory and is not empty (it holds {shown}):"
                       " csr only writes into a new or empty directory or one of its own runs; pass another run_dir")
    return False


def check_not_in_use(run_dir: Path) -> None:
    """Refuse a run directory another csr start holds (csr/core/lock.py), without taking or writing the lock."""
    import fcntl

    try:
        handle = open(run_dir / ".lock")  # noqa: SIM115 - closed below, whatever happens
    except OSError:
        return  # no lock file: nobody holds it
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "unknown"
            raise CSRError(f"{run_dir} is in use by another csr run (pid {holder}); wait for it or use another "
                           "run_dir") from None


def make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CSRError(f"run_dir {run_dir}: part of the path is a file, not a directory; pass another run_dir") from None


# -- the one-config rule -------------------------------------------------------------------------------


def is_exempt(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in EXEMPT)


# -- a saved config is data -----------------------------------------------------------------------------
# config.yaml / config.<n>.yaml travel between people (a colleague's run, an MLflow artifact): read as
# data, never handed to Hydra or instantiated unchecked. Hydra acts on a `hydra:` section of a primary
# config (its callbacks are objects it instantiates: torch.load, open ...), so csr refuses one, and
# every key csr does not know, before any command composes or resumes from the file.
NOT_CSR_SECTIONS = ("hydra", "defaults")
CHANGED_CONFIG = re.compile(r"config\.[1-9][0-9]*\.yaml")
FINISHED = re.compile(r"iter_[0-9]{1,6}/(search|reward|pairs|dpo|merge|eval)")


@functools.cache
def schema_leaves(schema: type = RootConfig, prefix: str = "") -> frozenset[str]:
    """Every dotted leaf key of csr's schema (csr/config/schema.py): its fields that are not blocks of their own
    (a free-form dict, such as trainer.deepspeed, is one leaf)."""
    hints = typing.get_type_hints(schema)
    return frozenset(leaf for f in dataclasses.fields(schema)
                     for leaf in (schema_leaves(hints[f.name], f"{prefix}{f.name}.") if dataclasses.is_dataclass(hints[f.name])
                                  else [prefix + f.name]))


def _interpolations(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in _interpolations(value, f"{prefix}{key}.")]
    if isinstance(tree, list):
        return [k for i, value in enumerate(tree) for k in _interpolations(value, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(tree, str) and "${" in tree else []


def _present(tree: dict[str, Any], parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _shown(keys: list[str]) -> str:
    return ", ".join(repr(k) for k in keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def read_saved_config(path: Path) -> dict[str, Any]:
    """A run's saved config, in today's key names (csr/config/upgrade.py), refused in one line unless it
    holds exactly csr's keys: no Hydra section, no key csr does not know (`_target_` included), no key
    missing that no recorded upgrade explains, no interpolation (csr saves resolved values)."""
    try:
        text = path.read_text(encoding="utf-8")
        saved = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except (OSError, UnicodeDecodeError) as err:
        raise CSRError(f"{path}: cannot read the run's recorded config: {getattr(err, 'strerror', None) or err}") from None
    except (OmegaConfBaseException, ValueError, yaml.YAMLError) as err:  # the YAML parser's message spans lines
        reason = " ".join(str(err).split())
        raise CSRError(f"{path}: the run's recorded config is not valid YAML ({reason}): restore the file "
                       "csr wrote, or start a new run") from None
    if not isinstance(saved, dict):
        raise CSRError(f"{path}: the run's recorded config is not a mapping of config keys: restore the file "
                       "csr wrote, or start a new run")
    for section in NOT_CSR_SECTIONS:
        if section in saved:
            raise CSRError(f"{path}: holds a {section!r} section, which csr never saves (Hydra would act on it: "
                           "callbacks, launchers, code to instantiate). Nothing was run: delete the section if you "
                           "trust the rest of the file, or start a new run")
    upgraded = upgrade(saved)
    flat, leaves = flatten(upgraded), schema_leaves()
    unknown = sorted(k for k in flat if k not in leaves and not any(k.startswith(leaf + ".") for leaf in leaves))
    unknown += sorted(k for k in flat if re.search(r"(^|\.)_[A-Za-z]+_(\.|$)", k) and k not in unknown)
    if unknown:
        raise CSRError(f"{path}: config keys csr does not know: {_shown(unknown)}. A saved config holds only csr's "
                       "keys (nothing in it is instantiated): delete them, or start a new run")
    missing = sorted(leaf for leaf in leaves if not _present(upgraded, leaf.split(".")))
    if missing:
        raise CSRError(f"{path}: config keys missing that no recorded upgrade explains (csr/config/upgrade.py): "
                       f"{_shown(missing)}. Restore the file csr wrote, or start a new run")
    interpolated = _interpolations(saved)
    if interpolated:
        raise CSRError(f"{path}: config key {interpolated[0]!r} holds an interpolation (${{...}}); csr saves resolved "
                       "values: write the value itself")
    return upgraded


def read_changes(run_dir: Path) -> list[dict[str, Any]]:
    """config_changes.json, each entry checked: its config names a config.<n>.yaml beside it (never a
    path elsewhere) and its finished stages are iter_<k>/<stage>."""
    path = run_dir / CHANGES
    if not path.exists():
        return []
    entries = read_json(path)
    if not isinstance(entries, list):
        raise CSRError(f"{path}: must be a JSON list of config changes, as csr writes it")
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), dict):
            raise CSRError(f"{path}: entry {i}: not a config change csr writes ({{config, changes, finished}})")
        if not isinstance(entry.get("config"), str) or not CHANGED_CONFIG.fullmatch(entry["config"]):
            raise CSRError(f"{path}: entry {i}: 'config' must name config.<n>.yaml in the run directory, not "
                           f"{entry.get('config')!r}")
        finished = entry.get("finished")
        if not isinstance(finished, list) or not all(isinstance(f, str) and FINISHED.fullmatch(f) for f in finished):
            raise CSRError(f"{path}: entry {i}: 'finished' must list stages as iter_<k>/<stage>, not {finished!r}")
    return entries


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (old, new) for every result-relevant key that differs (absent on one side included)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(a.keys() | b.keys())
            if not is_exempt(k) and a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def show_diff(diff: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {_show(old)} -> {_show(new)}" for k, (old, new) in diff.items())


def changes(run_dir: Path) -> list[dict[str, Any]]:
    """The accepted config changes of the run, in order (config_changes.json; [] if none)."""
    return read_changes(run_dir)


def check_resume(run_dir: Path, config_text: str, allowed: list[str],
                 stage_run: bool = False) -> dict[str, tuple[Any, Any]]:
    """The changes this resume makes to the run's latest config; refuses any not in `allowed`, unless
    this start is a stage run alone, whose point is to redo a stage under changed keys (csr/run/stage_run.py):
    then every change is accepted and recorded as if allowed. Only reads."""
    entries = changes(run_dir)
    latest = run_dir / (entries[-1]["config"] if entries else CONFIG)
    old, new = read_saved_config(latest), OmegaConf.to_container(OmegaConf.create(config_text))
    known = flatten(old).keys() | flatten(new).keys()
    for key in allowed:
        if key not in known:
            raise CSRError(f"config key 'resume.allow_changes': {key!r} is not a config key (write it as reward.lam)")
    inputs = input_diff(run_dir, new)  # a checkpoint or CLIP file changed on disk at the same path
    diff = {**config_diff(old, new), **inputs}
    if not stage_run and any(k not in allowed for k in diff):
        what = "other inputs" if inputs.keys() == diff.keys() else "another config" + " and other inputs" * bool(inputs)
        raise CSRError(
            f"run_dir {run_dir} was started with {what} ({show_diff(diff)}). A run directory has one"
            f" config{' and inputs: restore them, ' if inputs else ': '}pass a new run_dir, or accept the change with"
            f" resume.allow_changes=[{','.join(diff)}]"
            " (recorded in config_changes.json and MLflow, replayed by csr-reproduce)"
        )
    return diff


def change_tags(entry: dict[str, Any]) -> dict[str, str]:
    """MLflow tags of an accepted change: csr.config.<n> = "reward.lam: 0.5 -> 0.9 (after iter_1/search)"."""
    after = ", ".join(entry["finished"]) or "no finished stage"
    return {f"csr.{entry['config'].removesuffix('.yaml')}": f"{show_diff(entry['changes'])} (after {after})"}


def record_config(run_dir: Path, config_text: str, diff: dict[str, tuple[Any, Any]],
                  finished: list[str], stage_run: bool = False) -> dict[str, Any] | None:
    """Write this start's config: config.yaml for a new run; for a resume with accepted changes
    config.<n>.yaml and an entry of config_changes.json, which is returned."""
    if not (run_dir / CONFIG).exists():
        atomic_write_text(run_dir / CONFIG, config_text)
        return None
    if not diff:
        return None
    numbers = [int(p.stem.split(".")[1]) for p in run_dir.glob("config.*.yaml") if p.stem.split(".")[1].isdigit()]
    name = f"config.{max(numbers, default=0) + 1}.yaml"
    atomic_write_text(run_dir / name, config_text)
    entry = {"config": name, "changes": {k: list(v) for k, v in diff.items()}, "finished": finished,
             "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_json(run_dir / CHANGES, [*changes(run_dir), entry])
    if not stage_run:  # a stage run says what it changes and redoes in its own line (csr/run/stage_run.py)
        log.warning("resuming %s with config changes allowed by resume.allow_changes: %s (after %s); saved as %s",
                    run_dir, show_diff(diff), ", ".join(finished) or "no finished stage", name)
    return entry
