"""Reading and summarising results tables in pandas.

    from engine.analysis import results
    df = results.load("results/quickstart")   # one row per (trial, round); several paths: one table
    trials = results.per_trial(df)            # one row per trial
    rounds = results.by_round(df)             # per grid point and round: mean and std over seeds
    points = results.summary(df)              # per grid point: final accuracy, total train time
    gaps = results.gap_to_random(df)          # each strategy against random init, same settings
    said = results.outcome(df)                # the same, paired by seed, with 95% intervals
    checked = results.claims(df)              # the paper's orderings tested: holds / contradicted / ...

A *grid point* is one combination of the config values that vary across the table's
trials, seed and trial id excluded (``grid_columns``); the trials that share a grid
point are its seeds.  Means and standard deviations are over those seeds (std with
ddof=1, so NaN for a single seed).

The config values are the ``cfg.*`` columns (the whole flattened config, one typed
column per key) except the keys that do not change what a trial computes
(``engine.schema.config.NOT_IDENTITY``: device, dataset.root, performance, ...) and the seed.
``load`` adds the short names of the most used ones (``init`` for ``cfg.init.name``,
``engine.schema.records.SHORT_NAMES``), which the functions below group and label by; a
frame read otherwise gets them from ``records.with_short_names``.
"""

from __future__ import annotations

import functools
import json
import os
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

import engine.compute.builtins  # noqa: F401  (the cfg.* columns of older rows name every registered builder)
from engine.analysis import stats
from engine.errors import ConfigError
from engine.schema.config import HOW_FAR, NOT_IDENTITY
from engine.schema.config import strategy_label as config_label
from engine.schema.records import (
    CONFIG_COLUMNS,
    CONFIG_PREFIX,
    COUNT_COLUMNS,
    INIT_COLUMNS,
    NAME_COLUMNS,
    STRATEGY_COLUMNS,
    with_short_names,
)
from engine.storage.folders import row_files, row_key
from engine.storage.object_store import object_store_reason, reach
from engine.storage.store import SCHEMA
from engine.storage.uri import normalise

# Columns that usually follow from others: shrink/perturb from init in a random / warm /
# one shrink-perturb comparison, n_pool from the dataset, momentum from the optimizer.
# They join a grid point only when they tell apart trials that the other varying columns
# do not (a λ×σ grid), so that a table shows "init, acquisition" and not six columns that
# say the same thing.
DERIVED = [
    ("shrink", "perturb"),
    ("bn_stats",),
    ("momentum",),
    ("n_pool", "n_eval"),
]
ROUND_METRICS = ("test_acc", "test_loss", "train_acc", "train_seconds", "epochs", "steps")
INIT_ORDER = {"random": 0, "warm": 1, "shrink_perturb": 2}  # how tables and legends list them
ACQUISITION_ORDER = {"random": 0}  # passive first, then active strategies by name


CFG = CONFIG_PREFIX  # the prefix of the flattened-config columns
# HOW_FAR (engine.schema.config): how far a trial runs, not what its rounds compute: a trial
# continued to more rounds keeps its grid point (its rows then hold two values), and
# unequal rounds get a note instead.
# cfg columns that never tell grid points apart: keys outside the trial's identity, how far
# it runs, and the seed (a grid point pools its seeds).  A dotted key covers those below it.
NOT_GROUPING = tuple(f"{CFG}{key}" for key in (*NOT_IDENTITY, *HOW_FAR, "seed"))


def load(*paths: str) -> pd.DataFrame:
    """The whole results table under one or more paths (local or pyarrow URIs) as one frame,
    names as categoricals and counts as integers.  A directory without warmstart rows is a
    clear error, not an empty frame; so is a trial found under two of the paths (the same
    trial id is the same config and seed: keep one copy)."""
    if not paths or not all(paths):
        raise ConfigError("No results path given.")
    frames = [_read(path) for path in paths]
    seen: dict[str, str] = {}
    for path, frame in zip(paths, frames, strict=True):
        for trial_id in frame["trial_id"].unique():
            if trial_id in seen:
                raise ConfigError(f"Trial {trial_id!r} is in both {seen[trial_id]} and {path}; load one copy of it.")
            seen[trial_id] = path
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True, sort=False)
    frame = with_short_names(frame)
    for name in NAME_COLUMNS:
        if name in frame:
            frame[name] = frame[name].astype("category")
    for name in COUNT_COLUMNS:
        if name in frame and frame[name].notna().all():
            frame[name] = frame[name].astype("int64")
    known = [f.name for f in SCHEMA if f.name in frame]
    extra = [c for c in frame.columns if c not in known]
    return frame[known + extra].sort_values(["trial_id", "round"]).reset_index(drop=True)


