"""The experiment config: defaults, YAML and ``--set`` overrides, validation, identity.

One nested mapping with fixed key names (the contract in DESIGN.md).  Overrides must
name an existing key and match the default's type; ``model``, ``init`` and
``acquisition`` are components: a ``name`` plus that builder's own parameters,
checked against its registered signature.  ``dataset`` is both: its fixed keys
(``engine.compute.data.DATASET_KEYS``) plus the parameters of the named dataset's loader.
Everything is checked once, before a run starts, and every problem is one line naming
the key and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from engine.errors import ConfigError
from engine.schema.catalogue import DATASETS, REGISTRIES, model_spec
from engine.schema.plugins import load_plugins
from engine.schema.registry import (
    Interval,
    Nullable,
    OneOf,
    PathName,
    Registry,
    Type,
    check_value,
    current_origin,
    value_kind,
)

DEFAULTS: dict[str, Any] = {
    "suite": None,  # set by `warmstart suite`; a plain run has none
    "trial_id": None,  # None: derived from the config (see trial_id())
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "plugins": [],  # modules or .py files that register strategies
    "dataset": {"name": "digits", "root": "~/.cache/warmstart", "eval": "holdout", "holdout": 0.3333, "download": True},
    "model": {"name": "mlp"},
    "optimizer": {"name": "adam", "lr": 0.001, "weight_decay": 0.0, "momentum": 0.9},
    "batch_size": 128,
    "init": {"name": "shrink_perturb", "shrink": 0.4, "perturb": 0.1, "bn_stats": "fresh"},
    "acquisition": {"name": "random"},
    "rounds": {"initial": 100, "per_round": 100, "max_rounds": None},
    # on_diverge: a round whose training loss turns NaN/inf ends with stop_reason "diverged";
    # then the trial stops there ("stop") or goes on to the next round ("continue").
    "convergence": {"train_acc": 0.99, "patience": None, "min_delta": 0.0, "max_epochs": 1000, "on_diverge": "stop"},
    "pretrain": None,  # null: none; a mapping of PRETRAIN_DEFAULTS' keys: train a source model first
    "eval": {"precise_bn": True, "batch_size": 1024, "epochs_table": False},
    # resource_timeout: seconds a joined cluster may take to offer what a trial asks for
    # (an autoscaler adding nodes); the local instance is checked at once.
    "scaling": {
        "workers": None,
        "gpus_per_worker": 0,
        "max_failures": 3,
        "sync_batchnorm": False,
        "resource_timeout": 600,
    },
    # How a round computes, not what (left out of the trial id, like `device`); `auto` is
    # off on CPU and the choice in engine.compute.train.resolve_performance on a GPU.  The effective
    # values are recorded in each row's `performance` column.  benchmarks/README.md has the figures.
    "performance": {
        "autocast": "auto",  # bf16 autocast in training, evaluation and scoring
        "channels_last": "auto",  # NHWC weights and input batches (auto: conv models on a GPU)
        "fused_optimizer": "auto",  # Adam/SGD with fused=True (false: torch's default implementation)
        "compile": False,  # torch.compile full training batches; off unless asked: compile time unmeasured
        "cuda_graphs": "auto",  # full training batches as one CUDA graph (auto: on CUDA; never on CPU)
        "inference_batch_size": "auto",  # evaluation and scoring batch (auto: eval.batch_size; on a GPU >= 4096)
        # A suite's trials that can share kernels trained as one stacked model (engine/suite/stacking.py);
        # auto: where measured faster for the model and device (benchmarks/README.md).
        "ensemble": "auto",
        "ensemble_size": 32,  # at most this many trials per ensemble
    },
}

COMPONENTS = ("model", "init", "acquisition")
# The keys every ``dataset`` section has; the rest are the named dataset's own parameters.
DATASET_KEYS = ("name", "root", "eval", "holdout", "download")


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """A config as ``{dotted key: value}`` (the Parquet ``cfg.*`` names, without the prefix)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dataset_params(section: Any) -> dict[str, Any]:
    """A ``dataset`` config section's loader parameters: every key but ``DATASET_KEYS``."""
    data = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    return {k: v for k, v in data.items() if k not in DATASET_KEYS}


