"""The layout's promises (docs/architecture.md): imports only point down the layers, and
nothing answers for the flat module paths of the unreleased 0.1.0."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module may import its own layer's modules and any layer below
LAYERS = {
    "engine.errors": 0,
    "engine.schema": 1,
    "strategies": 2,
    "engine.storage": 2,
    "engine.compute": 3,
    "engine.trial": 4,
    "engine.suite": 5,
    "engine.analysis": 6,
    "engine.cli": 7,
    "engine.api": 7,
    "engine.__main__": 8,
    "warmstart": 8,
}


def layer_of(module: str) -> tuple[str, int] | None:
    for prefix, layer in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, layer
    return None


def imports_of(path: Path, module: str) -> list[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against the importing package
                base = ".".join(module.split(".")[: -node.level] + [node.module])
            found += [f"{base}.{alias.name}" for alias in node.names] + [base]
    return found


def source_modules() -> list[tuple[Path, str]]:
    out = []
    for package in ("engine", "strategies", "warmstart"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out.append((path, module))
    return out


def test_every_import_points_down_the_layers():
    upward = []
    for path, module in source_modules():
        mine = layer_of(module)
        if mine is None:  # engine/__init__.py: the deprecated aliases, resolved lazily
            continue
        for imported in imports_of(path, module):
            theirs = layer_of(imported)
            if theirs is not None and theirs[1] > mine[1]:
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_the_layer_table_covers_every_module():
    assert [module for _, module in source_modules() if layer_of(module) is None] == ["engine"]


def test_the_flat_module_paths_of_the_unreleased_0_1_0_are_gone():
    """No import hook, no alias module: ``engine.models`` and ``strategies.registry`` do not
    import (CHANGELOG.md lists their new places), in a fresh process."""
    code = (
        "import importlib, sys\n"
        "for old in ('engine.models', 'engine.results', 'engine.data', 'strategies.registry'):\n"
        "    try:\n"
        "        importlib.import_module(old)\n"
        "    except ModuleNotFoundError:\n"
        "        print(old, 'gone')\n"
        "import engine\n"
        "hooks = [f for f in sys.meta_path if str(getattr(f, '__module__', type(f).__module__)).startswith('engine')]\n"
        "print(hooks, hasattr(engine, 'MOVED'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    *gone, hooks = result.stdout.strip().splitlines()
    assert gone == [f"{m} gone" for m in ("engine.models", "engine.results", "engine.data", "strategies.registry")]
    assert hooks == "[] False"
