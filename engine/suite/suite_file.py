"""Suites: a base config and a grid over dotted keys, expanded into validated trials.

    name: fig8_grid
    base: {dataset: {name: cifar10}, model: {name: resnet18}, init: {name: shrink_perturb}}
    grid:
      init.shrink: [0.1, 0.3, 0.5]       # dotted key: one value inside a section
      init.perturb: [0.0001, 0.01]
      seed: [0, 1, 2]                    # 3 x 2 x 3 = 18 trials

A grid value may be a mapping that replaces a whole section
(``init: [{name: random}, {name: warm}]``).  ``grid`` may also be a list of such
mappings: their trials are concatenated (e.g. to give logistic regression its own
convergence rule).  Every trial is validated before anything runs; an invalid one
is named with the grid values that made it.

A suite may also search instead of sweeping (``search:``, engine/suite/search.py): a grid key
may then be a range (``init.shrink: {uniform: [0, 1]}``, ``init.perturb: {loguniform:
[1e-3, 1]}``) that a ``random`` or ``optuna`` searcher samples ``num_samples`` points
from (``space:`` is another name for such a grid), with ``seed`` still a list: every
sampled point runs every seed.  ``tracking:`` names experiment trackers
(engine/suite/tracking.py).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.compute.data import fraction_count, load_raw, pool_size
from engine.errors import ConfigError
from engine.schema.config import (
    COMPONENTS,
    DEFAULTS,
    Config,
    dataset_params,
    merge,
    parse_set,
    parse_yaml,
    read_text,
    validate,
)
from engine.schema.plugins import load_plugins
from engine.schema.registry import PathName, check_value
from engine.suite.search import Range, SearchSpec, parse_range, parse_search
from engine.suite.tracking import parse_tracking
from engine.trial.setup import plan_rounds

SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"  # package data: shipped in the wheel too


@dataclass(frozen=True)
class TrialSpec:
    config: Config
    point: dict[str, Any]  # the grid values that made this trial, by dotted key

    @property
    def trial_id(self) -> str:
        return self.config.trial_id()


@dataclass(frozen=True)
class Suite:
    """A loaded suite, as its file (and --set, --plugin, --tracker) says: never changed after
    loading (a sampling searcher's proposed trials are kept by engine/suite/tune.py)."""

    name: str
    trials: tuple[TrialSpec, ...]  # a sampling searcher's suite: none (Tune proposes them as it runs)
    source: str  # the suite file's text, saved next to the results
    base: dict[str, Any] = field(default_factory=dict)  # the base config, defaults and --set applied
    search: SearchSpec = field(default_factory=SearchSpec)
    space: dict[str, Any] = field(default_factory=dict)  # sampled keys: a Range or a list of choices
    seeds: tuple[int, ...] = ()  # each sampled point's seeds
    probes: tuple[TrialSpec, ...] = ()  # a sampled suite's corners, checked up front
    tracking: dict[str, Any] = field(default_factory=dict)  # engine/suite/tracking.py

    def grid_keys(self) -> list[str]:
        """Dotted grid keys that vary across trials, seed excluded: what a grid point is."""
        keys: list[str] = []
        for trial in self.trials:
            keys += [k for k in trial.point if k not in keys and k != "seed"]
        return [k for k in keys if len({_hashable(t.point.get(k)) for t in self.trials}) > 1]


def _hashable(value: Any) -> Any:
    return yaml.safe_dump(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def locate(file_or_name: str) -> str:
    """A suite file path, or the name of a suite shipped in engine/suites/."""
    if os.path.isfile(file_or_name):
        return file_or_name
    shipped = SUITES_DIR / f"{file_or_name}.yaml"
    if shipped.is_file():
        return str(shipped)
    known = sorted(p.stem for p in SUITES_DIR.glob("*.yaml")) if SUITES_DIR.is_dir() else []
    raise ConfigError(f"No suite file {file_or_name!r} and no shipped suite of that name; shipped: {', '.join(known)}.")


def _grid_points(grid: Any) -> list[dict[str, Any]]:
    grids = grid if isinstance(grid, list) else [grid]
    points: list[dict[str, Any]] = []
    for one in grids:
        if not isinstance(one, dict):
            raise ConfigError(f"A suite's 'grid' must map dotted keys to lists of values, got {one!r}.")
        for key, values in one.items():
            if isinstance(values, dict):
                parse_range(key, values)  # a range form's own error first
                raise ConfigError(
                    f"The grid key {key!r} is a range; ranges need search.searcher random or optuna "
                    "(a grid searcher runs lists of values)."
                )
            if not isinstance(values, list) or not values:
                raise ConfigError(f"The grid key {key!r} must have a non-empty list of values, got {values!r}.")
        keys = list(one)
        points += [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(one[k] for k in keys))]
    return points


def apply_grid_value(config: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set dotted ``key`` to ``value``; a mapping replaces the whole subtree under the key
    (a component becomes exactly that mapping, a section its defaults plus the mapping)."""
    parts = key.split(".")
    if isinstance(value, dict):
        if len(parts) == 1 and key in COMPONENTS:
            replaced = copy.deepcopy(config)
            replaced[key] = copy.deepcopy(value)
            return replaced
        default = DEFAULTS
        for part in parts:
            if not isinstance(default, dict) or part not in default:
                default = None
                break
            default = default[part]
        if isinstance(default, dict):
            value = merge(default, value, prefix=f"{key}.")
    nested = value
    for part in reversed(parts):
        nested = {part: nested}
    return merge(config, nested)


def load_suite(file_or_name: str, plugins: list[str] = (), sets: list[str] = (), trackers: list[str] = ()) -> Suite:
    """Read, expand and validate every trial; nothing runs here.  ``sets`` (``--set
    key=value``) override the base config, before the grid is applied; ``trackers``
    (``--tracker``) add to the suite's ``tracking``."""
    path = locate(file_or_name)
    source = read_text(path, "suite file")
    data = parse_yaml(source, path)
    unknown = sorted(set(data) - {"name", "base", "grid", "space", "search", "tracking"})
    if unknown:
        raise ConfigError(
            f"Unknown suite key {unknown[0]!r} in {path}; a suite has name, base, grid (or space), search and tracking."
        )
    name = data.get("name")
    if name is None:
        raise ConfigError(f"The suite in {path} needs a 'name'.")
    check_value(name, PathName(), f"suite 'name' in {path}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"The suite's 'base' must be a config mapping, got {base!r}.")
    base = merge(DEFAULTS, base)
    for assignment in sets:
        base = merge(base, parse_set(assignment))
    if plugins:
        base = merge(base, {"plugins": list(base["plugins"]) + [p for p in plugins if p not in base["plugins"]]})
    base = merge(base, {"plugins": load_plugins(base["plugins"]), "suite": name})
    search = parse_search(data.get("search"))
    tracking = parse_tracking(data.get("tracking"), list(trackers))
    if "grid" in data and "space" in data:
        raise ConfigError(f"The suite in {path} has both 'grid' and 'space'; they are one section by two names.")
    grid = data.get("grid", data.get("space")) or {}
    common = {"base": base, "search": search, "tracking": tracking}
    if search.sampled:
        return _sampled_suite(name, source, grid, common)

    trials, seen = [], {}
    for i, point in enumerate(_grid_points(grid)):
        described = ", ".join(f"{k}={v!r}" for k, v in point.items()) or "the base config"
        config = _point_config(name, base, point, f"trial {i + 1} ({described})")
        if config.trial_id() in seen:
            raise ConfigError(
                f"Suite {name!r}: trials {seen[config.trial_id()] + 1} and {i + 1} ({described}) are the same config."
            )
        seen[config.trial_id()] = i
        trials.append(TrialSpec(config, point))
    return Suite(name, tuple(trials), source, **common)


def _point_config(name: str, base: dict[str, Any], point: dict[str, Any], described: str) -> Config:
    try:
        merged = base
        for key, value in point.items():
            merged = apply_grid_value(merged, key, value)
        return validate(merged)
    except ConfigError as exc:
        raise ConfigError(f"Suite {name!r}, {described}: {exc}") from None


def _sampled_suite(name: str, source: str, grid: Any, common: dict[str, Any]) -> Suite:
    """A suite whose points a searcher proposes: the space, the seeds, and its corners
    (each range's ends and each listed value) validated now, so that a bad space fails
    before anything runs."""
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(
            f"Suite {name!r}: a {common['search'].searcher} searcher needs one 'grid' (or 'space') mapping of "
            f"keys to ranges or lists, got {grid!r}."
        )
    space: dict[str, Any] = {}
    seeds = [common["base"]["seed"]]
    for key, values in grid.items():
        if key == "seed":
            if not isinstance(values, list) or not values or not all(isinstance(v, int) for v in values):
                raise ConfigError(f"Suite {name!r}: 'seed' stays a list of ints inside each point, got {values!r}.")
            seeds = values
        elif isinstance(values, dict):
            space[key] = parse_range(key, values)
        elif isinstance(values, list) and values:
            space[key] = values
        else:
            raise ConfigError(f"The grid key {key!r} must have a non-empty list of values or a range, got {values!r}.")
    if common["search"].searcher == "optuna":
        for key, values in space.items():
            if isinstance(values, list) and not all(isinstance(v, (int, float, str, bool)) for v in values):
                raise ConfigError(f"The grid key {key!r}: optuna chooses among plain values (numbers, strings) only.")
    first = {k: (v.low if isinstance(v, Range) else v[0]) for k, v in space.items()}
    probes = []
    for key, values in space.items():
        for value in values.ends() if isinstance(values, Range) else values:
            point = {**first, key: value}
            config = _point_config(name, common["base"], {**point, "seed": seeds[0]}, f"{key}={value!r}")
            probes.append(TrialSpec(config, point))
    return Suite(name, (), source, space=space, seeds=tuple(seeds), probes=tuple(probes), **common)


def sampled_point(name: str, base: dict[str, Any], seeds: list[int], values: dict[str, Any]) -> list[TrialSpec]:
    """A sampled point's trials, one per seed (``values``: the searcher's choice for each
    sampled key; ``name``, ``base``, ``seeds``: the suite's)."""
    described = ", ".join(f"{k}={v!r}" for k, v in values.items())
    return [
        TrialSpec(_point_config(name, base, {**values, "seed": seed}, f"point ({described})"), dict(values))
        for seed in seeds
    ]


def check_pools(suite: Suite) -> dict[str, int]:
    """Load each distinct dataset once and check every trial's round counts against its pool,
    so a missing dataset or an impossible per_round fails before any trial starts.  Returns
    each trial's number of rounds, by trial id (a sampled suite: its probes')."""
    n_train: dict[tuple, int] = {}

    def training_split(name: str, root: str, download: bool, params: dict | None = None) -> int:
        key = (name, root, json.dumps(params or {}, sort_keys=True))
        if key not in n_train:
            n_train[key] = load_raw(name, root, download, params).train.labels.shape[0]
        return n_train[key]

    rounds = {}
    for i, trial in enumerate(suite.trials or suite.probes):
        ds, pretrain = trial.config.dataset, trial.config.pretrain
        try:
            pool = pool_size(training_split(ds.name, ds.root, ds.download, dataset_params(ds)), ds.eval, ds.holdout)
            if pretrain is not None:  # the source must be there too; the trial runs on a fraction
                same = pretrain.dataset == ds.name
                training_split(pretrain.dataset, ds.root, ds.download, dataset_params(ds) if same else None)
                pool = fraction_count(pool, pretrain.fraction)
            rounds[trial.trial_id] = plan_rounds(trial.config, pool).rounds
        except ConfigError as exc:
            described = ", ".join(f"{k}={v!r}" for k, v in trial.point.items())
            raise ConfigError(f"Suite {suite.name!r}, trial {i + 1} ({described}): {exc}") from None
    return rounds
