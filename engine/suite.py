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
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.config import COMPONENTS, DEFAULTS, Config, load_file, merge, parse_set, validate
from engine.plugins import load_plugins
from engine.registry import ConfigError

SUITES_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "suites"


@dataclass(frozen=True)
class Trial:
    config: Config
    point: dict[str, Any]  # the grid values that made this trial, by dotted key

    @property
    def trial_id(self) -> str:
        return self.config.trial_id()


@dataclass(frozen=True)
class Suite:
    name: str
    trials: list[Trial]
    source: str  # the suite file's text, saved next to the results

    def grid_keys(self) -> list[str]:
        """Dotted grid keys that vary across trials, seed excluded: what a grid point is."""
        keys: list[str] = []
        for trial in self.trials:
            keys += [k for k in trial.point if k not in keys and k != "seed"]
        return [k for k in keys if len({_hashable(t.point.get(k)) for t in self.trials}) > 1]


def _hashable(value: Any) -> Any:
    return yaml.safe_dump(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def locate(file_or_name: str) -> str:
    """A suite file path, or the name of a suite shipped in benchmarks/suites/."""
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


def load_suite(file_or_name: str, plugins: list[str] = (), sets: list[str] = ()) -> Suite:
    """Read, expand and validate every trial; nothing runs here.  ``sets`` (``--set
    key=value``) override the base config, before the grid is applied."""
    path = locate(file_or_name)
    with open(path) as f:
        source = f.read()
    data = load_file(path)
    unknown = sorted(set(data) - {"name", "base", "grid"})
    if unknown:
        raise ConfigError(f"Unknown suite key {unknown[0]!r} in {path}; a suite has name, base and grid.")
    name = data.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"The suite in {path} needs a 'name' (a string without '/'), got {name!r}.")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"The suite's 'base' must be a config mapping, got {base!r}.")
    base = merge(DEFAULTS, base)
    for assignment in sets:
        base = merge(base, parse_set(assignment))
    if plugins:
        base = merge(base, {"plugins": list(base["plugins"]) + [p for p in plugins if p not in base["plugins"]]})
    base = merge(base, {"plugins": load_plugins(base["plugins"]), "suite": name})

    trials, seen = [], {}
    for i, point in enumerate(_grid_points(data.get("grid") or {})):
        described = ", ".join(f"{k}={v!r}" for k, v in point.items()) or "the base config"
        try:
            merged = base
            for key, value in point.items():
                merged = apply_grid_value(merged, key, value)
            config = validate(merged)
        except ConfigError as exc:
            raise ConfigError(f"Suite {name!r}, trial {i + 1} ({described}): {exc}") from None
        if config.trial_id() in seen:
            raise ConfigError(
                f"Suite {name!r}: trials {seen[config.trial_id()] + 1} and {i + 1} ({described}) are the same config."
            )
        seen[config.trial_id()] = i
        trials.append(Trial(config, point))
    return Suite(name, trials, source)


def check_pools(suite: Suite) -> None:
    """Load each distinct dataset once and check every trial's round counts against its pool,
    so a missing dataset or an impossible per_round fails before any trial starts."""
    from engine.data import dataset_params, fraction_count, load_raw, pool_size
    from engine.loop import plan_rounds

    n_train: dict[tuple, int] = {}

    def training_split(name: str, root: str, download: bool, params: dict | None = None) -> int:
        key = (name, root, json.dumps(params or {}, sort_keys=True))
        if key not in n_train:
            n_train[key] = load_raw(name, root, download, params).train.labels.shape[0]
        return n_train[key]

    for i, trial in enumerate(suite.trials):
        ds, pretrain = trial.config.dataset, trial.config.pretrain
        try:
            pool = pool_size(training_split(ds.name, ds.root, ds.download, dataset_params(ds)), ds.eval, ds.holdout)
            if pretrain is not None:  # the source must be there too; the trial runs on a fraction
                same = pretrain.dataset == ds.name
                training_split(pretrain.dataset, ds.root, ds.download, dataset_params(ds) if same else None)
                pool = fraction_count(pool, pretrain.fraction)
            plan_rounds(trial.config, pool)
        except ConfigError as exc:
            described = ", ".join(f"{k}={v!r}" for k, v in trial.point.items())
            raise ConfigError(f"Suite {suite.name!r}, trial {i + 1} ({described}): {exc}") from None
