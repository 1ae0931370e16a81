"""A small registry of named builders, shared by models, datasets, init and acquisition strategies.

A builder registers under its own name with a decorator; its keyword parameters
(after the positional inputs the engine passes) are its configurable parameters,
with their defaults taken from the signature.  Allowed values are declared next to
the registration and checked once, where a run starts, with one error template:

    The 'shrink' parameter of shrink_perturb must be a float in [0, 1]. Got 1.5.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import marshal
import math
import os
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError

# --- constraints: allowed values, declared next to the parameter -------------------


@dataclass(frozen=True)
class Interval:
    """A number in [low, high] (either end may be open or absent)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def check(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):  # NaN and ±inf: no number a run can use
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def kind(self) -> type:
        return int if self.integer else float

    def describe(self) -> str:
        kind = "an int" if self.integer else "a float"
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"{kind} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return kind


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values."""

    options: tuple

    def __init__(self, *options: Any) -> None:
        object.__setattr__(self, "options", tuple(options))

    def check(self, value: Any) -> bool:
        return any(value == o and type(value) is type(o) for o in self.options)

    def kind(self) -> type | None:
        kinds = {type(o) for o in self.options}
        return kinds.pop() if len(kinds) == 1 else None

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


@dataclass(frozen=True)
class Type:
    """A value of a given type (int accepted where float is asked for; bool never as a number)."""

    kind: type

    def check(self, value: Any) -> bool:
        return _type_matches(value, self.kind)

    def describe(self) -> str:
        return _article(self.kind.__name__)


@dataclass(frozen=True)
class Nullable:
    """None, or a value ``inner`` allows (None usually means "derive it", e.g. half the blocks)."""

    inner: Any

    def check(self, value: Any) -> bool:
        return value is None or self.inner.check(value)

    def kind(self) -> type | None:
        return value_kind(self.inner)

    def describe(self) -> str:
        return f"null or {self.inner.describe()}"


@dataclass(frozen=True)
class PathName:
    """A name that becomes part of a file or folder name under ``--out`` (a trial id, a
    suite name): letters, digits, '.', '_', '-', not starting with '.', at most ``limit``
    characters, so nothing it names can land outside ``--out`` or overflow a file name."""

    limit: int = 120

    def check(self, value: Any) -> bool:
        return (
            isinstance(value, str)
            and 0 < len(value) <= self.limit
            and not value.startswith(".")
            and all(c.isascii() and (c.isalnum() or c in "._-") for c in value)
        )

    def kind(self) -> type:
        return str

    def describe(self) -> str:
        return f"a name of 1 to {self.limit} letters, digits, '.', '_' or '-', not starting with '.'"


def value_kind(constraint: Any) -> type | None:
    """The Python type of the values a constraint allows, or None when it allows several."""
    kind = getattr(constraint, "kind", None)
    if isinstance(kind, type):  # Type: its attribute
        return kind
    return kind() if callable(kind) else None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _type_matches(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_value(value: Any, constraint: Any, where: str) -> None:
    """Raise the one-line ConfigError when ``value`` breaks ``constraint``."""
    if not constraint.check(value):
        raise ConfigError(f"The {where} must be {constraint.describe()}. Got {value!r}.")


# --- what an init strategy may know of a model, before any model is built ----------


@dataclass(frozen=True)
class ModelSpec:
    """A model as a config names it: enough for a strategy to check that it applies.

    ``n_blocks`` is how many blocks (consecutive groups of modules, input to output, the
    head last) its models name, or None when the model names none.  Built models expose
    the same blocks as ``model.blocks`` (tuples of module names) and the last layer as
    ``model.head``; that is all of a model a built-in init strategy relies on.
    """

    name: str
    params: dict
    n_blocks: int | None


# --- where a user's builder comes from: its code's identity ---------------------------

# Modules whose builders are warmstart's own (its built-ins): no plugin, no hash.
BUILT_IN_PACKAGES = ("engine", "strategies", "warmstart")
# The module name engine.schema.plugins gives a ``--plugin FILE.py`` (plus a hash of its path).
PLUGIN_MODULE_PREFIX = "warmstart_plugin_"
DIGEST_CHARS = 12  # of a SHA-256 hex digest: enough to tell two versions of a plugin apart


class PluginWarning(UserWarning):
    """Something about a user's builder worth knowing, that does not stop it."""


