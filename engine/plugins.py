"""Loading users' strategy modules: ``--plugin my_strategies.py`` or ``--plugin package.module``.

A plugin registers its strategies on import, with the same decorators as the
built-ins, and they are then usable by name in the config.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys

from engine.registry import ConfigError

_loaded: dict[str, str] = {}  # spec -> module name, so a plugin is imported once per process


def load_plugins(specs: list[str]) -> list[str]:
    """Import each plugin; returns the specs with file paths made absolute."""
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