# The largest seed every consumer takes (numpy's legacy seeding and many libraries stop at
# 2**32 - 1; torch and numpy's Generator take more): refused beyond, before anything runs.
MAX_SEED = 2**32 - 1

# The transfer experiment (the paper's Figure 9).  A source model (the trial's model
# architecture, the source's class count) is trained on `source_fraction` of the
# source dataset's pool, with the trial's optimizer (name, weight decay, momentum) but
# these settings; the trial then runs on `fraction` of the target pool, and round 1 is
# initialised by the init strategy with the pretrained model as `prev` (engine/trial/loop.py).
PRETRAIN_DEFAULTS: dict[str, Any] = {
    "dataset": None,  # the source dataset, any registered name (the target itself too)
    "source_fraction": 1.0,  # of the source's pool (split like the target: same eval/holdout)
    "fraction": 1.0,  # of the target's pool: the trial's pool
    "lr": 0.001,
    "batch_size": 128,
    "train_acc": 0.99,  # convergence, as in the `convergence` section
    "patience": None,
    "min_delta": 0.0,
    "max_epochs": 1000,
}


class Count:
    """A sample count: an int >= 1, or a float in (0, 1) meaning that fraction of the pool."""

    def check(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        return (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value < 1)

    def kind(self) -> type:
        return float

    def describe(self) -> str:
        return "an int >= 1 (a count) or a float in (0, 1) (a fraction of the pool)"


class Device:
    def check(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        return value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())

    def kind(self) -> type:
        return str

    def describe(self) -> str:
        return "one of 'auto', 'cpu', 'cuda', 'cuda:N'"


class AutoOr:
    """'auto', or a value ``inner`` allows."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def check(self, value: Any) -> bool:
        return value == "auto" or self.inner.check(value)

    def kind(self) -> Any:
        # The other kind's column (a bool, an int): 'auto' is null there (docs/results.md).
        return value_kind(self.inner)

    def describe(self) -> str:
        return f"'auto' or {self.inner.describe()}"


class StrList:
    def check(self, value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    def kind(self) -> Any:
        return list[str]

    def describe(self) -> str:
        return "a list of strings"


# Names under a results folder's ``_warmstart/`` that are not a trial's folder (the layout of
# engine/storage/store.py): Ray Tune's and Ray Train's storage (``ray_storage``), the suite
# manifest and the search record.  A trial id may not take one (in any case: a file system may
# ignore case), nor start with '_' or '.', which pyarrow, pandas and the report skip.
RESERVED_TRIAL_IDS = ("tune", "ray", "suite.yaml", "search.json")


@dataclass(frozen=True)
class TrialId(PathName):
    """A trial id: a PathName that every reader of a results folder reads (no leading '_')
    and that the layout has not reserved (RESERVED_TRIAL_IDS)."""

    def check(self, value: Any) -> bool:
        return super().check(value) and not value.startswith("_") and value.lower() not in RESERVED_TRIAL_IDS

    def describe(self) -> str:
        reserved = ", ".join(repr(name) for name in RESERVED_TRIAL_IDS)
        return (
            f"a name of 1 to {self.limit} letters, digits, '.', '_' or '-', not starting with '.' or '_' (readers "
            f"skip such names), and none of {reserved} (the results layout's own)"
        )


ALLOWED: dict[str, Any] = {
    "suite": Nullable(PathName()),
    "trial_id": Nullable(TrialId()),
    "seed": Interval(0, MAX_SEED, integer=True),
    "device": Device(),
    "plugins": StrList(),
    "dataset.root": Type(str),
    "dataset.eval": OneOf("holdout", "test"),
    "dataset.holdout": Interval(0, 1, low_open=True, high_open=True),
    "dataset.download": Type(bool),
    "optimizer.name": OneOf("adam", "sgd"),
    "optimizer.lr": Interval(0, low_open=True),
    "optimizer.weight_decay": Interval(0),
    "optimizer.momentum": Interval(0, 1),
    "batch_size": Interval(1, integer=True),
    "rounds.initial": Count(),
    "rounds.per_round": Count(),
    "rounds.max_rounds": Nullable(Interval(1, integer=True)),
    "convergence.train_acc": Interval(0, 1, low_open=True),
    "convergence.patience": Nullable(Interval(1, integer=True)),
    "convergence.min_delta": Interval(0),
    "convergence.max_epochs": Interval(1, integer=True),
    "convergence.on_diverge": OneOf("stop", "continue"),
    "eval.precise_bn": Type(bool),
    "eval.batch_size": Interval(1, integer=True),
    "eval.epochs_table": Type(bool),
    "scaling.workers": Nullable(Interval(1, integer=True)),
    "scaling.gpus_per_worker": Interval(0),
    "scaling.max_failures": Interval(0, integer=True),
    "scaling.sync_batchnorm": Type(bool),
    "scaling.resource_timeout": Interval(0),
    "performance.autocast": AutoOr(Type(bool)),
    "performance.channels_last": AutoOr(Type(bool)),
    "performance.fused_optimizer": AutoOr(Type(bool)),
    "performance.compile": AutoOr(Type(bool)),
    "performance.cuda_graphs": AutoOr(Type(bool)),
    "performance.inference_batch_size": AutoOr(Interval(1, integer=True)),
    "performance.ensemble": AutoOr(Type(bool)),
    "performance.ensemble_size": Interval(2, integer=True),
}

PRETRAIN_ALLOWED: dict[str, Any] = {
    "source_fraction": Interval(0, 1, low_open=True),
    "fraction": Interval(0, 1, low_open=True),
    "lr": Interval(0, low_open=True),
    "batch_size": Interval(1, integer=True),
    "train_acc": Interval(0, 1, low_open=True),
    "patience": Nullable(Interval(1, integer=True)),
    "min_delta": Interval(0),
    "max_epochs": Interval(1, integer=True),
}

# Keys that do not change what a trial computes, left out of its identity.
NOT_IDENTITY = (
    "suite",
    "trial_id",
    "plugins",
    "device",
    "dataset.root",
    "dataset.download",
    "scaling.max_failures",
    "scaling.resource_timeout",
    "performance",
    "convergence.on_diverge",  # how far a trial goes after a divergence, not what a round computes
    "eval.epochs_table",  # what is written beside the rows, not what a round computes
)

# Keys that say how far a trial runs, not what its rounds compute: its identity holds them
# as null (their default), and raising `rounds.max_rounds` continues the same trial instead
# of starting a new one.
HOW_FAR = ("rounds.max_rounds",)


def strategy_label(name: str, params: dict[str, Any] | None = None) -> str:
    """A strategy (or any component) with its parameters, the one way the engine writes one:
    ``warm``, ``shrink_perturb(0.6, 0.01)``, ``shrink_perturb(0.6, 0.01, bn_stats=keep)``,
    ``badge(embedding=penultimate)``.  λ and σ (``shrink``, ``perturb``), what every init
    strategy is compared on, come first and by position, as the paper writes them; any other
    parameter by name.  Suite records and console lines, the summary tables and the report's
    legends all call this."""
    rest = dict(params or {})
    shown = [_value_text(rest.pop(key)) for key in ("shrink", "perturb")] if {"shrink", "perturb"} <= set(rest) else []
    shown += [f"{key}={_value_text(value)}" for key, value in rest.items()]
    return f"{name}({', '.join(shown)})" if shown else str(name)


def _value_text(value: Any) -> str:
    """A parameter's value as text: a float (numpy's too) as Python writes it, the shortest
    text that reads back as the same number; anything else as ``str``."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return repr(float(value))
    return str(value)


