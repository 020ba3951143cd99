"""Imports run one way: the layering docs/architecture.md writes down, read from the
package's own source (every import, also those inside functions; not `if TYPE_CHECKING:` ones)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "csr"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
ROOT_MODULES = {"__init__.py", "cli.py", "loop.py"}  # the entry point and the loop; every other idea has a package


def layers() -> list[set[str]]:
    """The layer order, written once: the block between `<!-- layers` and `<!-- /layers -->` in
    docs/architecture.md, lowest first, one group per line (units of a line are independent). A unit
    (a subpackage of csr, or a root module) imports only units of earlier lines."""
    block = ARCHITECTURE.read_text(encoding="utf-8").split("<!-- layers", 1)[1].split("<!-- /layers -->", 1)[0]
    lines = block.split("```text", 1)[1].split("```", 1)[0].splitlines()
    return [set(line.replace(",", " ").split()) for line in lines if line.strip()]


LAYERS = layers()
# The math, each alone testable against hand-computed values: no model library, directly or through csr.
PURE = ["reward/calibration.py", "reward/tree.py", "reward/rules/__init__.py", "reward/answers.py",
        "pairs/filters.py", "dpo/loss.py", "dpo/schedule.py", "eval/chair.py", "models/memory.py"]
MODEL_LIBRARIES = {"transformers", "peft", "open_clip", "pytorch_lightning", "lightning_fabric", "deepspeed"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, absolute (csr.x.y or a library's name), outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"{node.module}.{a.name}" for a in node.names]  # a module of the package, or a name in it
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "csr"


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _sources()} - {"csr"}
    layered = set().union(*LAYERS)
    assert sorted(units - layered) == [] and sorted(layered - units) == []


def test_the_package_root_holds_only_the_entry_point_and_the_loop():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == sorted(ROOT_MODULES)


def test_imports_run_down_the_layers():
    rank = {unit: i for i, group in enumerate(LAYERS) for unit in group}
    wrong = []
    for module, path in sorted(_sources().items()):
        here = _unit(module)
        for target in _imports(path):
            there = _unit(target)
            if target.startswith("csr.") and there != here and rank.get(there, -1) >= rank.get(here, -1):
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {target} ({here} -> {there})")
    assert wrong == []


def test_no_module_imports_itself_back():
    """No import cycle between modules, also inside a unit (`from pkg import mod` imports mod, not pkg)."""
    sources = _sources()
    graph = {}
    for module, path in sources.items():
        targets = {target if target in sources else target.rpartition(".")[0] for target in _imports(path)}
        graph[module] = {t for t in targets if t in sources and t != module}
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(" -> ".join(path[path.index(module):] + [module]))
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_the_math_imports_no_model_library():
    sources = _sources()

    def reach(module: str, seen: set[str]) -> set[str]:
        if module in seen or module not in sources:
            return set()
        seen.add(module)
        external = set()
        for target in _imports(sources[module]):
            if target.startswith("csr"):
                # `from csr.x import name` may name a module or an object of csr.x; importing
                # csr.x.y runs every package __init__ above it too
                parts = target.split(".")
                for n in range(2, len(parts) + 1):
                    external |= reach(".".join(parts[:n]), seen)
            else:
                external.add(target.split(".")[0])
        return external

    offending = {}
    for rel in PURE:
        libraries = reach(_module_name(PACKAGE / rel), set()) & MODEL_LIBRARIES
        if libraries:
            offending[rel] = sorted(libraries)
    assert offending == {}


def test_tests_import_helpers_not_experiments_or_each_other():
    wrong = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name == Path(__file__).name:  # this file names what it looks for
            continue
        text = path.read_text()
        for module in _imports(path):
            if module.split(".")[0].startswith("test_"):
                wrong.append(f"{path.name} imports {module}")
        if "sys.path" in text:
            wrong.append(f"{path.name} changes sys.path")
    assert wrong == []
