"""Reading and summarising results tables in pandas.

    from engine import results
    df = results.load("results/quickstart")   # one row per (trial, round)
    trials = results.per_trial(df)            # one row per trial
    rounds = results.by_round(df)             # per grid point and round: mean and std over seeds
    points = results.summary(df)              # per grid point: final accuracy, total train time
    gaps = results.gap_to_random(df)          # each strategy against random init, same settings

A *grid point* is one combination of the config values that vary across the table's
trials, seed excluded (``grid_columns``); the trials that share a grid point are its
seeds.  Means and standard deviations are over those seeds (std with ddof=1, so NaN
for a single seed).
"""

from __future__ import annotations

import pandas as pd
import pyarrow.dataset as pads

from engine.registry import ConfigError
from engine.store import SCHEMA, filesystem

NAME_COLUMNS = ["suite", "dataset", "model", "optimizer", "init", "acquisition", "stop_reason", "device", "bn_stats"]
COUNT_COLUMNS = ["seed", "batch_size", "per_round", "round", "n_labeled", "epochs", "steps", "world_size"]

# The columns that describe what a trial computes, in the order tables show them.
# (suite, trial_id, seed and device are not among them: a grid point pools seeds, and
# the same config on other hardware is the same experiment.)
CONFIG_COLUMNS = [
    "dataset",
    "eval_split",
    "n_pool",
    "n_eval",
    "pretrain_dataset",
    "pretrain_params",
    "model",
    "model_params",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "batch_size",
    "init",
    "shrink",
    "perturb",
    "bn_stats",
    "init_params",
    "acquisition",
    "acquisition_params",
    "per_round",
    "precise_bn",
    "world_size",
]
# Columns that usually follow from others: model_params from model, shrink/perturb from
# init in a random / warm / one shrink-perturb comparison, n_pool from the dataset,
# momentum from the optimizer.  They join a grid point only when they tell apart trials
# that the other varying columns do not (a λ×σ grid, two MLP widths), so that a table
# shows "init, acquisition" and not six columns that say the same thing.
DERIVED = [
    ("shrink", "perturb"),
    ("bn_stats",),
    ("init_params",),
    ("momentum",),
    ("model_params",),
    ("acquisition_params",),
    ("n_pool", "n_eval"),
    ("pretrain_params",),
]
# The columns that say how a round is initialised; "the same settings" for gap_to_random
# is every other config column.
INIT_COLUMNS = ["init", "shrink", "perturb", "bn_stats", "init_params"]
STRATEGY_COLUMNS = INIT_COLUMNS + ["acquisition", "acquisition_params"]
ROUND_METRICS = ("test_acc", "test_loss", "train_acc", "train_seconds", "epochs", "steps")
INIT_ORDER = {"random": 0, "warm": 1, "shrink_perturb": 2}  # how tables and legends list them
ACQUISITION_ORDER = {"random": 0}  # passive first, then active strategies by name


def load(path_or_uri: str) -> pd.DataFrame:
    """The whole results table under ``path_or_uri`` with names as categoricals and counts
    as integers.  A directory without warmstart rows is a clear error, not an empty frame."""
    if not path_or_uri:
        raise ConfigError("No results path given.")
    fs, base = filesystem(path_or_uri)
    try:
        dataset = pads.dataset(base, filesystem=fs, format="parquet")
        table = dataset.to_table()
    except FileNotFoundError:
        raise ConfigError(f"No results at {path_or_uri}: the path does not exist.") from None
    except Exception as exc:  # pyarrow's errors for unreadable files vary by version
        raise ConfigError(f"Cannot read results at {path_or_uri}: {str(exc).splitlines()[0]}") from None
    missing = [name for name in ("trial_id", "round", "test_acc") if name not in table.column_names]
    if table.num_rows == 0:
        raise ConfigError(f"No results at {path_or_uri}: no warmstart rows found.")
    if missing:
        raise ConfigError(f"{path_or_uri} is not a warmstart results table: it lacks the column {missing[0]!r}.")
    frame = table.to_pandas()
    for name in NAME_COLUMNS:
        if name in frame:
            frame[name] = frame[name].astype("category")
    for name in COUNT_COLUMNS:
        if name in frame and frame[name].notna().all():
            frame[name] = frame[name].astype("int64")
    known = [f.name for f in SCHEMA if f.name in frame]
    extra = [c for c in frame.columns if c not in known]
    return frame[known + extra].sort_values(["trial_id", "round"]).reset_index(drop=True)


# --- grid points ----------------------------------------------------------------------


def _varies(column: pd.Series) -> bool:
    return column.nunique(dropna=False) > 1


def _n_points(trials: pd.DataFrame, columns: list[str]) -> int:
    return len(trials[columns].drop_duplicates()) if columns else 1


