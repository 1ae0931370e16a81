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
from engine.schema.registry import PLUGIN_MODULE_PREFIX

_loaded: dict[str, str | None] = {}  # spec -> its source file's SHA-256: imported again only when it changed


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
        _loaded[entry.value] = _source_digest(getattr(sys.modules.get(entry.module), "__file__", None))


def load_plugins(specs: list[str]) -> list[str]:
    """Import the installed entry-point plugins, then each plugin named; returns the specs
    with file paths made absolute."""
    load_entry_points()
    return [_load(spec) for spec in specs]


def _source_digest(path: str | None) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (OSError, TypeError):
        return None


def _import_failed(spec: str, what: str, exc: Exception) -> ConfigError:
    if isinstance(exc, ConfigError):  # a registration refused (a name taken): its own line says it
        return ConfigError(f"{what} {spec}: {exc}")
    return ConfigError(f"{what} {spec} failed to import: {type(exc).__name__}: {exc}")


def _load(spec: str) -> str:
    """Import a plugin once per process, and again when its source file changed since (an
    edited plugin run again from a notebook): its registrations then replace the old ones,
    with a warning (engine.schema.registry.PluginChanged)."""
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(os.path.expanduser(spec))
        if not os.path.isfile(path):
            raise ConfigError(f"Plugin file {spec} does not exist.")
        with open(path, "rb") as f:
            source = f.read()
        digest = hashlib.sha256(source).hexdigest()
        if _loaded.get(path) == digest:
            return path
        # A unique module name per file, so two plugins called strategies.py do not clash.
        name = PLUGIN_MODULE_PREFIX + hashlib.sha1(path.encode()).hexdigest()[:12]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        previous = sys.modules.get(name)
        sys.modules[name] = module
        try:
            # The bytes read above, not a cached .pyc: the code run is the code hashed.
            exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
        except Exception as exc:
            if previous is None:
                del sys.modules[name]
            else:
                sys.modules[name] = previous
            raise _import_failed(spec, "Plugin", exc) from None
        _loaded[path] = digest
        return path
    module = sys.modules.get(spec)
    if spec not in _loaded or (
        module is not None and _loaded[spec] != _source_digest(getattr(module, "__file__", None))
    ):
        try:
            if spec in _loaded and module is not None:
                importlib.reload(module)
            else:
                module = importlib.import_module(spec)
        except Exception as exc:  # a SyntaxError or a failing registration, not only ImportError
            raise _import_failed(repr(spec), "Plugin module", exc) from None
        _loaded[spec] = _source_digest(getattr(module, "__file__", None))
    return spec
