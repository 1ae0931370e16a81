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
import importlib
import inspect
import math
import os
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


def _origin(fn: Callable) -> tuple[str, str]:
    """What makes two registrations the same one: the function's name and its source code
    (a module imported twice, a notebook cell run again, the same plugin file copied)."""
    try:
        code = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__module__", "")
    return getattr(fn, "__qualname__", ""), code


def source_of(fn: Callable) -> str:
    """Where ``fn`` comes from: its module (or file) and a hash of that file's content (of the
    function's own source when there is no file), e.g. ``my_plugin.py#3f2a9c01b7de``."""
    path = inspect.getsourcefile(fn) if not isinstance(fn, functools.partial) else None
    try:
        content = open(path, "rb").read() if path else inspect.getsource(fn).encode()
    except (OSError, TypeError):
        content = repr(_origin(fn)).encode()
    where = os.path.basename(path) if path else fn.__module__
    return f"{where}#{hashlib.sha256(content).hexdigest()[:12]}"


# --- the registry -----------------------------------------------------------------


@dataclass
class Entry:
    name: str
    fn: Callable
    defaults: dict[str, Any]
    constraints: dict[str, Any]
    doc: str
    extra: dict[str, Any] = field(default_factory=dict)

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
    """Builders by name. ``n_inputs`` positional parameters are the engine's, not the user's."""

    def __init__(self, what: str, n_inputs: int, plural: str | None = None, builtins: str | None = None) -> None:
        self.what = what
        self.plural = plural or f"{what}s"
        self.n_inputs = n_inputs
        self._entries: dict[str, Entry] = {}
        self._builtins = builtins  # the module that registers the built-ins, imported on first use

    def _load_builtins(self) -> None:
        """Import the built-ins' module the first time the registry is used (a no-op while
        that module is being imported: its own registrations land here)."""
        if self._builtins is None:
            return
        module, self._builtins = self._builtins, None
        try:
            importlib.import_module(module)
        except BaseException:
            self._builtins = module
            raise

    def add(
        self, name: str, fn: Callable, constraints: dict | None = None, *, override: bool = False, **extra: Any
    ) -> Callable:
        """Register ``fn`` under ``name``.  A name already taken is refused, unless
        ``override=True``: then the entry records its source (module and content hash),
        which joins the trial id and the rows (``overrides``), so results made with a
        replaced strategy never pass for the built-in's.  Registering the same function
        again (the same name and source: a module or notebook cell run twice) replaces it
        quietly."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty string name, got {name!r}")
        self._load_builtins()  # a plugin's override must find the built-in it replaces
        existing = self._entries.get(name)
        again = existing is not None and _origin(existing.fn) == _origin(fn)
        if existing is not None and not override and not again:
            raise ValueError(
                f"{self.what} {name!r} is already registered (by {existing.fn.__module__}); choose another name, "
                "or pass override=True to replace it"
            )
        if override:
            extra["source"] = source_of(fn)
        params = list(inspect.signature(fn).parameters.values())
        configurable = params[self.n_inputs :]
        defaults = {}
        for p in configurable:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is inspect.Parameter.empty:
                raise TypeError(
                    f"{self.what} {name!r}: parameter {p.name!r} needs a default "
                    "(every parameter beyond the engine's inputs is configurable)"
                )
            defaults[p.name] = p.default
        constraints = dict(constraints or {})
        stray = set(constraints) - set(defaults)
        if stray:
            raise TypeError(f"{self.what} {name!r}: constraints for unknown parameters {sorted(stray)}")
        doc = inspect.getdoc(fn) or ""
        self._entries[name] = Entry(name, fn, defaults, constraints, doc.split("\n")[0], extra)
        return fn

    def overrides(self) -> dict[str, str]:
        """Name -> source of the entries registered with ``override=True``."""
        self._load_builtins()
        return {name: e.extra["source"] for name, e in self._entries.items() if "source" in e.extra}

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
