"""The paper's figures and tables from any results table, on one HTML page.

    from engine.analysis.report import write_report
    for line in write_report("results/quickstart"):   # writes results/quickstart/_report/
        print(line)

Every figure is drawn from a frame computed by a function of this module, so what is
plotted can be checked (and reused) without looking at pixels:

    accuracy_curves(df)           test accuracy vs labeled samples, per strategy (Figures 2, 7)
    train_time_curves(df)         train seconds per round vs labeled samples, same grouping
    lambda_sigma_matrices(df, v)  λ × σ matrices of final accuracy / total train time (Figure 8)
    table1(df, metric)            the two-phase table: strategies × model / optimizer (Table 1)

What a table lacks for a figure (no λ×σ grid, no two-phase trials) is skipped with a
one-line note, returned and shown on the page.  Figures are drawn on matplotlib Figure
objects with the Agg canvas, never through pyplot: headless, and the caller's backend
is left alone.
"""

from __future__ import annotations

import html
import io
import math
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from matplotlib import colormaps
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from engine.analysis import results
from engine.analysis.results import CFG, grid_columns, is_strategy
from engine.analysis.tables import (
    CLAIMS_RULE,
    INTERVAL_NOTE,
    NUMBER,
    SUMMARY_INTRO,
    _setting_label,
    _shown_keys,
    _value,
    acquisition_label,
    context,
    format_claims,
    format_gaps,
    init_label,
    label_keys,
    minus,
    point_notes,
    provenance,
    summary_parts,
    summary_text,
    to_markdown,
)
from engine.errors import ConfigError
from engine.storage.store import EPOCHS, filesystem
from engine.storage.uri import normalise
from engine.suite.search import best_point, format_search, read_record, search_table  # a search's points

REPORT_DIR = "_report"  # pyarrow skips names starting with "_": the report never reads as results
MAX_PANELS = 24
MAX_PARETO_PANELS = 6  # settings (rows) in the Pareto figure


# --- the data each figure plots ------------------------------------------------------------


