"""Rows of the troubleshooting table (docs/troubleshooting.md) about the run directory (csr/run/run_dir.py), one case each;
tests/test_bad_input.py merges CASES into its own. Each case opens a run directory as `csr` does, up
to where the models would load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compose_config import compose_config

from csr.config.schema import validate
from csr.core.lock import run_lock
from csr.core.tracking import sqlite_path, sqlite_uri
from csr.loop import Loop


def _start(run_dir: Path, *overrides: str) -> Loop:
    loop = Loop(validate(compose_config(f"run_dir={run_dir}", *overrides)))
    with loop.open_run_dir():
        pass
    return loop


def _foreign(ctx) -> object:
    (ctx.tmp / "project").mkdir()
    (ctx.tmp / "project" / ".draft.tmp").write_text("mine")
    return _start(ctx.tmp / "project")


def _file(ctx) -> object:
    (ctx.tmp / "run").write_text("not a directory")
    return _start(ctx.tmp / "run")


def _file_in_path(ctx) -> object:
    (ctx.tmp / "run").write_text("not a directory")
    return _start(ctx.tmp / "run" / "sub")


def _in_use(ctx) -> object:
    (ctx.tmp / "run").mkdir()
    with run_lock(ctx.tmp / "run"):  # flock: a second open of the lock file conflicts even in one process
        return _start(ctx.tmp / "run")


def _changed(ctx) -> object:
    _start(ctx.tmp / "run", "reward.lam=0.5")
    return _start(ctx.tmp / "run", "reward.lam=0.9")


def _unknown_allowed(ctx) -> object:
    _start(ctx.tmp / "run", "reward.lam=0.5")
    return _start(ctx.tmp / "run", "reward.lam=0.9", "resume.allow_changes=[lam]")


def _question_mark(ctx) -> str:
    path = ctx.tmp / "a?b" / "mlflow.db"
    assert sqlite_path(sqlite_uri(path)) == path
    return sqlite_uri(path).split("/")[-2].removeprefix("a").removesuffix("b")


CASES: dict[tuple[str, str], Callable[..., object]] = {
    ("run_dir", "holds other files, not a csr run directory"): _foreign,
    ("run_dir", "a file"): _file,
    ("run_dir", "part of the path is a file"): _file_in_path,
    ("run_dir", "in use by another csr run"): _in_use,
    ("run_dir", "resumed with a changed result-relevant key"): _changed,
    ("run_dir", "resume.allow_changes names no config key"): _unknown_allowed,
    ("MLflow store", "path with ? or %"): _question_mark,
}