class Section:
    """Read-only attribute access to one level of the config."""

    def __init__(self, data: dict[str, Any]) -> None:
        object.__setattr__(self, "_data", data)

    def __getattr__(self, key: str) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            raise AttributeError(key) from None
        if isinstance(value, dict):
            return Section(value)
        return tuple(value) if isinstance(value, list) else value  # lists read-only too

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("the config is frozen; build a new one with merge()")

    def params(self) -> dict[str, Any]:
        """A component's parameters: everything but its name."""
        return {k: v for k, v in self._data.items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)


class Config(Section):
    """The whole, validated experiment config."""

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def identity(self) -> dict[str, Any]:
        """The keys that decide what the trial computes (NOT_IDENTITY left out)."""
        identity = self.to_dict()

        def parent(dotted: str) -> tuple[dict, str]:
            *parents, leaf = dotted.split(".")
            node = identity
            for p in parents:
                node = node[p]
            return node, leaf

        for dotted in NOT_IDENTITY:
            node, leaf = parent(dotted)
            node.pop(leaf, None)
        for dotted in HOW_FAR:
            node, leaf = parent(dotted)
            node[leaf] = None
        overrides = self.overrides()
        if overrides:  # a replaced built-in computes something else: another trial
            identity["overrides"] = overrides
        return identity

    def builders(self) -> list[tuple[str, str]]:
        """(registry, name) of every builder this trial runs: its dataset (and pretraining's
        source dataset), model, init and acquisition strategies."""
        out = [("dataset", self._data["dataset"]["name"])]
        if self._data.get("pretrain") is not None:
            out.append(("dataset", self._data["pretrain"]["dataset"]))
        return out + [(component, self._data[component]["name"]) for component in COMPONENTS]

    def code(self) -> tuple[dict[str, str], dict[str, str]]:
        """The user code this trial runs, from the registries' records (``origin_of``):
        ``overrides``, component -> ``name=plugin`` for a builder that replaced another
        module's (``override=True``), and ``plugins``, plugin -> SHA-256 prefix of its code
        for every builder that is not a built-in.  The first joins the trial's identity;
        the second is checked when a trial resumes (engine/trial/resume.py)."""
        overrides: dict[str, str] = {}
        digests: dict[str, set[str]] = {}
        for section, name in self.builders():
            entry = component_registry(section).get(name)
            origin = current_origin(entry.fn, entry.origin)  # a notebook's helpers as they are now
            if origin is None:
                continue
            digests.setdefault(origin.key, set()).add(origin.digest)
            if entry.overriding and section in COMPONENTS:
                overrides[section] = f"{name}={origin.key}"
        # Two files of one name (a/strategies.py, b/strategies.py): both digests, sorted.
        return overrides, {key: "+".join(sorted(found)) for key, found in sorted(digests.items())}

    def overrides(self) -> dict[str, str]:
        """Component -> ``name=plugin`` for the components whose builder replaced another
        module's (``override=True``)."""
        return self.code()[0]

    def plugin_code(self) -> dict[str, str]:
        """Plugin -> SHA-256 prefix of its code, for every user builder this trial runs (the
        rows' ``plugins`` column; ``cfg.plugins`` is the config key: the plugins to load)."""
        return self.code()[1]

    def trial_id(self) -> str:
        """A stable, readable id: the same config gives the same id on every machine."""
        if self._data["trial_id"]:
            return self._data["trial_id"]
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.dataset.name}-{self.model.name}-{self.init.name}-{self.acquisition.name}-s{self.seed}-{digest}"


