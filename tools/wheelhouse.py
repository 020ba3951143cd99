"""Build, on a machine with the package registry, the wheels a target environment lacks for csr, so that
csr installs there offline, next to the target's own torch.

    # on the target (no network): what it already has
    python -m pip list --format=freeze > have.txt
    # here (registry reachable): csr's dependencies and the extras asked for, minus what have.txt holds
    python tools/wheelhouse.py --python-version 3.12 --have have.txt --extras chair-original --out wheelhouse
    # on the target, in a checkout of csr (the configs live in conf/ beside the package)
    python -m pip install --no-index --find-links wheelhouse -e '.[chair-original]'

Versions the target has are kept: they constrain the resolution (local labels such as +cu130 dropped), so
pip on the target finds everything it needs in the wheelhouse and changes none of the target's packages.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every manylinux tag a current x86-64 GPU image (glibc 2.28 or newer) accepts; pure-Python wheels are 'any'.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
# An editable install builds csr in an isolated environment with setuptools (pyproject's build-system),
# which pip fills from the wheelhouse too, whatever setuptools the target itself has.
BUILD = ["setuptools>=68"]


def canonical(name: str) -> str:
    """PEP 503's normalised project name: 'Open_CLIP.torch' and 'open-clip-torch' are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_have(text: str) -> dict[str, str]:
    """canonical name -> version of a `pip list --format=freeze` / `pip freeze` listing; local version
    labels (+cu130) are dropped, since the registry's wheels carry none; editable and URL lines skipped."""
    have = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            have[canonical(name)] = version.split("+", 1)[0].strip()
    return have


def missing(report: dict, have: dict[str, str]) -> list[str]:
    """`name==version` of each package pip's resolution (an `--report` JSON) installs that `have` lacks."""
    wanted = [(item["metadata"]["name"], item["metadata"]["version"]) for item in report["install"]]
    return sorted(f"{name}=={version}" for name, version in wanted if canonical(name) not in have and canonical(name) != "csr")


def sources(report: dict) -> list[str]:
    """`name==version` of each package a resolution takes as source, not as a wheel (csr itself left out)."""
    return sorted(f"{item['metadata']['name']}=={item['metadata']['version']}" for item in report["install"]
                  if not item["download_info"]["url"].endswith(".whl") and canonical(item["metadata"]["name"]) != "csr")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _target_flags(python_version: str) -> list[str]:
    return ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
            *[flag for platform in PLATFORMS for flag in ("--platform", platform)]]


def stand_in(have: dict[str, str], root: Path) -> Path:
    """An empty environment in which the target's packages look installed (metadata only, no files and no
    dependencies): resolving csr in it asks pip only for what the target lacks, and never walks torch's
    own tree of CUDA wheels. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next(root.glob("lib/python*/site-packages"))
    for name, version in have.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("wheelhouse stand-in\n")
    return root / "bin" / "python"


def build(python_version: str, have: dict[str, str], extras: list[str], out: Path) -> list[str]:
    """Resolve csr[extras] next to the target's packages, then fetch what it lacks as wheels for the
    target's Python into `out` (with csr's build requirement); returns what `out` holds."""
    out.mkdir(parents=True, exist_ok=True)
    target = f"{ROOT}[{','.join(extras)}]" if extras else str(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        python = stand_in(have, Path(tmp) / "env")
        report = Path(tmp) / "report.json"
        # This Python resolves (names and versions); the wheels are then the target Python's.
        _pip("--python", str(python), "install", "--dry-run", "--quiet", "--report", str(report), target)
        resolved = json.loads(report.read_text())
    needed, built = missing(resolved, have), sources(resolved)
    # Packages the registry has only as source (docopt under num2words, antlr4 under hydra) are built into
    # wheels here: right for the pure-Python ones these are, and the target then needs no build.
    if built:
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), *built)
    wheels = [spec for spec in needed if spec not in built]
    _pip("download", "--quiet", "--no-deps", "-d", str(out), *_target_flags(python_version), *wheels, *BUILD)
    return [*needed, *BUILD]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", required=True, help="the target's Python, e.g. 3.12")
    parser.add_argument("--have", required=True, type=Path, help="the target's `pip list --format=freeze`")
    parser.add_argument("--extras", default="", help="comma-separated csr extras to include, e.g. chair-original")
    parser.add_argument("--out", required=True, type=Path, help="the wheelhouse directory to fill")
    args = parser.parse_args()
    if not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version {args.python_version!r}: give major.minor, e.g. 3.12")
    if not args.have.is_file():
        parser.error(f"--have {args.have}: no such file (write it on the target with pip list --format=freeze)")
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    needed = build(args.python_version, read_have(args.have.read_text()), extras, args.out)
    size = sum(f.stat().st_size for f in args.out.glob("*.whl"))
    print(f"{len(needed)} wheels the target lacks in {args.out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