def curves(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per grid point and round, ``mean`` and ``std`` of ``metric`` over seeds against
    ``n_labeled`` (results.by_round), with the ``panel`` (the varying non-strategy
    settings, e.g. dataset or model) and the ``line`` (init and acquisition strategy) each
    row is drawn in.  This frame is exactly what the curve figures plot."""
    varying = grid_columns(frame)
    table = results.by_round(frame, label_keys(frame), metrics=(metric,))
    table = table.rename(columns={f"{metric}_mean": "mean", f"{metric}_std": "std"})
    panels = [c for c in varying if not is_strategy(c)]
    table["panel"] = [_setting_label(row, panels) for _, row in table.iterrows()]
    table["init_label"] = [init_label(row, varying) for _, row in table.iterrows()]
    table["acquisition_label"] = [acquisition_label(row, varying) for _, row in table.iterrows()]
    if any(results.is_acquisition(c) for c in varying):
        table["line"] = table["init_label"] + " · " + table["acquisition_label"]
    else:
        table["line"] = table["init_label"]
    return table


def accuracy_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (mean, std over seeds) per round against labeled samples, per strategy."""
    return curves(frame, "test_acc")


def train_time_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """Train seconds of each round (mean, std over seeds) against labeled samples, per strategy."""
    return curves(frame, "train_seconds")


def lambda_sigma_grid(frame: pd.DataFrame) -> pd.DataFrame:
    """The shrink_perturb trials as a λ × σ grid: per (panel, shrink, perturb) the results.summary
    columns, with ``panel`` naming the other varying settings.  Empty unless the table holds
    shrink_perturb trials with at least two shrink and two perturb values."""
    if "init" not in frame or "shrink" not in frame or "perturb" not in frame:
        return pd.DataFrame()
    mixed = frame[frame["init"] == "shrink_perturb"]
    if mixed.empty or mixed["shrink"].nunique() < 2 or mixed["perturb"].nunique() < 2:
        return pd.DataFrame()
    axes = {"init", "shrink", "perturb", f"{CFG}init.shrink", f"{CFG}init.perturb"}
    panels = [c for c in grid_columns(mixed) if c not in axes]
    table = results.summary(mixed, panels + ["shrink", "perturb"])
    table["panel"] = [_setting_label(row, panels) for _, row in table.iterrows()]
    return table


def lambda_sigma_matrices(frame: pd.DataFrame, value: str = "final_test_acc") -> dict[str, pd.DataFrame]:
    """Per panel, the λ × σ matrix of ``value`` (``final_test_acc``, ``mean_test_acc`` or
    ``train_seconds``: total train time), the mean over seeds: rows shrink λ ascending,
    columns perturb σ ascending, NaN where the grid has no trial.  What Figure 8 plots."""
    grid = lambda_sigma_grid(frame)
    if grid.empty:
        return {}
    matrices = {}
    for panel, part in grid.groupby("panel", sort=False):
        matrix = part.pivot(index="shrink", columns="perturb", values=f"{value}_mean")
        matrices[panel] = matrix.sort_index().sort_index(axis=1)
    return matrices


def two_phase(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of two-phase trials (Table 1): exactly two rounds, the second labelling the
    whole pool (``initial: 0.5, per_round: 0.5``)."""
    needed = {"n_labeled", "n_pool"}
    if not needed <= set(frame.columns):
        return frame.iloc[0:0]
    trials = results.per_trial(frame)
    done = trials[
        (trials["rounds"] == 2)
        & (trials["final_n_labeled"] == trials["n_pool"])
        & (trials["first_n_labeled"] < trials["n_pool"])
    ]
    return frame[frame["trial_id"].isin(done["trial_id"])]


def table1_values(frame: pd.DataFrame) -> pd.DataFrame:
    """Per grid point of the two-phase trials: the second phase's test accuracy and train
    seconds, ``_mean``/``_std`` over seeds, with the ``strategy`` label of its row (rows are
    dataset × strategy) and the ``column`` label (the other varying settings: model,
    optimizer, ...) of Table 1."""
    phases = two_phase(frame)
    if phases.empty:
        return pd.DataFrame()
    varying = grid_columns(phases)
    keys = label_keys(phases)
    if "dataset" in phases and "dataset" not in keys:
        keys = ["dataset", *keys]
    table = results.by_round(phases[phases["round"] == 2], keys, metrics=("test_acc", "train_seconds"))
    table["strategy"] = [
        init_label(row, varying) + (f" · {acquisition_label(row, varying)}" if "acquisition" in varying else "")
        for _, row in table.iterrows()
    ]
    columns = [c for c in varying if not is_strategy(c) and c != "dataset"]
    table["column"] = [" / ".join(_value(row[c]) for c in columns) for _, row in table.iterrows()]
    return table


def table1(frame: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Table 1's layout: a row per (dataset, strategy), a column per model / optimizer (and
    any other varying setting), cells "mean (std)" over seeds of the second phase's
    ``test_acc`` (in %, as the paper) or ``train_seconds``.  Empty without two-phase trials."""
    values = table1_values(frame)
    if values.empty:
        return pd.DataFrame()
    scale, header = (100.0, "test accuracy (%)") if metric == "test_acc" else (1.0, "train seconds")

    def cell(mean: float, std: float) -> str:
        if pd.isna(mean):  # e.g. train seconds of trials that trained stacked: no measurement of their own
            return "–"
        return f"{scale * mean:.1f}" if pd.isna(std) else f"{scale * mean:.1f} ({scale * std:.1f})"

    values["cell"] = [cell(m, s) for m, s in zip(values[f"{metric}_mean"], values[f"{metric}_std"], strict=True)]
    values["column"] = values["column"].replace("", header)
    rows = [c for c in ("dataset",) if c in values] + ["strategy"]
    order = list(dict.fromkeys(values["column"]))
    wide = values.pivot_table(index=rows, columns="column", values="cell", aggfunc="first", sort=False)
    wide = wide[order].fillna("–").reset_index()  # "–": no trials for that cell
    wide.columns.name = None
    return wide


PARETO_AXES = [  # (accuracy, cost) pairs of the Pareto figure, as results.summary names them
    ("final_test_acc", "steps"),
    ("final_test_acc", "train_seconds"),
    ("mean_test_acc", "steps"),
    ("mean_test_acc", "train_seconds"),
]
AXIS_LABELS = {
    "final_test_acc": "final test accuracy (%)",
    "mean_test_acc": "mean test accuracy over rounds (%)",
    "steps": "optimizer steps (total)",
    "train_seconds": "train seconds (total)",
}


def pareto_points(frame: pd.DataFrame) -> pd.DataFrame:
    """Per grid point, what the Pareto figure plots: the results.summary columns (means and
    stds over seeds), ``panel`` (the varying non-strategy settings: strategies compete
    within one), ``label`` (the strategy, as the legends say it) and, for each (accuracy,
    cost) of PARETO_AXES, ``front_<accuracy>_<cost>``: on the non-dominated front of its panel."""
    keys = label_keys(frame)
    varying = grid_columns(frame)
    table = results.summary(frame, keys)
    if table.empty:
        return table
    panels = [c for c in varying if not is_strategy(c)]
    table["panel"] = [_setting_label(row, panels) for _, row in table.iterrows()]
    table["init_label"] = [init_label(row, varying) for _, row in table.iterrows()]
    table["acquisition_label"] = [acquisition_label(row, varying) for _, row in table.iterrows()]
    by_acquisition = any(results.is_acquisition(c) for c in varying)
    table["label"] = table["init_label"] + (" · " + table["acquisition_label"] if by_acquisition else "")
    for accuracy, cost in PARETO_AXES:
        if f"{accuracy}_mean" in table and f"{cost}_mean" in table:
            table[f"front_{accuracy}_{cost}"] = results.front(table, keys, f"{accuracy}_mean", f"{cost}_mean")
    return table


# --- what acquisition did ---------------------------------------------------------------------


def trial_lines(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: ``trial_id``, ``seed``, ``init``, and the ``panel`` and ``line`` (the
    strategy, as the curves' legends say it) it is drawn in, with the line's ``init_label``
    (its colour in every figure) and ``acquisition_label`` (its line style)."""
    varying = grid_columns(frame)
    trials = frame.drop_duplicates("trial_id")
    panels = [c for c in varying if not is_strategy(c)]
    by_acquisition = any(results.is_acquisition(c) for c in varying)
    seed = results.seed_column(trials)
    lines = pd.DataFrame({"trial_id": trials["trial_id"].to_numpy()})
    lines["seed"] = trials[seed].to_numpy() if seed else None
    lines["init"] = trials["init"].astype(object).to_numpy() if "init" in trials else None
    lines["panel"] = [_setting_label(row, panels) for _, row in trials.iterrows()]
    lines["init_label"] = [init_label(row, varying) for _, row in trials.iterrows()]
    lines["acquisition_label"] = [acquisition_label(row, varying) for _, row in trials.iterrows()]
    lines["line"] = lines["init_label"] + (" · " + lines["acquisition_label"] if by_acquisition else "")
    return lines


def acquired_classes(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (panel, line, round, class): ``count``, the mean over seeds of how many of the
    round's picks are of that class (the rows' ``acquired_classes``), and ``seeds``.  Empty
    when no row records its picks' classes (rows written before that column)."""
    if "acquired_classes" not in frame or frame["acquired_classes"].isna().all():
        return pd.DataFrame()
    rows = frame[frame["acquired_classes"].notna()][["trial_id", "round", "acquired_classes"]]
    rows = rows.merge(trial_lines(frame), on="trial_id")
    long = rows.explode("acquired_classes")
    long["class"] = long.groupby(["trial_id", "round"]).cumcount()
    long["count"] = long["acquired_classes"].astype(float)
    keys = ["panel", "line", "round", "class"]
    table = long.groupby(keys, sort=False).agg(
        count=("count", "mean"), seeds=("trial_id", "nunique"), init=("init", "first")
    )
    return _reading_order(table.reset_index())


READING_ORDER = {"random": 0, "warm": 1, "shrink_perturb": 2}  # then any other init


def _reading_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of random init first, then warm start, shrink-perturb, the rest (stable otherwise)."""
    rank = table["init"].map(lambda init: READING_ORDER.get(init, 3))
    return table.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


def jaccard(a, b) -> float:
    """|a ∩ b| / |a ∪ b| of two collections of indices (1 for two empty ones)."""
    a, b = set(map(int, a)), set(map(int, b))
    return len(a & b) / len(a | b) if a | b else 1.0


def acquisition_overlap(frame: pd.DataFrame) -> pd.DataFrame:
    """Per panel, pair of strategies (``a``, ``b``) and round: the Jaccard overlap of the two
    strategies' picks (``acquired``) at the same seed, ``jaccard`` the mean over the seeds
    both ran, and ``seeds``.  Only pairs that differ in one thing, the init or the
    acquisition, in reading order (random init, warm start, shrink-perturb).  Round 1 draws
    the initial set from the seed alone, so two strategies of one seed share it (overlap 1)."""
    if "acquired" not in frame or frame["acquired"].isna().all():
        return pd.DataFrame()
    lines = trial_lines(frame)
    if lines["seed"].isna().all():
        return pd.DataFrame()
    rows = frame[["trial_id", "round", "acquired"]].merge(lines, on="trial_id")
    rows = rows[rows["acquired"].notna() & rows["seed"].notna()]
    rows = _reading_order(rows)
    found: dict[tuple, list[float]] = {}
    for panel, part in rows.groupby("panel", sort=False):
        names = list(dict.fromkeys(part["line"]))[:MAX_OVERLAP_LINES]
        kinds = dict(zip(part["line"], zip(part["init_label"], part["acquisition_label"], strict=True), strict=False))
        # Pairs that differ in one thing, the init or the acquisition: a pair differing in both mixes two effects.
        pairs = [
            (a, b)
            for i, a in enumerate(names)
            for b in names[i + 1 :]
            if kinds[a][0] == kinds[b][0] or kinds[a][1] == kinds[b][1]
        ]
        for (_, round_), same in part.groupby(["seed", "round"], sort=True):
            picked = {line: acquired for line, acquired in zip(same["line"], same["acquired"], strict=True)}
            for a, b in pairs:
                if a in picked and b in picked:
                    found.setdefault((panel, a, b, round_), []).append(jaccard(picked[a], picked[b]))
    table = pd.DataFrame(
        [
            {"panel": p, "a": a, "b": b, "round": r, "jaccard": float(np.mean(v)), "seeds": len(v)}
            for (p, a, b, r), v in found.items()
        ]
    )
    return table.sort_values(["round"], kind="stable").reset_index(drop=True) if not table.empty else table


MAX_OVERLAP_LINES = 8  # strategies per setting whose picks are compared pairwise


def plot_class_histograms(table: pd.DataFrame, title: str) -> Figure:
    """Per strategy (and setting), a round × class grid of the mean count of picks of each
    class, annotated."""
    groups = list(dict.fromkeys(zip(table["panel"], table["line"], strict=True)))[:MAX_PANELS]
    # One panel a row, whatever their number: two a row drew a phone's numbers a few pixels high.
    figure, axes = _grid(len(groups), 5.2, 1.3 + 0.42 * table["round"].nunique(), 1)
    colormap = colormaps["cividis"]
    for ax, (panel, line) in zip(axes, groups, strict=True):
        part = table[(table["panel"] == panel) & (table["line"] == line)]
        matrix = part.pivot(index="round", columns="class", values="count").sort_index()
        values = matrix.to_numpy(dtype=float)
        image = ax.imshow(values, aspect="auto", cmap=colormap, vmin=0)
        ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns], fontsize=8)
        ax.set_yticks(range(matrix.shape[0]), [str(r) for r in matrix.index], fontsize=8)
        ax.set_xlabel("class")
        ax.set_ylabel("round")
        high = np.nanmax(values) if values.size else 0
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                dark = value < 0.5 * high
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_title(f"{line}\n{panel}" if panel else line, fontsize=9)
        del image
    figure.suptitle(title, fontsize=11)
    return figure


# --- within a round: the per-epoch table (eval.epochs_table) ---------------------------------------


def load_epochs(paths: Sequence[str]) -> pd.DataFrame:
    """The per-epoch rows (``<results>/_epochs``, written with ``eval.epochs_table: true``) of
    every results path; empty where none were written."""
    frames = []
    for path in paths:
        fs, base = filesystem(path)
        where = f"{base.rstrip('/')}/{EPOCHS}"
        if fs.get_file_info(where).type == pafs.FileType.Directory:
            frames.append(ds.dataset(where, filesystem=fs, format="parquet").to_table().to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def epoch_curves(frame: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Per (panel, line, round, epoch): ``train_loss``, ``train_acc`` and ``seconds`` (since the
    round's training began), means over the seeds that trained that epoch (``seeds``).  Only
    the trials of ``frame``; empty without per-epoch rows."""
    if epochs.empty:
        return pd.DataFrame()
    rows = epochs.merge(trial_lines(frame), on="trial_id")
    if rows.empty:
        return pd.DataFrame()
    keys = ["panel", "line", "round", "epoch"]
    table = rows.groupby(keys, sort=False).agg(
        train_loss=("train_loss", "mean"),
        train_acc=("train_acc", "mean"),
        seconds=("seconds", "mean"),
        seeds=("trial_id", "nunique"),
        init=("init", "first"),
        init_label=("init_label", "first"),
        acquisition_label=("acquisition_label", "first"),
    )
    return _reading_order(table.reset_index())


SEARCH_METRICS = {"test_acc": "final test acc (%)", "mean_test_acc": "mean test acc over rounds (%)"}
MAX_EPOCH_ROUNDS = 4  # rounds drawn in the within-round figure: the first, the last, evenly between


def plot_epoch_curves(table: pd.DataFrame, title: str) -> Figure:
    """A row per round, train loss (left) and train accuracy (right) against the epoch, a
    line per strategy: how each init converges within a round.  Two panels a row, whatever
    the number of rounds, so the figure stays legible scaled to a phone's width."""
    rounds = sorted(table["round"].unique())
    if len(rounds) > MAX_EPOCH_ROUNDS:
        rounds = [rounds[round(i)] for i in np.linspace(0, len(rounds) - 1, MAX_EPOCH_ROUNDS)]
    lines = table.drop_duplicates("line")
    # As in every other figure: colour by init (λ/σ settings shades of one green), style by acquisition.
    inits = table.drop_duplicates("init_label")
    colors = _colors(list(inits["init_label"]), list(inits["init"]))
    styles = _styles(table["acquisition_label"])
    look = {
        line: (colors[init], styles[acquisition])
        for line, init, acquisition in zip(lines["line"], lines["init_label"], lines["acquisition_label"], strict=True)
    }
    # Wide enough for two legend columns of the longest name (the legend is clipped where wider).
    longest = max(len(str(line)) for line in lines["line"])
    width = max(7.2, min(2, len(lines)) * (0.075 * longest + 0.6))
    legend_rows = math.ceil(len(lines) / 2)
    figure = Figure(figsize=(width, 2.3 * len(rounds) + 0.9 + 0.22 * legend_rows), layout="constrained")
    axes = figure.subplots(len(rounds), 2, squeeze=False, sharex="row")
    handles = {}
    for row, round_ in enumerate(rounds):
        part = table[table["round"] == round_]
        for line in lines["line"]:
            series = part[part["line"] == line].sort_values("epoch")
            if series.empty:
                continue
            color, style = look[line]
            for column, (metric, scale) in enumerate((("train_loss", 1.0), ("train_acc", 100.0))):
                (handle,) = axes[row][column].plot(
                    series["epoch"], scale * series[metric], color=color, linestyle=style, lw=1.5
                )
                handles.setdefault(line, handle)
        axes[row][0].set_ylabel(f"round {round_}\ntrain loss")
        axes[row][1].set_ylabel("train accuracy (%)")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    figure.suptitle(title, fontsize=11)
    figure.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncols=min(2, len(handles)), fontsize=9
    )
    return figure


# --- drawing --------------------------------------------------------------------------------


OKABE_ITO = {  # Okabe & Ito's colour-blind safe palette
    "orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73", "yellow": "#F0E442",
    "blue": "#0072B2", "vermillion": "#D55E00", "reddish purple": "#CC79A7", "black": "#000000",
}  # fmt: skip
INIT_COLORS = {"random": OKABE_ITO["orange"], "warm": OKABE_ITO["blue"], "shrink_perturb": OKABE_ITO["bluish green"]}
OTHER_COLORS = [OKABE_ITO[c] for c in ("vermillion", "reddish purple", "sky blue", "black", "yellow")]


def shades(color: str, count: int) -> list[str]:
    """``count`` shades of one hue, light to dark (one alone: the colour itself)."""
    if count == 1:
        return [color]
    rgb = np.array(to_rgb(color))
    out = []
    for t in np.linspace(-0.55, 0.55, count):  # < 0: towards white, > 0: towards black
        mixed = rgb + (1 - rgb) * -t if t < 0 else rgb * (1 - t)
        out.append(to_hex(np.clip(mixed, 0, 1)))
    return out


def _colors(labels: list[str], inits: list) -> dict[str, object]:
    """Random init orange, warm start blue, shrink-perturb bluish green (its λ/σ settings as
    shades of that green, light to dark in label order), anything else the rest of the
    Okabe–Ito palette: far apart, and told apart with any colour vision."""
    mixes = [label for label, init in zip(labels, inits, strict=True) if init == "shrink_perturb"]
    ramp = dict(zip(mixes, shades(INIT_COLORS["shrink_perturb"], len(mixes)), strict=True))
    others = iter(OTHER_COLORS * 8)
    colors = {}
    for label, init in zip(labels, inits, strict=True):
        colors[label] = ramp[label] if label in ramp else INIT_COLORS.get(init) or next(others)
    return colors


def _styles(acquisitions, looks=("-", "--", ":", "-.")) -> dict[str, str]:
    """A line style (or marker) per acquisition label, the same in every figure of a report
    whatever order its table lists them in: random acquisition first (solid), the rest by name."""
    names = sorted(set(acquisitions), key=lambda name: (not str(name).startswith("random acquisition"), str(name)))
    return dict(zip(names, list(looks) * 8, strict=False))


def _grid(count: int, width: float, height: float, most: int = 3) -> tuple[Figure, list]:
    ncols = min(most, count)
    nrows = math.ceil(count / ncols)
    figure = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    return figure, axes[:count]


def plot_curves(table: pd.DataFrame, title: str, ylabel: str, scale: float = 1.0) -> Figure:
    """One panel per setting, one line per strategy: mean with a ±1 std band over seeds
    (times ``scale``: 100 for accuracy in %).  Colour says the init strategy, line style the
    acquisition strategy."""
    panels = list(dict.fromkeys(table["panel"]))[:MAX_PANELS]
    lines = list(dict.fromkeys(table["line"]))
    inits = table.drop_duplicates("init_label")
    colors = _colors(list(inits["init_label"]), list(inits["init"]) if "init" in inits else [None] * len(inits))
    styles = _styles(table["acquisition_label"])
    single = len(panels) == 1
    figure, axes = _grid(len(panels), 7.5 if single else 5.2, 5.0 if single else 3.8)
    handles = {}
    for ax, panel in zip(axes, panels, strict=True):
        part = table[table["panel"] == panel]
        for line in lines:
            series = part[part["line"] == line].sort_values("n_labeled")
            if series.empty:
                continue
            x, mean, std = series["n_labeled"], scale * series["mean"], scale * series["std"].fillna(0.0)
            color = colors[series["init_label"].iloc[0]]
            style = styles[series["acquisition_label"].iloc[0]]
            (handle,) = ax.plot(x, mean, color=color, linestyle=style, marker="o" if len(x) <= 15 else None, ms=3)
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
            handles.setdefault(line, handle)
        if panel:
            ax.set_title(panel, fontsize=10)
        ax.set_xlabel("labeled samples")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    low, high = table["seeds"].min(), table["seeds"].max()
    seeds = f"n={low}" if low == high else f"n={low}–{high}"
    figure.suptitle(f"{title}\nmean ± 1 std over seeds ({seeds})", fontsize=12)
    figure.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncols=min(2, len(handles)), fontsize=9
    )
    return figure


def plot_heatmaps(matrices: dict[str, pd.DataFrame], title: str, unit: str, digits, cmap: str, refs: dict) -> Figure:
    """One annotated λ × σ heatmap per panel (rows λ, columns σ)."""
    panels = list(matrices)[:MAX_PANELS]
    figure, axes = _grid(len(panels), 5.4, 4.4)
    colormap = colormaps[cmap].with_extremes(bad="0.9")
    for ax, panel in zip(axes, panels, strict=True):
        matrix = matrices[panel]
        image = ax.imshow(matrix.to_numpy(dtype=float), origin="lower", aspect="auto", cmap=colormap)
        ax.set_xticks(range(matrix.shape[1]), [f"{v:g}" for v in matrix.columns])
        ax.set_yticks(range(matrix.shape[0]), [f"{v:g}" for v in matrix.index])
        ax.set_xlabel("perturb σ")
        ax.set_ylabel("shrink λ")
        low, high = image.get_clim()
        for i, row in enumerate(matrix.to_numpy(dtype=float)):
            for j, value in enumerate(row):
                if math.isnan(value):
                    ax.text(j, i, "–", ha="center", va="center", color="0.4")
                    continue
                r, g, b, _ = colormap((value - low) / (high - low) if high > low else 0.5)
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, digits(value), ha="center", va="center", fontsize=9, color="white" if dark else "black")
        figure.colorbar(image, ax=ax, label=unit)
        name = panel or "shrink-perturb"
        ax.set_title(f"{name}\n{refs[panel]}" if refs.get(panel) else name, fontsize=10)
    figure.suptitle(title, fontsize=12)
    return figure


def plot_pareto(table: pd.DataFrame, axes_pairs: list[tuple[str, str]], title: str) -> Figure:
    """Per setting, a panel per (accuracy, cost), two panels a row (narrow enough to read on a
    phone): one point per grid point with ±1 std bars over seeds, accuracy in %; the
    non-dominated front ringed and joined by a step line."""
    panels = list(dict.fromkeys(table["panel"]))[:MAX_PARETO_PANELS]
    inits = table.drop_duplicates("init_label")
    colors = _colors(list(inits["init_label"]), list(inits["init"]) if "init" in inits else [None] * len(inits))
    markers = _styles(table["acquisition_label"], "osD^v<>")
    ncols = min(2, len(axes_pairs))
    per_panel = math.ceil(len(axes_pairs) / ncols)
    figure = Figure(figsize=(4.6 * ncols, 3.6 * per_panel * len(panels) + 1.0), layout="constrained")
    grid = figure.subplots(per_panel * len(panels), ncols, squeeze=False)
    handles = {}
    for p, panel in enumerate(panels):
        part = table[table["panel"] == panel]
        axes = grid[p * per_panel : (p + 1) * per_panel].ravel().tolist()
        for ax in axes[len(axes_pairs) :]:
            ax.set_visible(False)
        for ax, (accuracy, cost) in zip(axes, axes_pairs, strict=False):
            for point in part.itertuples(index=False):
                values = point._asdict()
                x, y = values[f"{cost}_mean"], 100 * values[f"{accuracy}_mean"]
                if pd.isna(x) or pd.isna(y):
                    continue
                xerr = 0.0 if pd.isna(values[f"{cost}_std"]) else values[f"{cost}_std"]
                yerr = 0.0 if pd.isna(values[f"{accuracy}_std"]) else 100 * values[f"{accuracy}_std"]
                color = colors[values["init_label"]]
                drawn = ax.errorbar(
                    x, y, xerr=xerr, yerr=yerr, fmt=markers.get(values["acquisition_label"], "o"), color=color,
                    ms=6, capsize=2, elinewidth=0.8,
                )  # fmt: skip
                handles.setdefault(values["label"], drawn)
            front = part[part[f"front_{accuracy}_{cost}"]].sort_values(f"{cost}_mean")
            fx, fy = front[f"{cost}_mean"], 100 * front[f"{accuracy}_mean"]
            ax.plot(fx, fy, "--", color="0.4", lw=1, drawstyle="steps-post")
            ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="0.2")
            ax.set_xlabel(AXIS_LABELS[cost])
            ax.set_ylabel(AXIS_LABELS[accuracy])
            ax.grid(alpha=0.3)
            if panel:
                ax.set_title(panel, fontsize=10)
    low, high = table["seeds"].min(), table["seeds"].max()
    seeds = f"n={low}" if low == high else f"n={low}–{high}"
    figure.suptitle(f"{title}\nmean ± 1 std over seeds ({seeds}); ringed: the non-dominated front", fontsize=11)
    figure.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncols=min(2, len(handles)), fontsize=9
    )
    return figure


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _accuracy(value: float) -> str:
    return f"{value:.1f}"  # in %