def _read(path_or_uri: str) -> pd.DataFrame:
    """One folder's own rows (``folders.row_files``: not a subfolder's), each file's row
    checked against the (trial, round) its name fixes."""
    path_or_uri = normalise(path_or_uri, "results path")
    try:
        reach(path_or_uri)
        fs, files = row_files(path_or_uri)
        dataset = pads.dataset(files, filesystem=fs, format="parquet")
        # pyarrow takes the first file's schema for the whole folder; rows written by processes
        # that had other plugins registered have other cfg.* columns (a component's columns are
        # its registered builders' parameters): unify them all.
        schemas = {fragment.physical_schema for fragment in dataset.get_fragments()}
        if len(schemas) > 1:
            unified = pa.unify_schemas(list(schemas), promote_options="permissive")
            dataset = pads.dataset(files, filesystem=fs, format="parquet", schema=unified)
        parts = [(f.path, f.to_table(schema=dataset.schema)) for f in dataset.get_fragments()]
    except FileNotFoundError:
        raise ConfigError(f"No results at {path_or_uri}: the path does not exist.") from None
    except OSError as exc:  # also an object store that does not answer, a missing bucket, refused credentials
        raise ConfigError(f"Cannot read results at {path_or_uri}: {object_store_reason(exc, path_or_uri)}.") from None
    except Exception as exc:  # pyarrow's errors for unreadable files vary by version
        raise ConfigError(f"Cannot read results at {path_or_uri}: {str(exc).splitlines()[0]}") from None
    table = (
        pa.concat_tables([p for _, p in parts], promote_options="permissive") if parts else dataset.schema.empty_table()
    )
    missing = [name for name in ("trial_id", "round", "test_acc") if name not in table.column_names]
    if table.num_rows == 0:
        raise ConfigError(f"No results at {path_or_uri}: no warmstart rows found.")
    if missing:
        raise ConfigError(f"{path_or_uri} is not a warmstart results table: it lacks the column {missing[0]!r}.")
    misplaced = [path for path, part in parts if not _matches_its_name(path, part)]
    if misplaced:
        warnings.warn(
            f"{len(misplaced)} row file(s) under {path_or_uri} hold another (trial, round) than their name says "
            f"(first: {os.path.basename(misplaced[0])}); left out. `warmstart check` lists them, and resuming "
            "the trial recomputes them.",
            MisplacedRow,
            stacklevel=3,
        )
        table = pa.concat_tables([part for path, part in parts if path not in misplaced], promote_options="permissive")
        if table.num_rows == 0:
            raise ConfigError(f"No results at {path_or_uri}: no warmstart rows found.")
    return table.to_pandas()


class MisplacedRow(UserWarning):
    """A row file whose content is another (trial, round) than its name fixes: not read."""


def _matches_its_name(path: str, part: pa.Table) -> bool:
    key = row_key(path)
    if key is None:  # not a warmstart row file's name (a table written by hand): nothing to check
        return True
    return part.num_rows == 1 and (part["trial_id"][0].as_py(), part["round"][0].as_py()) == key


# --- grid points ----------------------------------------------------------------------


def short_named(fn):
    """For a public function of a results table: rows however they were read (``load``'s
    frame, or ``pd.read_parquet``'s, pyarrow's, ...) get the short names it groups and labels
    by (records.SHORT_NAMES) from their cfg.* columns."""

    @functools.wraps(fn)
    def on_rows(frame, *args, **kwargs):
        return fn(with_short_names(frame), *args, **kwargs)

    return on_rows


@short_named
def config_columns(frame: pd.DataFrame) -> list[str]:
    """The ``cfg.*`` columns that decide what a trial computes: every one but the
    NOT_GROUPING keys (and those below them)."""
    return [
        c
        for c in frame.columns
        if c.startswith(CFG) and not any(c == key or c.startswith(f"{key}.") for key in NOT_GROUPING)
    ]


def is_strategy(column: str) -> bool:
    """Whether a grid column says how rounds start or pick samples (init or acquisition)."""
    return column in STRATEGY_COLUMNS or column.startswith((f"{CFG}init.", f"{CFG}acquisition."))


def is_acquisition(column: str) -> bool:
    """Whether a grid column says how rounds pick their samples."""
    return column == "acquisition" or column.startswith(f"{CFG}acquisition.")


def is_init(column: str) -> bool:
    return column in INIT_COLUMNS or column.startswith(f"{CFG}init.")


def _hashable(value):
    """A list or mapping cell (a list-valued config key) as JSON text, so it can be grouped."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _groupable(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every object column's unhashable cells as text."""
    for name in frame.columns:
        if (
            frame[name].dtype == object
            and frame[name].map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray))).any()
        ):
            frame = frame.assign(**{name: frame[name].map(_hashable)})
    return frame


