"""Loading users' strategy modules: ``--plugin my_strategies.py`` or ``--plugin package.module``,
and every installed package's ``warmstart.plugins`` entry points.

A plugin registers its strategies (or datasets, or models) on import, with the same
decorators as the built-ins, and they are then usable by name in the config.  An
installed package makes its plugin load by itself, in every process (Ray workers too),
with an entry point in its ``pyproject.toml``::

    [project.entry-points."warmstart.plugins"]
    my_strategies = "my_package.strategies"
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points

from engine.errors import ConfigError

_loaded: dict[str, str] = {}  # spec -> module name, so a plugin is imported once per process


ENTRY_POINT_GROUP = "warmstart.plugins"
_entry_points_loaded = False


def load_entry_points() -> None:
    """Import every installed ``warmstart.plugins`` entry point's module, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.value in _loaded:
            continue
        try:
            entry.load()
        except Exception as exc:
            _entry_points_loaded = False  # the next call says it again
            dist = entry.dist.name if entry.dist is not None else "an installed package"
            raise ConfigError(
                f"Plugin {entry.name!r} ({entry.value}, entry point of {dist}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        _loaded[entry.value] = entry.value


def load_plugins(specs: list[str]) -> list[str]:
    """Import the installed entry-point plugins, then each plugin named; returns the specs
    with file paths made absolute."""
    load_entry_points()
    return [_load(spec) for spec in specs]


def _load(spec: str) -> str:
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(os.path.expanduser(spec))
        if path in _loaded:
            return path
        if not os.path.isfile(path):
            raise ConfigError(f"Plugin file {spec} does not exist.")
        # A unique module name per file, so two plugins called strategies.py do not clash.
        name = "warmstart_plugin_" + hashlib.sha1(path.encode()).hexdigest()[:12]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ConfigError(f"Plugin {spec} failed to import: {type(exc).__name__}: {exc}") from None
        _loaded[path] = name
        return path
    if spec not in _loaded:
        try:
            importlib.import_module(spec)
        except Exception as exc:  # a SyntaxError or a failing registration, not only ImportError
            raise ConfigError(f"Plugin module {spec!r} failed to import: {type(exc).__name__}: {exc}") from None
        _loaded[spec] = spec
    return spec