def component_registry(component: str) -> Registry:
    """The registry whose builders a component section (dataset, model, init, acquisition) names."""
    return REGISTRIES[component]


# --- building a config --------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``1e-4`` (no dot) is a string; read it as YAML 1.2
    does, as a float, so ``perturb: 1e-4`` means what it says."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping that names a key twice is refused: YAML would silently keep the last value."""
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark
            )
        if isinstance(key, (str, int, float, bool)):
            seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"Malformed YAML in {source}{where}: {problem}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"The config in {source} must be a mapping of keys to values, got {type(data).__name__}.")
    return data


def read_text(path: str, what: str = "config file") -> str:
    """A YAML file's text, or one line saying why it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"The {what} {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read {what} {path}: {exc.strerror}.") from None


def load_file(path: str, what: str = "config file") -> dict[str, Any]:
    return parse_yaml(read_text(path, what), path)


def parse_set(assignment: str) -> dict[str, Any]:
    """``a.b.c=value`` (value in YAML syntax) -> ``{'a': {'b': {'c': value}}}``."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set takes dotted.key=value, got {assignment!r}.")
    value = parse_yaml(f"v: {raw}", f"--set {assignment}")["v"] if raw.strip() else None
    node: dict[str, Any] = {}
    root = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return root


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"known keys here: {', '.join(known)}.{hint}"


