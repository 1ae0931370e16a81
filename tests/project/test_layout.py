"""The layout's promises (docs/architecture.md): imports only point down the layers, and
the flat module paths of earlier releases still import, with a DeprecationWarning."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parents[2]

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


@pytest.mark.parametrize("old", sorted(engine.MOVED))
def test_an_old_flat_path_imports_the_moved_module_with_a_warning(old):
    new = importlib.import_module(f"engine.{engine.MOVED[old]}")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert getattr(engine, old) is new  # from engine import results
    assert [str(w.message) for w in seen if w.category is DeprecationWarning] == [
        f"engine.{old} moved to engine.{engine.MOVED[old]}; import it from there"
    ]


def test_old_import_statements_still_work_in_a_fresh_process():
    """``import engine.models`` and ``from engine.data import register`` (what plugins wrote)
    load the moved modules themselves; the module keeps its real name and spec."""
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n"
        "    import engine.models\n"
        "except DeprecationWarning as e:\n"
        "    print('warned:', e)\n"
        "warnings.simplefilter('ignore')\n"
        "import engine.models, engine.compute.models\n"
        "from engine.data import register\n"
        "from engine.compute.data import register as new_register\n"
        "import strategies.registry\n"
        "print(engine.models is engine.compute.models, register is new_register,\n"
        "      engine.compute.models.__spec__.name, engine.compute.models.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    warned, same = result.stdout.strip().splitlines()
    assert warned == "warned: engine.models moved to engine.compute.models; import it from there"
    assert same == "True True engine.compute.models engine.compute.models"


def test_strategies_registry_is_deprecated_with_its_new_place():
    sys.modules.pop("strategies.registry", None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        importlib.import_module("strategies.registry")
    messages = [str(w.message) for w in seen if w.category is DeprecationWarning]
    assert any("engine.schema.registry" in m and "engine.errors" in m for m in messages)