def _random_refs(frame: pd.DataFrame, grid: pd.DataFrame, metric: str, fmt, scale: float = 1.0) -> dict[str, str]:
    """Per heatmap panel, random init's value for the same settings, when there is one."""
    gaps = results.gap_to_random(frame, label_keys(frame))
    if gaps.empty or f"random_{metric}" not in gaps:
        return {}
    gaps = gaps[gaps["init"] == "shrink_perturb"]
    panels = [c for c in grid.columns if c in gaps.columns and c not in ("shrink", "perturb", "init")]
    panels = [c for c in panels if c in results.CONFIG_COLUMNS or c.startswith(CFG)]
    refs = {}
    for panel, part in grid.groupby("panel", sort=False):
        match = gaps.merge(part[panels].drop_duplicates(), on=panels) if panels else gaps
        values = match[f"random_{metric}"].dropna().unique()
        if len(values) == 1:
            unit = " s" if metric == "train_seconds" else " %"
            refs[panel] = f"random init: {fmt(scale * values[0])}{unit}"
    return refs


# --- the report ------------------------------------------------------------------------------


class _Out:
    """Files under the report directory, on local disk or any filesystem pyarrow knows."""

    def __init__(self, out_dir: str) -> None:
        self.fs, self.base = filesystem(out_dir)
        self.uri = "://" in out_dir
        self.out_dir = out_dir.rstrip("/")
        self.fs.create_dir(self.base, recursive=True)
        self.sizes: dict[str, tuple[int, int]] = {}  # a figure's size in CSS pixels (its 1x PNG)

    def write(self, name: str, payload: bytes | str) -> str:
        with self.fs.open_output_stream(f"{self.base}/{name}") as f:
            f.write(payload.encode() if isinstance(payload, str) else payload)
        return f"{self.out_dir}/{name}" if self.uri else os.path.join(self.out_dir, name)

    def figure(self, name: str, figure: Figure) -> str:
        """``name`` at 100 dpi, and ``name@2x`` at 200 dpi for sharp figures on dense screens (srcset)."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        width, height = figure.get_size_inches() * 100
        self.sizes[name] = (round(width), round(height))
        path = self.write(name, buffer.getvalue())
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=200)
        self.write(hidpi(name), buffer.getvalue())
        return path


def hidpi(name: str) -> str:
    """The 2x PNG of a figure: ``accuracy@2x.png`` beside ``accuracy.png``."""
    stem, _, ext = name.rpartition(".")
    return f"{stem}@2x.{ext}"


def default_out(path_or_uri: str) -> str:
    """Where a report goes by default: ``<results>/_report``."""
    return f"{path_or_uri.rstrip('/')}/{REPORT_DIR}"


def _check_out(path_or_uri: str, out_dir: str) -> None:
    """A report inside the results directory must sit under a name pyarrow skips, or the
    next pandas.read_parquet of the results would try to read its PNGs as Parquet; the same
    holds inside any other results folder (folders.enclosing_results_folder)."""
    from engine.storage.folders import enclosing_results_folder
    from engine.storage.object_store import object_store_reason, reach

    try:
        reach(out_dir)  # its first request, retried once: a store that does not answer is named in seconds
        other = enclosing_results_folder(out_dir)
    except OSError as exc:
        raise ConfigError(f"Cannot write the report to {out_dir}: {object_store_reason(exc, out_dir)}.") from None
    if other is not None:
        _check_out_of(other, out_dir)
    _check_out_of(path_or_uri, out_dir)


def _check_out_of(path_or_uri: str, out_dir: str) -> None:
    fs, base = filesystem(path_or_uri)
    out_fs, out = filesystem(out_dir)
    if isinstance(fs, pafs.LocalFileSystem):  # a symbolic link does not hide where the report goes
        base, out = os.path.realpath(base), os.path.realpath(out)
    base = base.rstrip("/")
    if type(fs) is not type(out_fs) or not (out == base or out.startswith(base + "/")):
        return
    first = out[len(base) + 1 :].split("/")[0]
    if not first.startswith(("_", ".")):
        raise ConfigError(
            f"The report directory {out_dir} is inside the results {path_or_uri} under a name that "
            f"pyarrow reads as results; use one starting with '_' (the default: {default_out(path_or_uri)})."
        )


VERDICT_MARKS = {"holds": "✓", "contradicted": "✗", "inconclusive": "?", "not enough seeds": "–"}


def verdict_badge(verdict: str) -> str:
    """A verdict in colour and in words (a mark and the word, for readers who do not see the colour)."""
    css = str(verdict).replace(" ", "-")
    return f'<span class="verdict {css}">{VERDICT_MARKS.get(verdict, "")} {html.escape(str(verdict))}</span>'


def _unbroken(text: str) -> str:
    """What is in parentheses kept on one line: "shrink_perturb(0.6,\u00a00.01)" never wraps
    between its λ and σ."""
    return re.sub(r"\([^()]*\)", lambda m: m.group(0).replace(" ", "\u00a0"), text)


def _html_table(table: pd.DataFrame, badges: str | None = None, css: str = "t") -> str:
    """A table in its own horizontally scrolling box: text columns left-aligned, columns of
    numbers right-aligned and never wrapped (tables.NUMBER decides, as in the Markdown);
    ``badges``: the column of claim verdicts, drawn as verdict_badge."""
    cells = [
        [_value(v) if not (isinstance(v, float) and math.isnan(v)) else "–" for v in row]
        for row in table.itertuples(index=False)
    ]
    numeric = [bool(cells) and all(NUMBER.match(row[i]) for row in cells) for i in range(len(table.columns))]

    def cell(tag: str, text: str, i: int, column) -> str:
        body = verdict_badge(text) if tag == "td" and column == badges else html.escape(_unbroken(text))
        return f'<{tag} class="num">{body}</{tag}>' if numeric[i] else f"<{tag}>{body}</{tag}>"

    head = "".join(cell("th", str(c), i, c) for i, c in enumerate(table.columns))
    rows = "".join(
        "<tr>"
        + "".join(cell("td", text, i, c) for i, (text, c) in enumerate(zip(row, table.columns, strict=True)))
        + "</tr>"
        for row in cells
    )
    return f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _img(name: str, alt: str, size: tuple[int, int] | None = None) -> str:
    """A figure that scales with the page (CSS max-width), sharp on dense screens (srcset)."""
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    source = html.escape(name)
    return (
        f'<p class="figure"><img src="{source}" srcset="{source} 1x, {html.escape(hidpi(name))} 2x"'
        f' alt="{html.escape(alt)}"{dims}></p>'
    )


HEATMAPS = [  # file, summary column, what, colour bar label, cell format, colour map, scale
    ("lambda_sigma_accuracy.png", "final_test_acc", "final test accuracy", "final test accuracy (%)", _accuracy,
     "viridis", 100.0),
    ("lambda_sigma_train_time.png", "train_seconds", "total train time", "total train time (s)", _seconds, "magma_r",
     1.0),
]  # fmt: skip
CURVES = [  # file, metric, title, y label, scale
    ("accuracy.png", "test_acc", "Test accuracy vs labeled samples", "test accuracy (%)", 100.0),
    ("train_time.png", "train_seconds", "Train time per round vs labeled samples", "train time per round (s)", 1.0),
]
# Drawn when some trials trained stacked: their compute, compared by optimizer steps.
STEPS_CURVE = [("steps.png", "steps", "Optimizer steps per round vs labeled samples", "optimizer steps per round", 1.0)]
ACQUIRE_CURVE = (
    "acquire_time.png", "acquire_seconds", "Acquisition time per round vs labeled samples",
    "acquisition time per round (s)", 1.0,
)  # fmt: skip
STACKED_TIMES = (
    "Train times are compared only between grid points whose every trial trained alone: the others trained "
    "stacked in ensembles, and their train_seconds is a share of the ensemble's time by optimizer steps "
    "(train_timing = stacked_share), so their compute is compared by optimizer steps."
)


def _slug(title: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in title.lower()).split())


class _Report:
    """Collects what write_report writes: files, notes, and the page's sections."""

    def __init__(self, frame: pd.DataFrame, out: _Out) -> None:
        self.frame, self.out = frame, out
        self.varying = grid_columns(frame)
        self.where = context(frame)
        self.written: list[str] = []
        self.notes = point_notes(frame)
        self.sections: list[str] = []
        self.outcome = ""  # the outcome in words (HTML), shown above the summary table
        self.stacked = results.any_stacked(frame)  # some train_seconds are shares of a stacked ensemble's time

    def section(self, title: str, body: str, anchor: str | None = None) -> None:
        anchor = anchor or _slug(title)
        self.sections.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>\n')

    def write(self, name: str, payload) -> None:
        self.written.append(
            self.out.figure(name, payload) if isinstance(payload, Figure) else self.out.write(name, payload)
        )

    def img(self, name: str, alt: str) -> str:
        return _img(name, alt, self.out.sizes.get(name))

    def summary(self) -> None:
        """The claims and the outcome first, then the summary per grid point."""
        parts = summary_parts(self.frame)
        self.claims(parts.claims, parts.outcome)
        self.write("summary.csv", parts.table.to_csv(index=False))
        self.write("summary.md", summary_text(self.frame))
        body = self.outcome
        body += f'<p>{SUMMARY_INTRO} (<a href="summary.csv">summary.csv</a>).</p>' + _html_table(parts.shown)
        self.section("Summary per grid point", body, "summary")

    def claims(self, tested: pd.DataFrame, outcome: list[str]) -> None:
        untested = results.untested_claims(tested)
        if untested:
            self.notes.append(f"note: claims not testable on this table (it lacks the trials): {'; '.join(untested)}.")
        body = ""
        if not tested.empty:
            shown = format_claims(tested)
            self.write("claims.csv", tested.to_csv(index=False))
            self.write("claims.md", f"# The paper's claims, checked\n\n{CLAIMS_RULE}\n\n{to_markdown(shown)}")
            brief = shown[
                ["verdict", "claim", "effect", "95% interval", "setting", "seeds"]
            ]  # the effect within a phone's first screen
            if (brief["setting"] == "all").all():
                brief = brief.drop(columns="setting")
            body += _html_table(brief, badges="verdict", css="t claims")
            body += (
                f"<details><summary>Effect: treatment − control over seeds, with its 95% interval; how each claim is "
                f'tested (<a href="claims.csv">claims.csv</a>)</summary>'
                f"<p>{html.escape(CLAIMS_RULE)}</p>{_html_table(shown, badges='verdict')}</details>"
            )
        if outcome:
            items = "".join(f"<li>{html.escape(line)}</li>" for line in outcome)
            self.outcome = (
                f"<p>Against random init with otherwise the same settings ({INTERVAL_NOTE}):</p><ul>{items}</ul>"
            )
        if body:
            self.section("The paper's claims, checked", body, "claims")

    def pareto(self) -> None:
        table = pareto_points(self.frame)
        axes = [
            (acc, cost) for acc, cost in PARETO_AXES if f"{cost}_mean" in table and table[f"{cost}_mean"].notna().any()
        ]
        if table.empty or not axes:
            self.notes.append("note: pareto.png skipped: the table has no optimizer steps or train seconds.")
            return
        title = "Test accuracy against compute" + (f"\n{self.where}" if self.where else "")
        self.write("pareto.png", plot_pareto(table, axes, title))
        text = (
            "One point per grid point (mean over seeds, bars ±1 std), ringed and joined: the non-dominated front "
            "(no other strategy of the same setting has higher accuracy for less compute)."
        )
        if self.stacked:
            text += f" {STACKED_TIMES}"
        self.section("Accuracy against compute", f"<p>{text}</p>" + self.img("pareto.png", "accuracy against compute"))

    def gaps(self) -> None:
        gaps = results.gap_to_random(self.frame, label_keys(self.frame))
        if gaps.empty or gaps["random_seeds"].isna().all():
            self.notes.append(
                "note: gap to random init skipped: no strategy has random-init trials with the same settings."
            )
            return
        self.write("gap_to_random.csv", results.gap_to_random(self.frame).to_csv(index=False))
        intro = (
            "Each strategy against random init with otherwise the same settings: the final test accuracy "
            "difference in percentage points (positive: better than random init) and train time as a multiple "
            "of random init's"
        )
        if self.stacked:
            intro += f" ({STACKED_TIMES} Steps / random compares every grid point.)"
        link = '(<a href="gap_to_random.csv">gap_to_random.csv</a>)'
        self.section("Gap to random init", f"<p>{intro} {link}.</p>" + _html_table(format_gaps(gaps, self.varying)))

    def curves(self, which=None) -> None:
        which = which if which is not None else CURVES + (STEPS_CURVE if self.stacked else [])
        for name, metric, title, ylabel, scale in which:
            missing = [c for c in (metric, "n_labeled") if c not in self.frame or self.frame[c].isna().all()]
            if missing:
                self.notes.append(f"note: {name} skipped: the table has no {missing[0]} values.")
                continue
            table = curves(self.frame, metric)
            table = table[table["mean"].notna()]  # train time: only rounds every seed of a grid point trained alone
            if table.empty:
                self.notes.append(f"note: {name} skipped: no trial trained alone; compare optimizer steps.")
                continue
            if table["panel"].nunique() > MAX_PANELS:
                self.notes.append(f"note: {name} shows the first {MAX_PANELS} of {table['panel'].nunique()} settings.")
            self.write(name, plot_curves(table, f"{title}\n{self.where}" if self.where else title, ylabel, scale))
            said = f"<p>{STACKED_TIMES}</p>" if self.stacked and metric == "train_seconds" else ""
            self.section(title, said + self.img(name, title))

    def acquisition(self) -> None:
        """What acquisition did: the classes of the picks, the overlap of picks between
        strategies, and the time it took."""
        parts = []
        classes = acquired_classes(self.frame)
        if classes.empty:
            self.notes.append(
                "note: acquired_classes.png skipped: the rows do not record their picks' classes (written before "
                "the acquired_classes column)."
            )
        else:
            self.write("acquired_classes.csv", classes.to_csv(index=False))
            low, high = int(classes["seeds"].min()), int(classes["seeds"].max())
            seeds = f"{low}" if low == high else f"{low}–{high}"
            title = f"Classes of each round's picks\n(mean count over {seeds} seeds)"
            self.write("acquired_classes.png", plot_class_histograms(classes, title))
            parts.append(
                "<p>Per strategy and round, how many of the round's picks are of each class, mean over seeds "
                '(round 1: the initial set, drawn at random; <a href="acquired_classes.csv">acquired_classes.csv</a>).'
                "</p>" + self.img("acquired_classes.png", "classes of the acquired samples per strategy and round")
            )
        overlap = self._overlap_part()
        if overlap is not None:
            parts.append(overlap)
        before = len(self.sections)
        self.curves([ACQUIRE_CURVE])
        if len(self.sections) > before:
            parts.append(self.sections.pop().split("</h2>", 1)[1].removesuffix("\n</section>\n"))
        if parts:
            self.section("What acquisition did", "\n".join(parts), "acquisition")

    def _overlap_part(self) -> str | None:
        """The overlap of picks between strategies, as a table of Jaccard indices (and its CSV);
        None, with a note, when no two strategies ran the same seed or the picks are not recorded."""
        overlap = acquisition_overlap(self.frame)
        if overlap.empty:
            recorded = "acquired" in self.frame and self.frame["acquired"].notna().any()
            why = (
                "no two strategies ran the same seed"
                if recorded
                else "the rows do not record their picks (the acquired column)"
            )
            self.notes.append(f"note: overlap of picks between strategies skipped: {why}.")
            return None
        self.write("acquisition_overlap.csv", overlap.to_csv(index=False))
        wide = overlap.pivot_table(
            index=["panel", "a", "b"], columns="round", values="jaccard", aggfunc="first", sort=False
        )
        # Rounds where every pair picked the same samples (round 1: the seed's initial set) are
        # said in words, not as a column of 1.00 that pushes the rounds where strategies part off a phone.
        same = [r for r in wide.columns if (wide[r] == 1.0).all()]
        if 0 < len(same) < len(wide.columns):
            wide = wide.drop(columns=same)
        else:
            same = []
        wide.columns = [f"round {r}" for r in wide.columns]
        wide = wide.map(lambda v: "–" if pd.isna(v) else f"{v:.2f}").reset_index()
        wide["pair"] = wide["a"] + " ↔ " + wide["b"]
        wide = wide[["panel", "pair"] + [c for c in wide.columns if c.startswith("round ")]]
        if (wide["panel"] == "").all():
            wide = wide.drop(columns="panel")
        return (
            "<p>Overlap of the picks of two strategies at the same seed and round: |A ∩ B| / |A ∪ B| (Jaccard), "
            "mean over the seeds both ran; 1: the same samples, 0: none in common "
            '(<a href="acquisition_overlap.csv">acquisition_overlap.csv</a>).'
            + (
                f" Not shown: round{'s' if len(same) > 1 else ''} {', '.join(str(r) for r in same)}, where every "
                "pair picked the same samples (overlap 1)."
                if same
                else ""
            )
            + "</p>"
            + _html_table(wide)
        )

    def epochs(self, epochs: pd.DataFrame) -> None:
        """Within-round training curves, from the per-epoch table, when it was written."""
        table = epoch_curves(self.frame, epochs)
        if table.empty:
            self.notes.append(
                "note: epochs.png skipped: no per-epoch table (run with eval.epochs_table: true to keep one)."
            )
            return
        panels = list(dict.fromkeys(table["panel"]))
        if len(panels) > 1:
            self.notes.append(f"note: epochs.png shows the first of {len(panels)} settings ({panels[0]}).")
            table = table[table["panel"] == panels[0]]
        low, high = int(table["seeds"].min()), int(table["seeds"].max())
        seeds = f"{low}" if low == high else f"{low}–{high}"
        title = f"Within each round: training loss and accuracy per epoch (mean over {seeds} seeds)"
        title += f"\n{panels[0]}" if panels[0] else (f"\n{self.where}" if self.where else "")
        self.write("epochs.csv", table.to_csv(index=False))
        self.write("epochs.png", plot_epoch_curves(table, title))
        text = (
            "Running training loss and accuracy after each epoch of a round, mean over the seeds that trained that "
            "epoch (a seed that converged earlier stops adding to the mean): how fast each init converges within a "
            'round (<a href="epochs.csv">epochs.csv</a>; the table itself: <code>_epochs/</code> beside the rows).'
        )
        self.section("Within a round: training curves", f"<p>{text}</p>" + self.img("epochs.png", title), "epochs")

    def heatmaps(self) -> None:
        grid = lambda_sigma_grid(self.frame)
        if grid.empty:
            self.notes.append(
                "note: λ×σ heatmaps skipped: no shrink_perturb trials with at least two shrink and two perturb values."
            )
            return
        low, high = int(grid["seeds"].min()), int(grid["seeds"].max())
        seeds = f"{low}" if low == high else f"{low}–{high}"
        images = []
        for name, value, title, unit, digits, cmap, scale in HEATMAPS:
            if grid[f"{value}_mean"].isna().all():
                why = f"the table has no {value} values"
                if self.stacked and value == "train_seconds":
                    why = "no shrink_perturb grid point trained alone; compare optimizer steps"
                self.notes.append(f"note: {name} skipped: {why}.")
                continue
            heading = f"Shrink-perturb λ×σ grid: {title} (mean over {seeds} seeds)"
            heading += f"\n{self.where}" if self.where else ""
            refs = _random_refs(self.frame, grid, value, digits, scale)
            matrices = {k: scale * v for k, v in lambda_sigma_matrices(self.frame, value).items()}
            self.write(name, plot_heatmaps(matrices, heading, unit, digits, cmap, refs))
            images.append(self.img(name, title))
        self.section("Shrink-perturb λ×σ grid", "\n".join(images))

    def search(self, path: str) -> None:
        """A search's points (the search record of ``path``: engine.suite.search), where each
        stopped and the best, in the page's units: accuracy in %, sampled values to 4 digits;
        ``search.csv`` and ``search.md`` keep them unrounded."""
        record = read_record(path)
        if not record or not record.get("points"):
            return
        table = search_table(record)
        self.write("search.csv", table.to_csv(index=False))
        text = format_search(record)
        self.write("search.md", "# Search\n\n```\n" + text + "\n```\n")
        metric = record["search"]["metric"]
        name = SEARCH_METRICS.get(metric, metric)

        def value(v) -> str:  # the metric: accuracy in %, a loss as it is
            return "–" if pd.isna(v) else f"{100 * v:.2f}" if metric in SEARCH_METRICS else minus(f"{v:.4f}")

        def sampled(v) -> str:
            return minus(f"{v:.4g}") if isinstance(v, float) else str(v)

        keys = list(next(iter(record["points"].values()))["point"])
        shown = table.drop(columns="point_id").rename(columns={"stopped_by": "stopped by", metric: name})
        for key in keys:
            shown[key] = shown[key].map(sampled)
        shown[name] = shown[name].map(value)
        shown["steps"] = shown["steps"].map(lambda v: f"{int(v):,}")
        body = f'<p>{html.escape(text.splitlines()[0])} (<a href="search.csv">search.csv</a>).</p>'
        body += _html_table(shown)
        best = best_point(record)
        if best is not None:
            where = " ".join(f"{k}={sampled(best[k])}" for k in keys)
            unit = " %" if metric in SEARCH_METRICS else ""
            seeds = f"{best['seeds']} seed" + ("s" if best["seeds"] != 1 else "")
            said = f"best point: {where}: {name.removesuffix(' (%)')} {value(best[metric])}{unit} "
            said += f"({seeds}, {int(best['steps']):,} steps, {best['seconds']:.1f} s)"
            body += f"<p>{html.escape(said)}</p>"
        self.section("Search", body)

    def table1(self) -> None:
        accuracy = table1(self.frame, "test_acc")
        if accuracy.empty:
            self.notes.append(
                "note: Table 1 skipped: no two-phase trials (2 rounds, the second labelling the whole pool)."
            )
            return
        seconds = table1(self.frame, "train_seconds")
        self.write("table1.csv", accuracy.to_csv(index=False))
        self.write("table1_train_seconds.csv", seconds.to_csv(index=False))
        captions = (
            "Test accuracy (%) after the second phase (the whole pool), mean (std) over seeds.",
            "Train seconds of the second phase, mean (std) over seeds"
            + (" (– where a trial trained stacked: its time is a share of an ensemble's)." if self.stacked else "."),
        )
        markdown = "# Table 1: two-phase training\n\n" + f"{captions[0]}\n\n{to_markdown(accuracy)}\n"
        self.write("table1.md", markdown + f"{captions[1]}\n\n{to_markdown(seconds)}")
        body = f"<p>{captions[0]}</p>{_html_table(accuracy)}<p>{captions[1]}</p>{_html_table(seconds)}"
        self.section("Table 1: two-phase training", body)


