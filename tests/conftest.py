"""Shared fixtures: the tiny checkpoints are built once per test session."""

from __future__ import annotations

import pytest

from csr.models.tiny import TinyPaths, build_tiny


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyPaths:
    return build_tiny(str(tmp_path_factory.mktemp("tiny")))
