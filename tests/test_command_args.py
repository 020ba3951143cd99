"""Every command's --help prints its usage and exits 0 (csr-plan's help once ended in argparse's
traceback: a '%' in a help string). The commands' bad arguments are rows of docs/troubleshooting.md
(tests/bad_input_commands.py)."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

SCRIPTS = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(n for n in SCRIPTS if n != "csr"))  # csr's --help is Hydra's
def test_help_prints_usage_and_exits_0(name, capsys):
    module, function = SCRIPTS[name].split(":")
    with pytest.raises(SystemExit) as exit_:
        getattr(importlib.import_module(module), function)(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
