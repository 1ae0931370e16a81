"""The layout's promises (docs/architecture.md): imports only point down the layers, at
import time and at run time alike (an import inside a function, a module named by a string
to ``importlib``, what importing a module and consulting the registries pull in), and
nothing answers for the flat module paths of the unreleased 0.1.0."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

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
    "engine.live": 5,
    "engine.analysis": 6,
    "engine.cli": 7,
    "engine.api": 7,
    "engine.__main__": 8,
    "warmstart": 8,
}


def layer_of(module: str, layers: dict[str, int] = LAYERS) -> tuple[str, int] | None:
    for prefix, layer in sorted(layers.items(), key=lambda item: -len(item[0])):
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


# --- imports by name: a string handed to importlib is an import too -------------------

IMPORTERS = ("import_module", "__import__")
# Calls whose module name comes from outside warmstart, with why; every other one must resolve.
NAMED_BY_THE_USER = {"engine.schema.plugins": "a plugin: the module a user names with --plugin or an entry point"}


def _constants(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level names bound to a string, or to a dict, list, tuple or set of strings: their strings."""
    bound: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            items = value.values if isinstance(value, ast.Dict) else getattr(value, "elts", [value])
            if all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items):
                bound[node.targets[0].id] = [i.value for i in items]
    return bound


def imports_by_name(path: Path) -> list[str | None]:
    """The modules ``path`` names to ``importlib.import_module`` or ``__import__``: a string,
    a module-level constant, or an item of a module-level dict of them; None for a name
    computed at run time."""
    tree = ast.parse(path.read_text())
    bound = _constants(tree)
    found: list[str | None] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name not in IMPORTERS:
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Subscript):
            arg = arg.value
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.append(arg.value)
        elif isinstance(arg, ast.Name) and arg.id in bound:
            found += bound[arg.id]
        else:
            found.append(None)
    return found


def upward_by_name(modules: list[tuple[Path, str]], layers: dict[str, int] = LAYERS) -> list[str]:
    problems = []
    for path, module in modules:
        mine = layer_of(module, layers)
        if mine is None:
            continue
        for imported in imports_by_name(path):
            if imported is None:
                if module not in NAMED_BY_THE_USER:
                    problems.append(f"{module} imports a module whose name is computed at run time")
                continue
            theirs = layer_of(imported, layers)
            if theirs is not None and theirs[1] > mine[1]:
                problems.append(f"{module} imports {imported} by name")
    return problems


def test_no_module_imports_a_higher_layer_by_name():
    assert upward_by_name(source_modules()) == []


def test_a_name_handed_to_importlib_is_checked_against_the_layers(tmp_path):
    (tmp_path / "low.py").write_text(
        "import importlib\n"
        'HOME = "high.things"\n'
        "PLACES = {'a': 'high', 'b': 'low'}\n"
        "def later(which):\n"
        "    importlib.import_module(HOME)\n"
        "    __import__(PLACES[which])\n"
        "    importlib.import_module('low.' + which)\n"
    )
    assert imports_by_name(tmp_path / "low.py") == ["high.things", "high", "low", None]
    assert upward_by_name([(tmp_path / "low.py", "low")], {"low": 0, "high": 1}) == [
        "low imports high.things by name",
        "low imports high by name",
        "low imports a module whose name is computed at run time",
    ]


# --- what modules pull in when they run ----------------------------------------------

# Imports each module (or runs a probe) in turn, in one fresh interpreter, and prints the
# modules each step added to sys.modules.
STEPPER = """
import json, sys, traceback
steps = json.loads(sys.argv[1])
out = []
for label, kind, payload in steps:
    before = set(sys.modules)
    error = None
    try:
        if kind == "import":
            __import__(payload)
        else:
            exec(payload, {})
    except BaseException:
        error = traceback.format_exc(limit=3)
    out.append([label, sorted(set(sys.modules) - before), error])
print(json.dumps(out))
"""