class PluginChanged(PluginWarning):
    """A name registered again from the same module with another body (a notebook cell
    edited and run again, an edited plugin file loaded again): the new body replaces the old."""


@dataclass(frozen=True)
class Origin:
    """The code behind a user's builder: ``key`` names it the same way in every process and
    on every machine (a ``--plugin`` file's name, a module's dotted name, or
    ``__main__.<function>`` for a function defined in a script or a notebook), and ``digest``
    is a SHA-256 prefix of that code: the module's source file, or the function's own source
    (its bytecode, ``exact=False``, where Python has no source for it) with the functions and
    classes of ``__main__`` it calls (``own``: the function's own code, kept to recompute the
    digest when those helpers are redefined: ``current_origin``)."""

    key: str
    digest: str
    exact: bool = True
    own: bytes = field(default=b"", compare=False, repr=False)


def _unwrap(fn: Callable) -> Callable:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.unwrap(fn)


def _module_of(fn: Callable) -> str:
    return getattr(_unwrap(fn), "__module__", None) or "__main__"


def _code_bytes(code: types.CodeType) -> bytes:
    """A code object without its file name (nested functions' too): its bytecode, names and
    constants, the same wherever the file lies."""

    def strip(c: types.CodeType) -> types.CodeType:
        consts = tuple(strip(k) if isinstance(k, types.CodeType) else k for k in c.co_consts)
        return c.replace(co_filename="", co_consts=consts)

    return marshal.dumps(strip(code))


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:DIGEST_CHARS]


def origin_of(fn: Callable) -> Origin | None:
    """The code identity of a builder, or None for warmstart's built-ins.

    A builder from a module with a source file (a ``--plugin`` file or module, an entry
    point, any imported module) is identified by that whole file: what else the file
    defines may change what the builder does.  One defined in ``__main__`` (a script run
    as ``python script.py``, a notebook cell) by its own source, as ``inspect.getsource``
    finds it (IPython keeps every cell's); where there is none (code given to ``exec``),
    by its bytecode, which is exact within one Python version only; with the code of the
    ``__main__`` functions and classes it names (its helpers in other cells:
    ``current_origin`` recomputes them when a trial uses it)."""
    fn = _unwrap(fn)
    module = _module_of(fn)
    if module.split(".")[0] in BUILT_IN_PACKAGES:
        return None
    path = None
    if module != "__main__":
        mod = sys.modules.get(module)
        try:
            path = inspect.getsourcefile(mod) if mod is not None else None
        except TypeError:  # a built-in or namespace module: no file
            path = None
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            content = f.read()
        key = os.path.basename(path) if module.startswith(PLUGIN_MODULE_PREFIX) else module
        return Origin(key, _digest(content))
    target = fn if inspect.isfunction(fn) or inspect.isclass(fn) else type(fn)  # a callable object: its class
    key = f"{module}.{getattr(target, '__qualname__', '?')}"
    own, exact = _own_code(target)
    return Origin(key, _digest(own + _helpers_code(target)), exact, own)


def current_origin(fn: Callable, origin: Origin | None) -> Origin | None:
    """``origin`` as it stands now: a builder defined in ``__main__`` runs whatever its helpers
    (the functions and classes of ``__main__`` it names) are when it is called, so a helper
    redefined since its registration (a notebook cell edited and run again) changes its digest.
    A module's builder keeps the digest of the file it was imported from."""
    if origin is None or not origin.own:
        return origin
    fn = _unwrap(fn)
    digest = _digest(origin.own + _helpers_code(fn if inspect.isfunction(fn) or inspect.isclass(fn) else type(fn)))
    return origin if digest == origin.digest else Origin(origin.key, digest, origin.exact, origin.own)


def _own_code(target: Any) -> tuple[bytes, bool]:
    """A function's (or class's) own source, or its bytecode where Python has none (not exact).
    A class defined in a notebook cell has no source Python can find (before 3.13): its
    methods' code, by name, stands for it."""
    try:
        return inspect.getsource(target).encode(), True
    except (OSError, TypeError):
        if inspect.isclass(target):
            methods = sorted((k, _method(v)) for k, v in vars(target).items() if _method(v) is not None)
            parts = [(k, *_own_code(v)) for k, v in methods]
            text = b"".join(b"\0%s\0%s" % (k.encode(), code) for k, code, _ in parts)
            return b"class " + target.__qualname__.encode() + text, all(exact for *_, exact in parts)
        code = getattr(target, "__code__", None)
        return (_code_bytes(code) if code is not None else target.__qualname__.encode()), False