def merge(base: dict[str, Any], override: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``override`` on top of ``base``; unknown keys are refused (components take any params)."""
    if prefix == "dataset.":  # the section itself, e.g. a suite's grid value `dataset: {...}`
        return _merge_dataset(base, override)
    out = copy.deepcopy(base)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"Config keys must be strings, got {key!r}.")
        if prefix == "" and key in COMPONENTS:
            if isinstance(value, str):  # `init: warm` is shorthand for `init: {name: warm}`
                value = {"name": value}
            if not isinstance(value, dict):
                raise ConfigError(f"The '{key}' key must be a mapping with a 'name', got {value!r}.")
            # A new name drops the old component's parameters; the same name refines them.
            same = value.get("name", out[key]["name"]) == out[key]["name"]
            out[key] = {**(out[key] if same else {}), **value}
            continue
        if prefix == "" and key == "pretrain":
            out[key] = _merge_pretrain(out[key], value)
            continue
        if prefix == "" and key == "dataset":
            out[key] = _merge_dataset(out[key], value)
            continue
        if key not in out:
            raise ConfigError(f"Unknown config key {dotted!r}; {_suggest(key, list(out))}")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"The '{dotted}' key is a section; set its keys ({', '.join(out[key])}), got {value!r}."
                )
            out[key] = merge(out[key], value, f"{dotted}.")
        else:
            out[key] = value
    return out


def _merge_dataset(current: dict[str, Any], value: Any) -> dict[str, Any]:
    """The ``dataset`` section: fixed keys plus the named dataset's parameters, which are
    checked against its loader's signature in validate() (plugins may register it later).
    A new name drops the old dataset's parameters; the same name refines them.
    `dataset: mnist1d` is short for `dataset: {name: mnist1d}`."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(
            f"The 'dataset' key is a section; set its keys ({', '.join(DATASET_KEYS)} and the dataset's "
            f"parameters), got {value!r}."
        )
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"Config keys must be strings, got {key!r}.")
    same = value.get("name", current["name"]) == current["name"]
    kept = current if same else {k: v for k, v in current.items() if k in DATASET_KEYS}
    return {**copy.deepcopy(kept), **copy.deepcopy(value)}


def _check_dataset(section: dict[str, Any]) -> dict[str, Any]:
    """The ``dataset`` section with the loader's parameter defaults filled in, or a ConfigError."""
    entry = DATASETS.get(section["name"])
    params = dataset_params(section)
    unknown = sorted(set(params) - set(entry.defaults))
    if unknown:
        known = list(DATASET_KEYS) + list(entry.defaults)
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        has = f"and the parameters of {entry.signature()}" if entry.defaults else f"({entry.signature()} has none)"
        raise ConfigError(
            f"Unknown config key 'dataset.{unknown[0]}'; the dataset section has {', '.join(DATASET_KEYS)} {has}.{hint}"
        )
    fixed = {k: section[k] for k in DATASET_KEYS if k in section}
    return {**fixed, **entry.resolve(params, DATASETS.what)}


def _merge_pretrain(current: dict[str, Any] | None, value: Any) -> dict[str, Any] | None:
    """``pretrain`` is null or a section; `pretrain: cifar100` is short for `pretrain: {dataset: cifar100}`."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"dataset": value}
    if not isinstance(value, dict):
        raise ConfigError(
            f"The 'pretrain' key must be null, a dataset name or a mapping of its keys "
            f"({', '.join(PRETRAIN_DEFAULTS)}), got {value!r}."
        )
    return merge(PRETRAIN_DEFAULTS if current is None else current, value, "pretrain.")


def _check_pretrain(section: Any, datasets) -> dict[str, Any]:
    """The ``pretrain`` section with its defaults filled in, or a ConfigError."""
    if not isinstance(section, dict):
        section = _merge_pretrain(None, section)  # the same message as from a file
    section = merge(PRETRAIN_DEFAULTS, section, "pretrain.")
    name = section["dataset"]
    if name is None:
        raise ConfigError(
            f"The 'pretrain.dataset' key must name the source dataset; known: {', '.join(sorted(datasets))}."
        )
    if name not in datasets:
        raise ConfigError(f"Unknown dataset {name!r} in 'pretrain.dataset'; known: {', '.join(sorted(datasets))}.")
    for key, constraint in PRETRAIN_ALLOWED.items():
        check_value(section[key], constraint, f"'pretrain.{key}' parameter")
    return section


def _check_combinations(data: dict[str, Any]) -> None:
    """What no single key can check: a strategy's demands on the model."""
    model = data["model"]
    model_params = {k: v for k, v in model.items() if k != "name"}
    check_model = REGISTRIES["init"].get(data["init"]["name"]).extra.get("check_model")
    if check_model is not None:
        check_model({k: v for k, v in data["init"].items() if k != "name"}, model_spec(model["name"], model_params))
    acquisition = data["acquisition"]["name"]
    if "mc_probs" in REGISTRIES["acquisition"].get(acquisition).extra["needs"] and not model.get("dropout"):
        has = f"model.dropout is {model['dropout']!r}" if "dropout" in model else f"{model['name']} has no dropout"
        raise ConfigError(
            f"The acquisition strategy {acquisition!r} samples MC dropout, but {has}: "
            "use a model with dropout (mlp, resnet18) and set model.dropout > 0, e.g. 0.1."
        )