def _varies(column: pd.Series) -> bool:
    return column.nunique(dropna=False) > 1


def _n_points(trials: pd.DataFrame, columns: list[str]) -> int:
    return len(trials[columns].drop_duplicates()) if columns else 1


@short_named
def grid_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that name a table's grid points.

    The grid points are the combinations of every config column that varies across the
    trials (CONFIG_COLUMNS and the ``cfg.*`` columns of ``config_columns``), seed excluded.
    They are named with as few columns as tell the same points apart: the varying named
    columns of CONFIG_COLUMNS first; a DERIVED group (shrink/perturb, n_pool/n_eval, ...)
    and then a ``cfg.*`` column join only when they separate trials the columns chosen so
    far do not (a λ×σ grid; two runs that differ in ``cfg.convergence.train_acc``).  So a
    random / warm / shrink-perturb comparison is "init, acquisition", not ten columns
    that say the same thing.  ``init`` is always included (it is what the paper varies)."""
    trials = _groupable(frame.drop_duplicates("trial_id"))
    present = [c for c in CONFIG_COLUMNS if c in trials]
    derived = {c for group in DERIVED for c in group}
    chosen = [c for c in present if c not in derived and _varies(trials[c])]
    groups = [[c for c in group if c in present] for group in DERIVED]
    groups += [[c] for c in config_columns(trials)]
    for members in groups:
        members = [c for c in members if _varies(trials[c])]
        if members and _n_points(trials, chosen + members) > _n_points(trials, chosen):
            chosen += members
    if "init" in trials and "init" not in chosen:
        chosen.append("init")
    return [c for c in CONFIG_COLUMNS if c in chosen] + [c for c in chosen if c.startswith(CFG)]


@short_named
def seed_column(frame: pd.DataFrame) -> str | None:
    """``seed``, where the table has it."""
    return "seed" if "seed" in frame else None


def _point_keys(frame: pd.DataFrame, keys: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """Group keys for grid points; a table without config columns is one point, "all"."""
    keys = grid_columns(frame) if keys is None else list(keys)
    if not keys:
        return frame.assign(point="all"), ["point"]
    return frame, keys


def _group(frame: pd.DataFrame, keys: list[str]):
    # dropna=False: a null config value (bn_stats of warm start, momentum of Adam) is a value
    return frame.groupby(keys, dropna=False, observed=True, sort=False)


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Categoricals as their values, so frames compare, merge and print like plain data."""
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype(object)
    return frame


def _sort_key(column: pd.Series) -> pd.Series:
    orders = {"init": INIT_ORDER, "acquisition": ACQUISITION_ORDER}
    order = orders.get(str(column.name).removeprefix(CFG).removesuffix(".name"))
    if order is not None:  # random, warm, shrink_perturb, then the others by name
        return column.map(lambda v: f"{order.get(v, len(order))}:{v}")
    return column


