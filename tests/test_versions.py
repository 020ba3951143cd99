"""Dependencies are tested ranges: each lower end is pinned in the floor set that .ci/run tests
(requirements/image-py312.txt with the GPU image it names), the lock pins versions inside the ranges, and
tools/wheelhouse.py finds what a target environment lacks."""

from __future__ import annotations

import functools
import importlib.util
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements() -> list[Requirement]:
    """Every third-party requirement: the core ones and each extra's (csr's own extras left out)."""
    lines = PYPROJECT["dependencies"] + [r for extra in PYPROJECT["optional-dependencies"].values() for r in extra]
    return [Requirement(line) for line in lines if not line.startswith("csr")]


def _pins(path: Path) -> dict[str, Version]:
    """name -> version of a pip constraints file, following its `-c other.txt` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-c "):
            pins |= _pins(path.parent / line[3:].strip())
        elif "==" in line:
            name, version = line.split("==", 1)
            pins[_canonical(name)] = Version(version)
    return pins


def _canonical(name: str) -> str:
    return _wheelhouse().canonical(name)


def _floor(req: Requirement) -> Version:
    return next(Version(s.version) for s in req.specifier if s.operator == ">=")


def test_every_dependency_is_a_range_with_both_ends():
    for req in _requirements():
        operators = sorted(s.operator for s in req.specifier)
        assert operators == ["<", ">="], f"{req}: a range needs a tested lower end and an upper end"


def test_the_floor_set_pins_every_lower_end():
    pins = _pins(ROOT / "requirements" / "image-py312.txt")
    for req in _requirements():
        assert pins.get(_canonical(req.name)) == _floor(req), f"{req}: the floor set must test its lower end"
    # The floors: torch down to 2.11, transformers down to 5.17, on the image's Python.
    assert pins["torch"] == Version("2.11.0") and pins["transformers"] == Version("5.17.0")
    assert PYPROJECT["requires-python"] == ">=3.11,<3.14"


def test_the_lock_lies_inside_the_ranges():
    pins = _pins(ROOT / "requirements" / "lock-py311.txt")
    for req in _requirements():
        assert pins[_canonical(req.name)] in req.specifier, f"{req}: the lock's {pins[_canonical(req.name)]}"


@functools.cache
def _wheelhouse():
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "tools" / "wheelhouse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_wheelhouse_takes_only_what_the_target_lacks():
    wh = _wheelhouse()
    have = wh.read_have("torch==2.11.0+cu130\nOpen_Clip.Torch==3.0.0\n-e git+https://x#egg=y\nnumpy==2.5.2  # image\n")
    assert have == {"torch": "2.11.0", "open-clip-torch": "3.0.0", "numpy": "2.5.2"}
    report = {"install": [{"metadata": {"name": n, "version": v}} for n, v in
                          [("torch", "2.11.0"), ("open_clip_torch", "3.0.0"), ("hydra-core", "1.3.8"), ("csr", "0.1.0"),
                           ("omegaconf", "2.3.1")]]}
    assert wh.missing(report, have) == ["hydra-core==1.3.8", "omegaconf==2.3.1"]
