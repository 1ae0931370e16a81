"""Reading and summarising results tables in pandas.

from engine import results
df = results.load("results/quickstart")     # one row per (trial, round)
trials = results.per_trial(df)              # one row per trial
"""

from __future__ import annotations

import pandas as pd
import pyarrow.dataset as pads

from engine.store import SCHEMA, filesystem
from strategies.registry import ConfigError

NAME_COLUMNS = ["suite", "dataset", "model", "optimizer", "init", "acquisition", "stop_reason", "device", "bn_stats"]
COUNT_COLUMNS = ["seed", "batch_size", "per_round", "round", "n_labeled", "epochs", "steps", "world_size"]


def load(path_or_uri: str) -> pd.DataFrame:
    """The whole results table under ``path_or_uri`` with names as categoricals and counts
    as integers.  A directory without warmstart rows is a clear error, not an empty frame."""
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


def per_trial(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its final and mean test accuracy, total train time, epochs and steps,
    and the rounds it completed; the trial's constant columns are kept."""
    ordered = frame.sort_values(["trial_id", "round"])
    grouped = ordered.groupby("trial_id", observed=True, sort=True)
    summary = grouped.agg(
        rounds=("round", "max"),
        final_test_acc=("test_acc", "last"),
        mean_test_acc=("test_acc", "mean"),
        total_train_seconds=("train_seconds", "sum"),
        total_epochs=("epochs", "sum"),
        total_steps=("steps", "sum"),
        final_n_labeled=("n_labeled", "last"),
    )
    constant = [
        c
        for c in (
            "suite",
            "seed",
            "dataset",
            "model",
            "optimizer",
            "lr",
            "init",
            "shrink",
            "perturb",
            "acquisition",
            "per_round",
        )
        if c in frame
    ]
    firsts = grouped[constant].first()
    return firsts.join(summary).reset_index()
