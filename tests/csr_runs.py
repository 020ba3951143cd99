"""Runs of the `csr` command on the tiny models, shared by the scale-out tests (DDP, sweeps,
comparison, reproduction, MLflow UI). Each is made once per test session, under pytest's base
temporary directory, by whichever test needs it first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from csr.data.tiny import write_tiny_prompts

BIN = Path(sys.executable).parent
# conf/experiment/smoke.yaml, one iteration, two prompts per batch so that two ranks get work,
# and no LoRA dropout: its random masks depend on how the pairs are spread over processes.
SMOKE = ["experiment=smoke", "dpo.lora.dropout=0", "iterations=1", "search.prompts_per_batch=2", "eval.batch_size=2"]
LAMS = ("0.5", "0.9")


def run(command: str, *args: str, env: dict, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # cwd: MLflow puts a new store's artifacts under ./mlruns of the process that creates it
    proc = subprocess.run([str(BIN / command), *args], env=env, capture_output=True, text=True, timeout=600, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{command} {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tiny_env(tiny_models) -> dict:
    root = Path(tiny_models.llava).parent
    write_tiny_prompts(root / "data", n=8)
    # One intra-op thread in every process: float reductions split over threads differ in the last bits,
    # so the single-process run and each DDP rank (which Lightning would give cores / ranks threads)
    # are only byte-identical when they use the same thread count.
    return {**os.environ, "CSR_TINY_DIR": str(root), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def sweep(tmp_path_factory: pytest.TempPathFactory, env: dict) -> Path:
    """A 2-run sweep over reward.lam (the basic launcher: one process, on 2 cores as fast as joblib's
    two), both runs in one MLflow store:
    <base>/sweep/{0,1} (lam 0.5, 0.9; MLflow runs lam_0.5, lam_0.9) and <base>/mlflow.db. DPO at
    batch 2, which two DDP ranks at batch 1 reproduce."""
    base = tmp_path_factory.getbasetemp() / "csr_sweep"
    if not (base / "done").exists():
        base.mkdir(exist_ok=True)
        run("csr", "-m", f"hydra.sweep.dir={base / 'sweep'}", f"reward.lam={','.join(LAMS)}",
            f"logger.tracking_uri=sqlite:///{base / 'mlflow.db'}", "logger.run_name=lam_${reward.lam}",
            "dpo.batch_size=2", *SMOKE, env=env, cwd=base)
        (base / "done").touch()
    return base


def ddp_run(tmp_path_factory: pytest.TempPathFactory, env: dict) -> Path:
    """The sweep's lam 0.9 run on 2 CPU processes under Lightning's launcher (DPO batch 1 each), made
    once per test session (tests/test_ranks.py resumes a copy of it under torchrun)."""
    ddp = tmp_path_factory.getbasetemp() / "csr_ddp"
    if not (ddp.parent / "csr_ddp.done").exists():
        ddp.mkdir(exist_ok=True)
        run("csr", *SMOKE, "reward.lam=0.9", f"run_dir={ddp}", "logger.tracking_uri=null", "dpo.batch_size=1",
            "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
            "trainer.deterministic=true", env=env, cwd=ddp)
        (ddp.parent / "csr_ddp.done").touch()
    return ddp