def _method(value: Any) -> Callable | None:
    """The function behind a class attribute (a method, a static or class method), else None."""
    value = getattr(value, "__func__", value)
    return value if inspect.isfunction(value) else None


def _names(target: Any) -> set[str]:
    """The global names a function's code (its nested functions' too), or a class's methods', may read."""
    codes = [getattr(target, "__code__", None)]
    if inspect.isclass(target):
        codes = [getattr(_method(v), "__code__", None) for v in vars(target).values()]
    names: set[str] = set()
    while codes:
        code = codes.pop()
        if code is not None:
            names.update(code.co_names)
            codes.extend(k for k in code.co_consts if isinstance(k, types.CodeType))
    return names


def _helpers_code(target: Any) -> bytes:
    """The code of every function and class defined in ``__main__`` that ``target`` names,
    directly or through another such helper, sorted by name: empty when it names none (so a
    builder that calls no helper of its own keeps the digest of its source alone)."""
    scope = getattr(target, "__globals__", None)
    if scope is None and inspect.isclass(target):
        scope = vars(sys.modules.get(target.__module__, types.ModuleType("_")))
    if not scope:
        return b""
    found: dict[str, bytes] = {}
    todo = [target]
    while todo:
        for name in sorted(_names(todo.pop())):
            value = scope.get(name)
            if name in found or value is target or not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            if getattr(value, "__module__", None) != "__main__":
                continue
            found[name] = _own_code(value)[0]
            todo.append(value)
    return b"".join(b"\0%s\0%s" % (name.encode(), found[name]) for name in sorted(found))


def _user_stacklevel() -> int:
    """The ``stacklevel`` of a warning that points at the first frame outside warmstart:
    the user's decorator line, however many of warmstart's functions lie between."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ours = tuple(os.path.join(here, package) + os.sep for package in BUILT_IN_PACKAGES)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(ours):
        frame, level = frame.f_back, level + 1
    return level


# --- the registry -----------------------------------------------------------------


@dataclass
class Entry:
    name: str
    fn: Callable
    defaults: dict[str, Any]
    constraints: dict[str, Any]
    doc: str
    extra: dict[str, Any] = field(default_factory=dict)
    origin: Origin | None = None  # the user's code behind it; None for a built-in
    overriding: bool = False  # registered with override=True: it replaced another's builder

    def signature(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{self.name}({params})"

    def resolve(self, params: dict[str, Any], what: str) -> dict[str, Any]:
        """Full parameter dict (defaults filled in), validated. ``what`` is e.g. 'init strategy'."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"Unknown parameter {unknown[0]!r} for {what} {self.name!r}; its signature is {self.signature()}."
            )
        values = {**self.defaults, **params}
        for key, value in values.items():
            where = f"{key!r} parameter of {self.name}"
            if key in self.constraints:
                check_value(value, self.constraints[key], where)
            elif self.defaults[key] is not None and key in params:
                check_value(value, Type(type(self.defaults[key])), where)
        return values


