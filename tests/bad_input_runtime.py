"""Cases for troubleshooting rows (docs/troubleshooting.md) about the MLflow store, the config checked at start and a
truncated checkpoint (issue 13, item 8): each raises the CSRError its row shows. tests/test_bad_input.py
merges CASES into its own and checks them row by row with its Ctx."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable

from compose_config import compose_config

from csr.cli import check_config
from csr.config.schema import validate
from csr.core.tracking import Tracker
from csr.models.checkpoint import load_model


def _store(ctx, uri: str) -> Tracker:
    run_dir = ctx.tmp / "run"
    run_dir.mkdir(exist_ok=True)
    return Tracker(run_dir, True, uri, "csr")


def _garbage_store(ctx) -> Tracker:
    db = ctx.tmp / "mlflow.db"
    db.write_text("not an sqlite database\n")
    return _store(ctx, f"sqlite:///{db}")


def _unreadable_store(ctx) -> Tracker:
    db = ctx.tmp / "mlflow.db"
    db.mkdir()  # unreadable as a database even by root, whom file modes do not stop
    return _store(ctx, f"sqlite:///{db}")


def _unreachable_server(ctx) -> Tracker:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return _store(ctx, f"http://127.0.0.1:{port}")


def _other_working_directory(ctx) -> Tracker:
    """The default store is ./mlflow.db: resumed from elsewhere, the run's ids point into another file."""
    first = _store(ctx, f"sqlite:///{ctx.tmp / 'started_here.db'}")
    first.parent("run", {})
    return _store(ctx, f"sqlite:///{ctx.tmp / 'resumed_here.db'}")


def _truncated_merged_model(ctx) -> object:
    merged = ctx.tmp / "run" / "iter_2" / "merged"
    shutil.copytree(ctx.tiny.llava, merged)
    weights = merged / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # a copy or a full disk cut it short
    return load_model(str(merged))


def _config(*overrides: str) -> Callable[[object], object]:
    return lambda ctx: validate(compose_config(*overrides))


def _unset_variable(ctx) -> object:
    os.environ.pop("CSR_UNSET_VARIABLE", None)
    return validate(compose_config("data.image_root=${oc.env:CSR_UNSET_VARIABLE}/images"))


CASES: dict[tuple[str, str], Callable[[object], object]] = {
    ("MLflow store", "not an SQLite database"): _garbage_store,
    ("MLflow store", "unreadable (a directory, no permission)"): _unreadable_store,
    ("MLflow store", "tracking server unreachable"): _unreachable_server,
    ("MLflow store", "run resumed from another working directory"): _other_working_directory,
    ("merged checkpoint", "truncated weights file"): _truncated_merged_model,
    ("config", "eval.batch_size 0"): _config("eval.batch_size=0"),
    ("config", "eval.max_new_tokens 0"): _config("eval.max_new_tokens=0"),
    ("config", "trainer.devices 0"): _config("trainer.devices=0"),
    ("config", "dpo.seed negative"): _config("dpo.seed=-1"),
    ("config", "dpo.max_grad_norm negative"): _config("dpo.max_grad_norm=-1"),
    ("config", "data.limit 0"): _config("data.limit=0"),
    ("config", "iteration negative"): _config("stage=search", "iteration=-1"),
    ("config", "a stage other than eval at iteration 0"): _config("stage=search", "iteration=0"),
    ("config", "unset environment variable in ${oc.env:...}"): _unset_variable,
    ("config", "unknown evaluator"): lambda ctx: check_config(compose_config("eval.evaluators=[generate,chiar]")),
}