def pulled_in(steps: list[tuple[str, str, str]], path: Path = ROOT) -> list[tuple[str, list[str], str | None]]:
    """Run ``steps`` (label, "import" or "probe", a module or code) in a fresh interpreter
    whose path starts at ``path``: what each step added to ``sys.modules``, and its error."""
    env = {**__import__("os").environ, "PYTHONPATH": str(path)}
    result = subprocess.run(
        [sys.executable, "-c", STEPPER, json.dumps(steps)],
        capture_output=True,
        text=True,
        cwd=path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return [tuple(step) for step in json.loads(result.stdout.strip().splitlines()[-1])]


def upward_at_run_time(steps: list[tuple[str, str, str, int]], path: Path = ROOT, layers=LAYERS) -> list[str]:
    """Each step (label, kind, payload, its layer) must pull in no module of a higher layer,
    and must not fail."""
    results = pulled_in([step[:3] for step in steps], path)
    problems = []
    for (label, *_, mine), (_, new, error) in zip(steps, results, strict=True):
        if error is not None:
            problems.append(f"{label} failed: {error.strip().splitlines()[-1]}")
        for module in new:
            theirs = layer_of(module, layers)
            if theirs is not None and theirs[1] > mine:
                problems.append(f"{label} pulled in {module}")
    return problems


# Run after every module of their layer (and those below) is imported: the paths that import
# on first use.  Below engine.compute.builtins the registries cannot fill themselves: a lookup
# says so (RuntimeError) and imports nothing.
PROBES = {
    1: """
from engine.schema import catalogue, config, records
for call in [*(r.names for r in catalogue.REGISTRIES.values()), catalogue.list_strategies, catalogue.list_models,
             catalogue.list_datasets, lambda: config.build({}), records.arrow_schema, records.column_table]:
    try:
        call()
    except RuntimeError as exc:
        assert "No " in str(exc) and "are registered yet" in str(exc), exc
""",
    3: """
from engine.schema import catalogue, config, records
assert {"digits", "mlp", "warm", "margin"} <= {e["name"] for r in catalogue.REGISTRIES.values()
                                             for e in catalogue.describe(r)}
catalogue.list_strategies(), catalogue.list_models(), catalogue.list_datasets()
config.build({"model": {"name": "resnet18"}, "init": "warm_partial"})
records.arrow_schema(), records.column_table()
""",
}


def run_time_steps() -> list[tuple[str, str, str, int]]:
    """Every layered module, lowest layer first (the probes after their layer): whatever a
    module pulls in is not yet imported when it is, so the step that imports it shows it."""
    modules = sorted(
        (layer_of(module)[1], module)
        for _, module in source_modules()
        if layer_of(module) is not None and module != "engine.__main__"  # it runs the command line
    )
    steps = []
    for layer, module in modules:
        steps.append((module, "import", module, layer))
        if layer in PROBES and all(other > layer for other, _ in modules[modules.index((layer, module)) + 1 :]):
            steps.append((f"the probe after layer {layer}", "probe", PROBES[layer], layer))
    return steps


def test_nothing_pulls_in_a_higher_layer_at_run_time():
    steps = run_time_steps()
    assert [label for label, kind, *_ in steps if kind == "probe"] == [
        "the probe after layer 1",
        "the probe after layer 3",
    ]
    assert upward_at_run_time(steps) == []


def test_the_run_time_check_sees_an_import_by_a_computed_name_and_one_on_first_use(tmp_path):
    (tmp_path / "low.py").write_text("import importlib\nimportlib.import_module('hi' + 'gh')\n")
    (tmp_path / "lazy.py").write_text("def lookup():\n    import high\n")
    (tmp_path / "high.py").write_text("")
    layers = {"low": 0, "lazy": 0, "high": 1}
    steps = [
        ("lazy", "import", "lazy", 0),
        ("a lookup", "probe", "import lazy; lazy.lookup()", 0),
        ("low", "import", "low", 0),
        ("high", "import", "high", 1),
    ]
    assert upward_at_run_time(steps, tmp_path, layers) == ["a lookup pulled in high"]
    assert upward_at_run_time(steps[2:], tmp_path, layers) == ["low pulled in high"]
    assert upward_at_run_time([("low", "import", "nowhere", 0)], tmp_path, layers) == [
        "low failed: ModuleNotFoundError: No module named 'nowhere'"
    ]


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
