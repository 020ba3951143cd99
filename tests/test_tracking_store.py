"""Runs that create one fresh sqlite MLflow store at the same moment take turns (a lock beside the db)
instead of racing in MLflow's schema migration; each gets the one experiment."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest


def _open(run_dir: str, uri: str, start: float, out: mp.Queue) -> None:
    from csr.core.tracking import Tracker

    time.sleep(max(0.0, start - time.time()))  # both start creating at once
    try:
        out.put(Tracker(Path(run_dir), True, uri, "csr").experiment_id)
    except Exception as err:  # noqa: BLE001 - reported to the test
        out.put(f"{type(err).__name__}: {err}")


@pytest.mark.slow
def test_two_runs_create_a_fresh_store_at_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 15  # after both have imported MLflow
    procs = [ctx.Process(target=_open, args=(str(tmp_path / f"run{i}"), uri, start, out)) for i in range(2)]
    for i, p in enumerate(procs):
        (tmp_path / f"run{i}").mkdir()
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    assert results[0] == results[1], results  # the same experiment id, no alembic or unique-key error
    assert (tmp_path / "mlflow.db.lock").exists()