def write_report(paths: str | Sequence[str], out_dir: str | None = None, refresh: int | None = None) -> list[str]:
    """Write the figures, tables and ``index.html`` for the results under ``paths`` (one path or
    URI, or several read as one table: results.load) into ``out_dir`` (a local path or a
    pyarrow URI; default ``<results>/_report``, which needs a single results path).
    ``refresh``: seconds after which the page reloads itself (``warmstart report --watch``);
    None: a page that stays as it is.

    Returns the paths written, ``index.html`` first, then one line per figure or table the
    results could not support, each starting with ``note:``.  A path without warmstart rows
    raises ConfigError (see results.load), and so does an ``out_dir`` inside the results
    under a name pyarrow would read as results."""
    paths = [normalise(p, "results path") for p in ([paths] if isinstance(paths, str) else list(paths))]
    if out_dir is None:
        if len(paths) != 1:
            raise ConfigError(f"A report of {len(paths)} results paths needs its own directory: pass --out.")
        out_dir = default_out(paths[0])
    frame = results.load(*paths)  # first: a store that does not answer is named reading, in seconds
    for path in paths:
        _check_out(path, out_dir)
    built = _Report(frame, _Out(out_dir))
    with warnings.catch_warnings():  # a seed collision is a note on the page, not a warning per figure
        warnings.simplefilter("ignore", results.SeedCollision)
        built.summary()  # the claims, then the summary per grid point
        built.curves(CURVES[:1])  # accuracy against labeled samples
        built.pareto()
        built.curves(CURVES[1:] + (STEPS_CURVE if built.stacked else []))
        built.epochs(load_epochs(paths))
        built.acquisition()
        built.heatmaps()
        built.table1()
        built.gaps()
    for path in paths:
        built.search(path)
    header = _header(frame, paths, out_dir)
    page = _page(", ".join(paths), frame, built.where, built.notes, built.sections, header, refresh)
    return [built.out.write("index.html", page), *built.written, *built.notes]


