"""Shared fixtures: the tiny checkpoints are built once per test session; process-wide state that a
test may set (Hydra's config, Lightning's rank) is put back after each test."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from csr.models.tiny import TinyPaths, build_tiny, build_tiny_family


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyPaths:
    return build_tiny(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def tiny_family(tiny_models: TinyPaths):
    """family name -> its tiny checkpoint's directory, built on first use (beside the tiny LLaVA)."""
    root = str(Path(tiny_models.llava).parent)
    return lambda family: build_tiny_family(root, family) if family != "llava" else tiny_models.llava


@pytest.fixture(autouse=True)
def _process_state_restored():
    """A test that sets HydraConfig (as `csr` does inside its app) or a launcher environment (which sets
    Lightning's rank) would otherwise make later tests in this process act as that app or that rank."""
    rank = rank_zero_only.rank
    yield
    HydraConfig.instance().cfg = None
    rank_zero_only.rank = rank