@short_named
def sort_points(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows in reading order: by each key in turn; init as random, warm, shrink_perturb, then
    others, acquisition random (passive) first."""
    keys = [k for k in keys if k in frame]
    if not keys:
        return frame.reset_index(drop=True)
    return frame.sort_values(keys, key=_sort_key, na_position="first", kind="stable").reset_index(drop=True)


# --- summaries --------------------------------------------------------------------------


# --- how train time was measured ---------------------------------------------------------
# Under performance.ensemble several trials train stacked, and each member's train_seconds is
# the stack's time shared out by optimizer steps (train_timing ``stacked_share``): the same
# seconds per step for every member, so comparing such times compares which ensemble a trial
# landed in.  Time comparisons therefore use trials whose every round trained alone; compare
# the others by optimizer steps, which do not depend on how a trial ran.

ALONE, STACKED = "alone", "stacked_share"
# The times a stacked row holds as shares of its ensemble's (engine/trial/stacked.py): training by
# optimizer steps, scoring and evaluation's stacked passes equally.
SHARED_SECONDS = ("train_seconds", "acquire_seconds", "eval_seconds")
TIMING_NOTE = (
    "their train_seconds is a share, by optimizer steps, of the ensemble's time (train_timing = "
    "stacked_share), not a measurement of their own. Train times are compared only between trials "
    "whose every round trained alone; compare the others by optimizer steps."
)


@short_named
def train_timing(frame: pd.DataFrame) -> pd.Series:
    """Per row, how its ``train_seconds`` was measured: ``alone`` or ``stacked_share``.  Rows
    written before the ``train_timing`` column: ``stacked_share`` when they name an ensemble."""
    recorded = frame["train_timing"].astype(object) if "train_timing" in frame else pd.Series(None, index=frame.index)
    if "ensemble" in frame:
        guess = pd.Series(np.where(frame["ensemble"].notna(), STACKED, ALONE), index=frame.index)
    else:
        guess = pd.Series(ALONE, index=frame.index)
    return recorded.where(recorded.notna(), guess)


@short_named
def measured_alone(frame: pd.DataFrame) -> pd.Series:
    """Per row, whether its ``train_seconds`` is a measurement of its own (``train_timing`` alone)."""
    return train_timing(frame) == ALONE


@short_named
def any_stacked(frame: pd.DataFrame) -> bool:
    """Whether some row's ``train_seconds`` is a share of a stacked ensemble's time."""
    return bool((~measured_alone(frame)).any())


@short_named
def timing_note(frame: pd.DataFrame) -> str | None:
    """One line on trials that trained stacked (and what that does to their times); None without any."""
    alone = measured_alone(frame).groupby(frame["trial_id"], observed=True).all()
    if alone.all():
        return None
    return (
        f"{int((~alone).sum())} of {len(alone)} trials trained stacked in ensembles (performance.ensemble): "
        + TIMING_NOTE
    )


@short_named
def per_trial(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its final and mean test accuracy, total train time, epochs and steps,
    and the rounds it completed; the trial's config columns are kept.  ``train_timing``:
    ``alone``, ``stacked_share`` or ``mixed`` (its rounds measured both ways);
    ``total_train_seconds`` is NaN unless every round trained alone (a share of a stacked
    ensemble's time is no measurement to compare)."""
    frame = frame.assign(_alone=measured_alone(frame))
    ordered = _groupable(frame.sort_values(["trial_id", "round"]))
    grouped = ordered.groupby("trial_id", observed=True, sort=True)
    aggregates = {
        "rounds": ("round", "max"),
        "final_test_acc": ("test_acc", "last"),
        "mean_test_acc": ("test_acc", "mean"),
        "total_train_seconds": ("train_seconds", "sum"),
        "total_epochs": ("epochs", "sum"),
        "total_steps": ("steps", "sum"),
        "first_n_labeled": ("n_labeled", "first"),
        "final_n_labeled": ("n_labeled", "last"),
    }
    summary = grouped.agg(**{name: spec for name, spec in aggregates.items() if spec[0] in frame})
    if "train_seconds" in frame:  # a sum of nothing is not zero seconds
        summary.loc[grouped["train_seconds"].count() == 0, "total_train_seconds"] = float("nan")
    alone = grouped["_alone"].agg(["all", "any"])
    summary["train_timing"] = np.where(alone["all"], ALONE, np.where(alone["any"], "mixed", STACKED))
    if "total_train_seconds" in summary:
        summary.loc[~alone["all"], "total_train_seconds"] = float("nan")
    leading = ["suite", "seed", "dataset", "model", "optimizer", "lr", "init", "shrink", "perturb", "acquisition"]
    leading += ["per_round"]
    constant = [c for c in leading + CONFIG_COLUMNS if c in frame] + [c for c in frame if c.startswith(CFG)]
    firsts = grouped[list(dict.fromkeys(constant))].first()
    return firsts.join(summary).reset_index()


@short_named
def by_round(frame: pd.DataFrame, keys: list[str] | None = None, metrics=ROUND_METRICS) -> pd.DataFrame:
    """Per grid point and round: ``<metric>_mean`` and ``<metric>_std`` over seeds, and
    ``seeds``, the number of trials that reached the round.  ``keys`` are the grid
    columns (default ``grid_columns(frame)``); ``n_labeled`` sits beside ``round``.
    A time (``train_seconds``, ``acquire_seconds``, ``eval_seconds``) is NaN for a round unless
    every seed trained it alone (train_timing): a stacked row's times are shares of the stack's."""
    timed = [m for m in metrics if m in SHARED_SECONDS and m in frame]
    if timed:  # shares of a stack's time: not compared
        alone = measured_alone(frame)
        frame = frame.assign(**{m: frame[m].where(alone) for m in timed})
    frame, keys = _point_keys(frame, keys)
    metrics = [m for m in metrics if m in frame]
    by = keys + ["round"] + (["n_labeled"] if "n_labeled" in frame else [])
    aggregates = {"seeds": ("trial_id", "nunique")}
    for m in metrics:
        aggregates[f"{m}_mean"] = (m, "mean")
        aggregates[f"{m}_std"] = (m, "std")
    for m in timed:
        aggregates[f"_timed_{m}"] = (m, "count")
    table = _plain(_group(frame, by).agg(**aggregates).reset_index())
    for m in timed:  # a round's time only where every seed's was measured alone
        table.loc[table[f"_timed_{m}"] < table["seeds"], [f"{m}_mean", f"{m}_std"]] = float("nan")
        table = table.drop(columns=f"_timed_{m}")
    return sort_points(table, keys + ["round"])


@short_named
def summary(frame: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """One row per grid point: ``seeds`` (trials), ``rounds`` (the most any seed ran), final
    and mean-over-rounds test accuracy, total train seconds and total optimizer steps as
    ``_mean``/``_std`` over seeds, mean total epochs, and the Pareto marks:
    ``pareto_steps`` / ``pareto_seconds`` are True for the grid points on the non-dominated
    front of final test accuracy (higher) against optimizer steps / train seconds (lower),
    among the grid points that share every non-strategy setting (strategies compete
    within a dataset, model, ...).  ``train_timing``: the grid point's trials' (``mixed`` when
    they differ); its train seconds are NaN unless every trial trained alone (per_trial), so
    train times are compared only between trials measured alone.  Warns (SeedCollision) when
    a grid point holds several trials with one seed: they are pooled as if they were seeds."""
    trials = per_trial(frame)
    keys = grid_columns(frame) if keys is None else list(keys)
    _warn_collisions(trials, keys)
    trials, keys = _point_keys(trials, keys)
    aggregates = {"seeds": ("trial_id", "count"), "rounds": ("rounds", "max")}
    for column, name in [
        ("final_test_acc", "final_test_acc"),
        ("mean_test_acc", "mean_test_acc"),
        ("total_train_seconds", "train_seconds"),
        ("total_steps", "steps"),
    ]:
        if column in trials:
            aggregates[f"{name}_mean"] = (column, "mean")
            aggregates[f"{name}_std"] = (column, "std")
    if "total_epochs" in trials:
        aggregates["epochs_mean"] = ("total_epochs", "mean")
    if "total_train_seconds" in trials:
        aggregates["_timed"] = ("total_train_seconds", "count")
    aggregates["train_timing"] = ("train_timing", _timing_of)
    table = _plain(_group(trials, keys).agg(**aggregates).reset_index())
    if "_timed" in table:  # a grid point's time only where every seed trained alone
        table.loc[table["_timed"] < table["seeds"], ["train_seconds_mean", "train_seconds_std"]] = float("nan")
        table = table.drop(columns="_timed")
    for cost, flag in [("steps_mean", "pareto_steps"), ("train_seconds_mean", "pareto_seconds")]:
        if cost in table and "final_test_acc_mean" in table:
            table[flag] = front(table, keys, "final_test_acc_mean", cost)
    return sort_points(table, keys)


def _timing_of(timings: pd.Series) -> str:
    """A grid point's ``train_timing``: its trials' one value, or ``mixed``."""
    values = set(timings)
    return values.pop() if len(values) == 1 else "mixed"


def front(table: pd.DataFrame, keys: list[str], accuracy: str, cost: str) -> pd.Series:
    """Per row of a summary, whether it is on the Pareto front of ``accuracy`` (higher) against
    ``cost`` (lower) among the rows with the same non-strategy settings (``keys`` that are
    not ``is_strategy``)."""
    settings = [k for k in keys if not is_strategy(k) and k in table]
    marks = pd.Series(False, index=table.index)
    parts = _group(table, settings) if settings else [(None, table)]
    for _, part in parts:
        marks.loc[part.index] = stats.pareto_front(part[accuracy], part[cost])
    return marks


class SeedCollision(UserWarning):
    """Several trials share a grid point and a seed: something the grid columns do not
    record tells them apart, and summaries pool them as extra seeds."""


@short_named
def seed_collisions(frame: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """The (grid point, seed) pairs that hold more than one trial: the grid columns, the
    seed and ``trials`` (how many).  Empty when every seed of a grid point is one trial."""
    keys = grid_columns(frame) if keys is None else list(keys)
    return _collisions(per_trial(frame), keys)


def _collisions(trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    seed = seed_column(trials)
    if seed is None:
        return pd.DataFrame(columns=[*keys, "trials"])
    by = [k for k in keys if k in trials] + [seed]
    counts = _plain(_group(trials, by)["trial_id"].nunique().reset_index(name="trials"))
    return counts[counts["trials"] > 1].reset_index(drop=True)


def collision_note(collisions: pd.DataFrame) -> str | None:
    """One line on seed collisions, for the report and the terminal; None without any."""
    if collisions.empty:
        return None
    first = collisions.iloc[0]
    example = ", ".join(f"{c.removeprefix(CFG)}={first[c]}" for c in collisions.columns if c != "trials")
    return (
        f"{len(collisions)} (grid point, seed) pair(s) hold more than one trial (e.g. {example}: "
        f"{first['trials']} trials); they are pooled as extra seeds. The table does not record what tells "
        "them apart (e.g. one config run under two trial_id values)."
    )


def _warn_collisions(trials: pd.DataFrame, keys: list[str]) -> None:
    note = collision_note(_collisions(trials, keys))
    if note:
        warnings.warn(note, SeedCollision, stacklevel=3)


@short_named
def gap_to_random(frame: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """Each non-random grid point against random init with otherwise the same settings
    (every grid column outside INIT_COLUMNS equal): the paper's question.

    Columns: the grid columns, ``seeds``; ``final_test_acc`` and ``mean_test_acc`` (means
    over seeds) with ``random_…`` beside them and ``final_acc_gap`` / ``mean_acc_gap`` =
    strategy − random (positive: better than random init); ``train_seconds`` (mean total)
    with ``random_train_seconds`` and ``train_time_ratio`` = strategy / random (below 1:
    faster; NaN unless both trained alone: ``summary``), and ``steps_ratio`` likewise for
    optimizer steps, which do not depend on the hardware or on stacking.  A strategy without a random-init counterpart gets NaN gaps.  ``keys``: the
    grid columns (default ``grid_columns(frame)``; must include ``init``)."""
    keys = grid_columns(frame) if keys is None else list(keys)
    points = summary(frame, keys)
    columns = {
        "final_test_acc_mean": "final_test_acc",
        "mean_test_acc_mean": "mean_test_acc",
        "train_seconds_mean": "train_seconds",
        "steps_mean": "steps",
    }
    points = points.rename(columns=columns)
    points = points[[*keys, "seeds", *[c for c in columns.values() if c in points]]]
    if "init" not in points:
        return points.iloc[0:0]
    setting = [k for k in keys if not is_init(k)]
    is_random = points["init"] == "random"
    reference = points.loc[is_random, [*setting, *[c for c in points if c not in keys]]]
    reference = reference.rename(columns={c: f"random_{c}" for c in reference if c not in setting})
    strategies = points.loc[~is_random]
    if setting:
        merged = strategies.merge(reference, on=setting, how="left", validate="many_to_one")
    elif len(reference):
        merged = strategies.merge(reference, how="cross")
    else:
        merged = strategies.assign(**{c: float("nan") for c in reference.columns})
    for metric, gap in [("final_test_acc", "final_acc_gap"), ("mean_test_acc", "mean_acc_gap")]:
        if metric in merged:
            merged[gap] = merged[metric] - merged[f"random_{metric}"]
    for metric, ratio in [("train_seconds", "train_time_ratio"), ("steps", "steps_ratio")]:
        if metric in merged:
            merged[ratio] = merged[metric] / merged[f"random_{metric}"]
    order = [*keys, "seeds", "random_seeds"]
    for metric, derived in [
        ("final_test_acc", "final_acc_gap"),
        ("mean_test_acc", "mean_acc_gap"),
        ("train_seconds", "train_time_ratio"),
        ("steps", "steps_ratio"),
    ]:
        order += [c for c in (metric, f"random_{metric}", derived) if c in merged]
    return sort_points(merged[order], keys)


# --- contrasts, the outcome, the paper's claims ------------------------------------------------


def _init_column(frame: pd.DataFrame) -> str | None:
    return "init" if "init" in frame else None


def strategy_label(point: pd.Series | dict, keys: list[str] = ()) -> str:
    """A grid point's init strategy (``engine.schema.config.strategy_label``): ``warm``,
    ``shrink_perturb(0.6, 0.01)`` (λ, σ), with any other init column of ``keys``, e.g.
    ``shrink_perturb(0.6, 0.01, bn_stats=keep)``."""
    init, shrink, perturb = point["init"], point.get("shrink"), point.get("perturb")
    mix = init == "shrink_perturb" and _number(shrink) and _number(perturb)
    params = {"shrink": shrink, "perturb": perturb} if mix else {}
    shown = {"init", "shrink", "perturb", f"{CFG}init.shrink", f"{CFG}init.perturb"}
    params |= {k.removeprefix(CFG + "init."): point.get(k) for k in keys if is_init(k) and k not in shown}
    return config_label(init, params)


def setting_label(point: pd.Series | dict, settings: list[str]) -> str:
    """The non-strategy-init settings of a grid point, e.g. ``acquisition=margin``; ``all``
    when there are none."""
    return ", ".join(f"{k.removeprefix(CFG)}={point.get(k)}" for k in settings) or "all"


def _number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not pd.isna(value)


def _same(frame: pd.DataFrame, point: pd.Series, columns: list[str]) -> pd.Series:
    """Rows of ``frame`` whose ``columns`` equal the point's (a missing value equals a missing value)."""
    mask = pd.Series(True, index=frame.index)
    for c in columns:
        value = point[c]
        mask &= frame[c].isna() if pd.isna(value) else frame[c] == value
    return mask


def _by_seed(part: pd.DataFrame, seed: str | None, measure: str) -> dict:
    if seed is None:  # no seeds recorded: the trials are the samples, unpaired
        return {f"trial {i}": v for i, v in enumerate(part[measure])}
    return part.groupby(seed)[measure].mean().to_dict()  # two trials on one seed: their mean


@short_named
def contrast(
    frame: pd.DataFrame, measure: str, treatment: str, control: str, keys: list[str] | None = None
) -> pd.DataFrame:
    """Every grid point whose init is ``treatment`` against every grid point whose init is
    ``control`` with otherwise the same settings (every grid column that is not an init
    column equal): the difference treatment − control of ``measure`` (a per_trial column:
    final_test_acc, mean_test_acc, total_steps, total_train_seconds) with its 95% interval,
    paired by seed where the two points share at least two seeds (engine.analysis.stats.difference).

    Columns: the setting columns, ``setting`` (as text), ``treatment`` and ``control``
    (strategy_label), ``measure``, ``treatment_mean``, ``control_mean``, ``effect``,
    ``ci_low``, ``ci_high``, ``interval`` (paired t, Welch t or none), ``n_treatment``,
    ``n_control`` (seeds) and ``pairs`` (seeds on both sides)."""
    keys = grid_columns(frame) if keys is None else list(keys)
    trials = _plain(per_trial(frame))
    init = _init_column(trials)
    settings = [k for k in keys if not is_init(k) and k in trials]
    columns = [*settings, "setting", "treatment", "control", "measure", "treatment_mean", "control_mean"]
    columns += ["effect", "ci_low", "ci_high", "interval", "n_treatment", "n_control", "pairs"]
    if init is None or measure not in trials:
        return pd.DataFrame(columns=columns)
    point_keys = [k for k in keys if k in trials] or [init]
    seed = seed_column(trials)
    rows = []
    for _, treated in _group(trials[trials[init] == treatment], point_keys):
        first = treated.iloc[0]
        controls = trials[(trials[init] == control) & _same(trials, first, settings)]
        for _, controlled in _group(controls, point_keys):
            a, b = _by_seed(treated, seed, measure), _by_seed(controlled, seed, measure)
            interval = stats.difference(a, b)
            rows.append(
                {
                    **{k: first[k] for k in settings},
                    "setting": setting_label(first, settings),
                    "treatment": strategy_label(first, point_keys),
                    "control": strategy_label(controlled.iloc[0], point_keys),
                    "measure": measure,
                    "treatment_mean": float(np.nanmean(list(a.values()))),
                    "control_mean": float(np.nanmean(list(b.values()))),
                    "effect": interval.effect,
                    "ci_low": interval.low,
                    "ci_high": interval.high,
                    "interval": interval.method,
                    "n_treatment": interval.n_treatment,
                    "n_control": interval.n_control,
                    "pairs": interval.pairs,
                }
            )
    return pd.DataFrame(rows, columns=columns)


@short_named
def outcome(frame: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """The suite's result in numbers: every strategy against random init with otherwise the
    same settings.  Per (setting, strategy): ``acc_effect`` (final test accuracy, strategy −
    random) with ``acc_low``/``acc_high`` (its 95% interval, paired by seed where possible),
    ``acc_interval`` (paired t, Welch t, none), ``pairs``, and ``steps_change``, the relative
    change in mean total optimizer steps (−0.47: 47% fewer than random init)."""
    keys = grid_columns(frame) if keys is None else list(keys)
    init = _init_column(frame)
    if init is None:
        return pd.DataFrame()
    parts = []
    for name in sorted({str(v) for v in frame[init].dropna().unique()} - {"random"}, key=_init_rank):
        accuracy = contrast(frame, "final_test_acc", name, "random", keys)
        if accuracy.empty:
            continue
        accuracy = accuracy.rename(
            columns={"effect": "acc_effect", "ci_low": "acc_low", "ci_high": "acc_high", "interval": "acc_interval"}
        )
        steps = contrast(frame, "total_steps", name, "random", keys)
        if not steps.empty:
            steps["steps_change"] = steps["treatment_mean"] / steps["control_mean"] - 1.0
            pair = ["setting", "treatment", "control"]
            accuracy = accuracy.merge(steps[[*pair, "steps_change"]], on=pair, how="left")
        parts.append(accuracy.drop(columns=["measure", "treatment_mean", "control_mean"]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _init_rank(name: str) -> str:
    return f"{INIT_ORDER.get(name, len(INIT_ORDER))}:{name}"


# The paper's orderings: (claim, measure, treatment, control, direction, strict).  A claim
# says that treatment − control is below zero (direction −1) or above it (+1).
ORDERINGS = [
    ("final test accuracy: warm start < random init", "final_test_acc", "warm", "random", -1, True),
    ("final test accuracy: shrink_perturb ≥ warm start", "final_test_acc", "shrink_perturb", "warm", 1, False),
    ("optimizer steps: warm start < random init", "total_steps", "warm", "random", -1, True),
    ("optimizer steps: warm start < shrink_perturb", "total_steps", "warm", "shrink_perturb", -1, True),
    ("optimizer steps: shrink_perturb < random init", "total_steps", "shrink_perturb", "random", -1, True),
]
HEATMAP_CLAIM = "λ×σ grid: best final test accuracy at λ < 1 with σ > 0"


@short_named
def claims(frame: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """The paper's claims tested on this table, wherever it holds the trials a claim needs:
    one row per claim and pair of grid points (or per setting for the λ×σ claim).

    Columns: ``claim``, ``setting``, ``treatment``, ``control``, ``measure``, ``effect``
    (treatment − control; for the λ×σ claim, the best mean inside the region − the best
    outside it), ``ci_low``/``ci_high`` (95%), ``interval`` (paired t, Welch t, bootstrap,
    none), ``n_treatment``, ``n_control``, ``pairs`` and ``verdict``: holds, contradicted,
    inconclusive (the interval contains zero) or not enough seeds (engine.analysis.stats.verdict).
    A claim without the trials it needs has no row (``untested_claims`` names it)."""
    keys = grid_columns(frame) if keys is None else list(keys)
    parts = []
    for claim, measure, treatment, control, direction, strict in ORDERINGS:
        rows = contrast(frame, measure, treatment, control, keys)
        if rows.empty:
            continue
        rows.insert(0, "claim", claim)
        rows["verdict"] = [
            stats.verdict(low, high, direction, strict)
            for low, high in zip(rows["ci_low"], rows["ci_high"], strict=True)
        ]
        parts.append(rows)
    heatmap = _heatmap_claim(frame, keys)
    if not heatmap.empty:
        parts.append(heatmap)
    columns = ["claim", "setting", "treatment", "control", "measure", "effect", "ci_low", "ci_high", "interval"]
    columns += ["n_treatment", "n_control", "pairs", "verdict"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat([p[columns] for p in parts], ignore_index=True)


def untested_claims(tested: pd.DataFrame) -> list[str]:
    """The claims ``claims`` could not test on a table (it lacks the trials they compare)."""
    names = [c[0] for c in ORDERINGS] + [HEATMAP_CLAIM]
    return [name for name in names if name not in set(tested["claim"])]


def _heatmap_claim(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per setting with a λ×σ grid (shrink_perturb at ≥ 2 shrink and ≥ 2 perturb values): the best
    grid point inside λ < 1, σ > 0 against the best outside, on final test accuracy.  Every
    grid point with effective λ and σ counts (random init is (0, 1), warm start (1, 0))."""
    init = _init_column(frame)
    if init is None or "shrink" not in frame or "perturb" not in frame:
        return pd.DataFrame()
    trials = _plain(per_trial(frame))
    seed = seed_column(trials)
    settings = [k for k in keys if not is_init(k) and k in trials]
    point_keys = list(dict.fromkeys([k for k in keys if k in trials] + [init, "shrink", "perturb"]))
    rows = []
    for _, part in _group(trials, settings) if settings else [(None, trials)]:
        mixed = part[part[init] == "shrink_perturb"]
        if mixed["shrink"].nunique() < 2 or mixed["perturb"].nunique() < 2:
            continue
        cells = [(c.iloc[0], _by_seed(c, seed, "final_test_acc")) for _, c in _group(part, point_keys)]
        cells = [(p, c) for p, c in cells if pd.notna(p["shrink"]) and pd.notna(p["perturb"])]
        inside = [(p, c) for p, c in cells if p["shrink"] < 1 and p["perturb"] > 0]
        outside = [(p, c) for p, c in cells if not (p["shrink"] < 1 and p["perturb"] > 0)]
        if not inside or not outside:
            continue
        interval = stats.bootstrap_max_gap(
            [list(c.values()) for _, c in inside], [list(c.values()) for _, c in outside]
        )

        def best(group):
            return max(group, key=lambda item: np.nanmean(list(item[1].values())))[0]

        first = part.iloc[0]
        rows.append(
            {
                "claim": HEATMAP_CLAIM,
                "setting": setting_label(first, settings),
                "treatment": f"best inside: λ={best(inside)['shrink']:g}, σ={best(inside)['perturb']:g}",
                "control": f"best outside: λ={best(outside)['shrink']:g}, σ={best(outside)['perturb']:g}",
                "measure": "final_test_acc",
                "effect": interval.effect,
                "ci_low": interval.low,
                "ci_high": interval.high,
                "interval": interval.method,
                "n_treatment": interval.n_treatment,
                "n_control": interval.n_control,
                "pairs": 0,
                "verdict": stats.verdict(interval.low, interval.high, 1, strict=True),
            }
        )
    return pd.DataFrame(rows)