def config_locations(frame: pd.DataFrame, paths: Sequence[str], out_dir: str) -> pd.DataFrame:
    """Per grid point (the summary's order and labels): ``seeds`` and ``configs``, the frozen
    config of each of its trials (``_warmstart/<trial_id>/config.yaml``) as (seed, path,
    href): href relative to ``out_dir`` where both are local, else None.  Several results
    paths: the path names ``<results>`` (the folder holding the trial)."""
    keys = label_keys(frame)
    trials = results.per_trial(frame)
    trials, keys = results._point_keys(trials, keys)
    seed = results.seed_column(trials)
    rows = []
    for _, part in results._group(trials, keys):
        first = part.iloc[0]
        configs = []
        for trial in part.sort_values(seed or "trial_id").to_dict("records"):
            trial_id = trial["trial_id"]
            base = paths[0].rstrip("/") if len(paths) == 1 else "<results>"
            path = f"{base}/_warmstart/{trial_id}/config.yaml"
            local = len(paths) == 1 and "://" not in paths[0] and "://" not in out_dir
            href = os.path.relpath(path, out_dir) if local else None
            configs.append((trial[seed] if seed and pd.notna(trial[seed]) else None, path, href))
        rows.append({**{k: first[k] for k in keys}, "seeds": len(part), "configs": configs})
    return results.sort_points(pd.DataFrame(rows), keys)