def grid_columns(frame: pd.DataFrame) -> list[str]:
    """The config columns that make a grid point: those of CONFIG_COLUMNS that vary across
    the trials, seed excluded.  A DERIVED column joins only when it separates trials the
    others do not, so the grid points are the same as with every varying column, named
    with fewer.  ``init`` is always included (it is what the paper varies)."""
    trials = frame.drop_duplicates("trial_id")
    present = [c for c in CONFIG_COLUMNS if c in trials]
    derived = {c for group in DERIVED for c in group}
    chosen = [c for c in present if c not in derived and _varies(trials[c])]
    for group in DERIVED:
        members = [c for c in group if c in present and _varies(trials[c])]
        if members and _n_points(trials, chosen + members) > _n_points(trials, chosen):
            chosen += members
    if "init" in trials and "init" not in chosen:
        chosen.append("init")
    return [c for c in CONFIG_COLUMNS if c in chosen]


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
    order = {"init": INIT_ORDER, "acquisition": ACQUISITION_ORDER}.get(column.name)
    if order is not None:  # random, warm, shrink_perturb, then the others by name
        return column.map(lambda v: f"{order.get(v, len(order))}:{v}")
    return column


def sort_points(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows in reading order: by each key in turn; init as random, warm, shrink_perturb, then
    others, acquisition random (passive) first."""
    keys = [k for k in keys if k in frame]
    if not keys:
        return frame.reset_index(drop=True)
    return frame.sort_values(keys, key=_sort_key, na_position="first", kind="stable").reset_index(drop=True)


# --- summaries --------------------------------------------------------------------------


def per_trial(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its final and mean test accuracy, total train time, epochs and steps,
    and the rounds it completed; the trial's config columns are kept."""
    ordered = frame.sort_values(["trial_id", "round"])
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
    leading = ["suite", "seed", "dataset", "model", "optimizer", "lr", "init", "shrink", "perturb", "acquisition"]
    leading += ["per_round"]
    constant = [c for c in leading + CONFIG_COLUMNS if c in frame]
    firsts = grouped[list(dict.fromkeys(constant))].first()
    return firsts.join(summary).reset_index()


def by_round(frame: pd.DataFrame, keys: list[str] | None = None, metrics=ROUND_METRICS) -> pd.DataFrame:
    """Per grid point and round: ``<metric>_mean`` and ``<metric>_std`` over seeds, and
    ``seeds``, the number of trials that reached the round.  ``keys`` are the grid
    columns (default ``grid_columns(frame)``); ``n_labeled`` sits beside ``round``."""
    frame, keys = _point_keys(frame, keys)
    metrics = [m for m in metrics if m in frame]
    by = keys + ["round"] + (["n_labeled"] if "n_labeled" in frame else [])
    aggregates = {"seeds": ("trial_id", "nunique")}
    for m in metrics:
        aggregates[f"{m}_mean"] = (m, "mean")
        aggregates[f"{m}_std"] = (m, "std")
    table = _plain(_group(frame, by).agg(**aggregates).reset_index())
    return sort_points(table, keys + ["round"])


def summary(frame: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """One row per grid point: ``seeds`` (trials), ``rounds`` (the most any seed ran), final
    and mean-over-rounds test accuracy and total train seconds as ``_mean``/``_std`` over
    seeds, and mean total epochs and optimizer steps."""
    trials = per_trial(frame)
    trials, keys = _point_keys(trials, keys if keys is not None else grid_columns(frame))
    aggregates = {"seeds": ("trial_id", "count"), "rounds": ("rounds", "max")}
    for column, name in [
        ("final_test_acc", "final_test_acc"),
        ("mean_test_acc", "mean_test_acc"),
        ("total_train_seconds", "train_seconds"),
    ]:
        if column in trials:
            aggregates[f"{name}_mean"] = (column, "mean")
            aggregates[f"{name}_std"] = (column, "std")
    for column, name in [("total_epochs", "epochs_mean"), ("total_steps", "steps_mean")]:
        if column in trials:
            aggregates[name] = (column, "mean")
    table = _plain(_group(trials, keys).agg(**aggregates).reset_index())
    return sort_points(table, keys)


def gap_to_random(frame: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """Each non-random grid point against random init with otherwise the same settings
    (every grid column outside INIT_COLUMNS equal): the paper's question.

    Columns: the grid columns, ``seeds``; ``final_test_acc`` and ``mean_test_acc`` (means
    over seeds) with ``random_…`` beside them and ``final_acc_gap`` / ``mean_acc_gap`` =
    strategy − random (positive: better than random init); ``train_seconds`` (mean total)
    with ``random_train_seconds`` and ``train_time_ratio`` = strategy / random (below 1:
    faster), and ``steps_ratio`` likewise for optimizer steps, which do not depend on the
    hardware.  A strategy without a random-init counterpart gets NaN gaps.  ``keys``: the
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
    setting = [k for k in keys if k not in INIT_COLUMNS]
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
