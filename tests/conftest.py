"""Shared fixtures: the tiny checkpoints are built once per test session; process-wide state that a
test may set (Hydra's config, Lightning's rank) is put back after each test."""

from __future__ import annotations

import os

# The suite runs on two xdist workers (pyproject addopts: -n 2): one intra-op thread in each worker and in
# every process it starts, or four threads fight over two cores, many times slower than two.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from pytorch_lightning.utilities.rank_zero import rank_zero_only  # noqa: E402

from csr.core import signals  # noqa: E402
from csr.models.families import get_family  # noqa: E402
from csr.models.tiny import TinyPaths, build_tiny, build_tiny_family  # noqa: E402

if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)  # in case a plugin imported torch before the variable was set


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyPaths:
    return build_tiny(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def tiny_family(tiny_models: TinyPaths):
    """family name -> its tiny checkpoint's directory, built on first use (beside the tiny LLaVA)."""
    root = str(Path(tiny_models.llava).parent)
    return lambda family: build_tiny_family(root, get_family(family)) if family != "llava" else tiny_models.llava


@pytest.fixture(autouse=True)
def _process_state_restored():
    """A test that sets HydraConfig (as `csr` does inside its app), a launcher environment (which sets
    Lightning's rank) or sends itself a signal would otherwise make later tests in this process act as
    that app, that rank or a stopped run."""
    rank = rank_zero_only.rank
    yield
    HydraConfig.instance().cfg = None
    rank_zero_only.rank = rank
    # A signal a test sent to this process stays recorded (tests/test_signals.py): an in-process DPO of a
    # later test would stop at its first step. Back to _State's class defaults: none received.
    vars(signals._state).clear()