CONFIG_NOTE = (
    "Each grid point's full config: the frozen config.yaml of each of its trials (one per seed), or the "
    "rows' cfg.* columns (the whole config, flattened)."
)


def _header(frame: pd.DataFrame, paths: Sequence[str], out_dir: str) -> str:
    """What made the rows (dates, versions, machines) and where each grid point's full config is."""
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in provenance(frame))
    points = config_locations(frame, paths, out_dir)
    varying = results.grid_columns(frame)
    shown = _shown_keys(points, varying) if not points.empty else pd.DataFrame()
    lines = []
    for i, (_, point) in enumerate(points.iterrows()):
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in shown.iloc[i]) if not shown.empty else ""
        links = []
        for seed, path, href in point["configs"]:
            label = html.escape(f"seed {seed}" if seed is not None else path.split("/")[-2])  # else the trial id
            links.append(f'<a href="{html.escape(href)}" title="{html.escape(path)}">{label}</a>' if href else label)
        where = " ".join(links)
        if not all(href for _, _, href in point["configs"]):  # not linkable: the first path, the others alike
            where = f"<code>{html.escape(point['configs'][0][1])}</code>"
            where += " (the other seeds: their trial ids)" if point["seeds"] > 1 else ""
        lines.append(f'<tr>{cells}<td class="num">{point["seeds"]}</td><td>{where}</td></tr>')
    head = (
        "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
        + '<th class="num">seeds</th><th>config.yaml</th>'
    )
    table = f'<div class="scroll"><table class="t"><tr>{head}</tr>{"".join(lines)}</table></div>'
    return (
        f'<div class="scroll"><table class="t provenance">{facts}</table></div>\n'
        f"<details><summary>{html.escape(CONFIG_NOTE)}</summary>{table}</details>\n"
    )