class Registry:
    """Builders by name. ``n_inputs`` positional parameters are the engine's, not the user's.

    ``has_builtins``: warmstart registers built-ins here from a module of a higher layer
    (a model from engine/compute/models.py), so this layer never imports it.  That module
    registers them when it is imported, or the first time the registry is consulted once
    an upper layer handed over the function that imports it (``fill_with``: see
    engine/compute/builtins.py).  Consulted before either, the registry raises rather than
    answer "unknown" or list nothing."""

    def __init__(self, what: str, n_inputs: int, plural: str | None = None, *, has_builtins: bool = False) -> None:
        self.what = what
        self.plural = plural or f"{what}s"
        self.n_inputs = n_inputs
        self.has_builtins = has_builtins
        self._entries: dict[str, Entry] = {}
        self._fill: Callable[[], object] | None = None  # registers the built-ins; called on first use

    def fill_with(self, fill: Callable[[], object]) -> None:
        """Call ``fill`` (it imports the module that registers the built-ins) the first time
        the registry is consulted."""
        self._fill = fill

    def _load_builtins(self, consulting: bool = True) -> None:
        """Register the built-ins the first time the registry is used (a no-op while their
        module is being imported: its own registrations land here)."""
        if self._fill is not None:
            fill, self._fill = self._fill, None
            try:
                fill()
            except BaseException:
                self._fill = fill
                raise
        elif consulting and self.has_builtins and not self._entries:
            raise RuntimeError(
                f"No {self.plural} are registered yet: import engine.compute.builtins (or the module that "
                f"defines the built-in {self.plural}) before consulting the registry"
            )

    def add(
        self, name: str, fn: Callable, constraints: dict | None = None, *, override: bool = False, **extra: Any
    ) -> Callable:
        """Register ``fn`` under ``name``.

        A name taken by another module's builder (a built-in, another plugin) is refused,
        unless ``override=True``: the trial id and the rows' ``overrides`` column then name
        the replacing plugin, so results made with it never pass for the built-in's.  The
        same module registering a name again (a notebook cell or a module run twice)
        replaces its builder: quietly when the code is the same, with a ``PluginChanged``
        warning when it changed.  Every user builder's code identity (``origin_of``) lands
        in the ``plugins`` column, and resume refuses a trial whose rows another version
        of that code made (engine/trial/resume.py)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty string name, got {name!r}")
        self._load_builtins(consulting=False)  # a plugin's override must find the built-in it replaces
        origin = origin_of(fn)
        existing = self._entries.get(name)
        # The same module again, or the same plugin by its key (a --plugin file's name, which
        # the rows' plugins column uses too: the same file loaded from another folder).
        again = existing is not None and (
            _module_of(existing.fn) == _module_of(fn)
            or (existing.origin is not None and origin is not None and existing.origin.key == origin.key)
        )
        if existing is not None and not override and not again:
            taken = f"a built-in ({_module_of(existing.fn)})" if existing.origin is None else existing.origin.key
            raise ConfigError(
                f"The {self.what} {name!r} is already registered by {taken}; "
                f"choose another name, or register it with override=True to replace it."
            )
        defaults = self._defaults(name, fn)
        constraints = dict(constraints or {})
        stray = set(constraints) - set(defaults)
        if stray:
            raise TypeError(f"{self.what} {name!r}: constraints for unknown parameters {sorted(stray)}")
        if origin is not None and not origin.exact and not (again and existing.origin and not existing.origin.exact):
            warnings.warn(
                f"{self.what} {name!r} ({origin.key}) has no source Python can read; its code is identified by "
                f"its bytecode ({origin.digest}), which changes with the Python version",
                PluginWarning,
                stacklevel=_user_stacklevel(),
            )
        if again and existing.origin is not None and origin is not None and existing.origin != origin:
            warnings.warn(
                f"{self.what} {name!r} replaced by a changed version of {origin.key} "
                f"(sha256 {existing.origin.digest} -> {origin.digest}); a trial whose rows the old version made "
                "will not resume with it",
                PluginChanged,
                stacklevel=_user_stacklevel(),
            )
        overriding = override or (again and existing.overriding)
        doc = inspect.getdoc(fn) or ""
        self._entries[name] = Entry(name, fn, defaults, constraints, doc.split("\n")[0], extra, origin, overriding)
        return fn

    def _defaults(self, name: str, fn: Callable) -> dict[str, Any]:
        """The defaults of ``fn``'s configurable parameters (those beyond the engine's inputs);
        a TypeError for one without a default."""
        defaults = {}
        for p in list(inspect.signature(fn).parameters.values())[self.n_inputs :]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is inspect.Parameter.empty:
                raise TypeError(
                    f"{self.what} {name!r}: parameter {p.name!r} needs a default "
                    "(every parameter beyond the engine's inputs is configurable)"
                )
            defaults[p.name] = p.default
        return defaults

    def get(self, name: Any) -> Entry:
        self._load_builtins()
        if not isinstance(name, str) or name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise ConfigError(f"Unknown {self.what} {name!r}; known: {known}.")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return isinstance(name, str) and name in self._entries