def _check_fixed_keys(data: dict[str, Any]) -> None:
    for dotted, constraint in ALLOWED.items():
        node = data
        for part in dotted.split("."):
            node = node[part]
        check_value(node, constraint, f"'{dotted}' parameter")


def validate(data: dict[str, Any]) -> Config:
    """Check every key and every component's parameters; fill in component defaults."""
    data = copy.deepcopy(data)
    # A config saved before a key existed (a resumed trial's config.yaml) gets its default.
    data.setdefault("pretrain", None)
    for section, defaults in DEFAULTS.items():
        if isinstance(defaults, dict) and section not in COMPONENTS:
            data.setdefault(section, copy.deepcopy(defaults))
            if isinstance(data[section], dict):
                for key, value in defaults.items():
                    data[section].setdefault(key, copy.deepcopy(value))
    data["dataset"] = _check_dataset(data["dataset"])
    _check_fixed_keys(data)
    for key in COMPONENTS:
        section, registry = data[key], REGISTRIES[key]
        if "name" not in section:
            raise ConfigError(f"The '{key}' section needs a 'name'; known: {', '.join(registry.names())}.")
        entry = registry.get(section["name"])
        params = {k: v for k, v in section.items() if k != "name"}
        data[key] = {"name": section["name"], **entry.resolve(params, registry.what)}
    if data.get("pretrain") is not None:
        data["pretrain"] = _check_pretrain(data["pretrain"], DATASETS.names())
    _check_combinations(data)
    config = Config(data)
    if not data["trial_id"]:  # a derived id holds registered names, which may be anything
        check_value(config.trial_id(), TrialId(limit=200), "trial id derived from the config (set 'trial_id')")
    return config


def build(source: Config | dict | str | os.PathLike | None = None, sets=(), plugins=()) -> Config:
    """DEFAULTS, then ``source`` (a YAML file's path, a mapping of keys to override, or a
    Config), then each ``--set``; plugins load before validation.  Every problem is a
    ConfigError naming the key."""
    if isinstance(source, Config):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = merge(DEFAULTS, source)
    elif isinstance(source, (str, os.PathLike)):
        data = merge(DEFAULTS, load_file(os.fspath(source)))
    elif source is None:
        data = DEFAULTS
    else:
        raise ConfigError(f"A config is a mapping, a YAML file's path or a Config; got {type(source).__name__}.")
    for assignment in sets:
        data = merge(data, parse_set(assignment))
    if plugins:
        data = merge(data, {"plugins": list(data["plugins"]) + [p for p in plugins if p not in data["plugins"]]})
    check_value(data["plugins"], ALLOWED["plugins"], "'plugins' parameter")
    # Absolute paths, so that workers on other processes or nodes load the same files.
    data = merge(data, {"plugins": load_plugins(data["plugins"])})
    return validate(data)


def resolve_count(value: int | float, pool: int, key: str) -> int:
    """A count or fraction of the pool, as a number of samples."""
    count = value if isinstance(value, int) else int(math.floor(value * pool + 0.5))
    if count < 1 or count > pool:
        raise ConfigError(
            f"The '{key}' parameter must be between 1 and the pool size {pool}. Got {value!r} ({count} samples)."
        )
    return count