STYLE = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 1em; max-width: 1400px; line-height: 1.4; color: #1a1a1a; }
h1 { font-size: 1.5em; margin: 0.2em 0; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
p, li { overflow-wrap: anywhere; }
code { overflow-wrap: anywhere; }
.lead { color: #444; margin-top: 0; }
.scroll { overflow-x: auto; max-width: 100%; margin-bottom: 1em; }
table.t { border-collapse: collapse; font-size: 0.9em; }
table.t th, table.t td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
table.t th { background: #f3f3f3; }
table.t .num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.t th.num { white-space: normal; min-width: 4.5em; }
table.provenance th { text-align: left; }
table.claims td { white-space: nowrap; }
@media (max-width: 600px) { table.claims td:not(.num) { white-space: normal; min-width: 11em; } }
.verdict { display: inline-block; padding: 0.05em 0.5em; border-radius: 0.8em; font-weight: 600; white-space: nowrap; }
.verdict.holds { background: #009E73; color: #fff; }
.verdict.contradicted { background: #D55E00; color: #fff; }
.verdict.inconclusive { background: #e6e6e6; color: #222; border: 1px solid #999; }
.verdict.not-enough-seeds { background: #fff; color: #444; border: 1px dashed #888; }
img { max-width: 100%; height: auto; }
.notes { color: #555; }
.nw { white-space: nowrap; }
details summary { cursor: pointer; color: #333; }
"""


DATE_TIME = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"


def _page(
    path_or_uri: str,
    frame: pd.DataFrame,
    where: str,
    notes: list[str],
    sections: list[str],
    header: str = "",
    refresh: int | None = None,
) -> str:
    suites = ", ".join(sorted({str(s) for s in frame["suite"].dropna()})) if "suite" in frame else ""
    trials = frame["trial_id"].nunique()
    facts = dict(provenance(frame))
    lead = f"{trials} trials, {len(frame)} rounds" + (f" · {html.escape(where)}" if where else "")
    ran = re.sub(DATE_TIME, r'<span class="nw">\g<0></span>', html.escape(facts["rounds ran"]))  # never "2026-⏎12-06"
    lead += f" · ran {ran} · warmstart {html.escape(facts['warmstart'])}"
    noted = "".join(f"<li>{html.escape(n.removeprefix('note: '))}</li>" for n in notes)
    title = f"warmstart report{': ' + html.escape(suites) if suites else ''}"
    reload = f'<meta http-equiv="refresh" content="{int(refresh)}">\n' if refresh else ""
    watching = (
        f'<p class="lead">Rewritten every {int(refresh)} s while <code>warmstart report --watch</code> runs; '
        "this page reloads itself.</p>\n"
        if refresh
        else ""
    )
    about = f'<section id="about"><h2>What made these results</h2>\n{header}</section>\n' if header else ""
    untested = (
        f'<section id="notes"><h2>Not shown, or not testable on this table</h2><ul class="notes">{noted}</ul></section>\n'
        if noted
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{reload}<title>{title}</title>
<style>{STYLE}</style></head><body>
<h1>{title}</h1>
<p class="lead">Results: <code>{html.escape(path_or_uri)}</code> · {lead}</p>
{watching}{"".join(sections)}{about}{untested}</body></html>
"""
