"""The paper's figures and tables from any results table, on one HTML page.

    from engine.report import write_report
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

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from engine import results
from engine.registry import ConfigError
from engine.results import STRATEGY_COLUMNS, grid_columns
from engine.store import filesystem

REPORT_DIR = "_report"  # pyarrow skips names starting with "_": the report never reads as results
MAX_PANELS = 24
BARE = {"dataset", "model", "optimizer"}  # shown as their value alone: "cifar10", not "dataset=cifar10"


# --- labels -----------------------------------------------------------------------------


def _value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _setting_label(row: pd.Series, columns: list[str]) -> str:
    """A grid point's non-strategy values, e.g. "cifar10, resnet18, lr=0.1"."""
    return ", ".join(_value(row[c]) if c in BARE else f"{c}={_value(row[c])}" for c in columns)


def init_label(row: pd.Series, varying: list[str] = ()) -> str:
    """How a strategy's rounds start, as a legend says it: "warm start", "shrink-perturb λ=0.4, σ=0.1"."""
    init = row.get("init")
    if init == "random":
        text = "random init"
    elif init == "warm":
        text = "warm start"
    elif init == "shrink_perturb" and "shrink" in row and "perturb" in row:
        text = f"shrink-perturb λ={_value(row['shrink'])}, σ={_value(row['perturb'])}"
        if "bn_stats" in varying:
            text += f", BN {_value(row.get('bn_stats'))}"
    else:
        text = _value(init)
        if "init_params" in varying and row.get("init_params") not in (None, "{}"):
            text += f" {row['init_params']}"
    return text


def acquisition_label(row: pd.Series, varying: list[str] = ()) -> str:
    text = f"{_value(row.get('acquisition'))} acquisition"
    if "acquisition_params" in varying and row.get("acquisition_params") not in (None, "{}"):
        text += f" {row['acquisition_params']}"
    return text


def context(frame: pd.DataFrame) -> str:
    """What every trial of the table shares, for a figure's title: "digits · mlp · adam lr=0.001"."""
    trials = frame.drop_duplicates("trial_id")
    parts = []
    for column in ("dataset", "model", "optimizer"):
        if column in trials and trials[column].nunique(dropna=False) == 1:
            parts.append(_value(trials[column].iloc[0]))
    if parts and "lr" in trials and trials["lr"].nunique() == 1 and "optimizer" in trials:
        parts[-1] += f" lr={_value(trials['lr'].iloc[0])}"
    if "acquisition" in trials and trials["acquisition"].nunique(dropna=False) == 1:
        parts.append(f"{_value(trials['acquisition'].iloc[0])} acquisition")
    return " · ".join(parts)


def label_keys(frame: pd.DataFrame) -> list[str]:
    """The grid columns plus the strategy columns that do not vary within a grid point: they
    never split a grid point (grid_columns' guarantee) but name it, e.g. λ and σ of the one
    shrink-perturb setting of a random / warm / shrink-perturb comparison."""
    varying = grid_columns(frame)
    return varying + [c for c in STRATEGY_COLUMNS if c in frame and c not in varying]


# --- the data each figure plots ------------------------------------------------------------


def curves(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per grid point and round, ``mean`` and ``std`` of ``metric`` over seeds against
    ``n_labeled`` (results.by_round), with the ``panel`` (the varying non-strategy
    settings, e.g. dataset or model) and the ``line`` (init and acquisition strategy) each
    row is drawn in.  This frame is exactly what the curve figures plot."""
    varying = grid_columns(frame)
    table = results.by_round(frame, label_keys(frame), metrics=(metric,))
    table = table.rename(columns={f"{metric}_mean": "mean", f"{metric}_std": "std"})
    panels = [c for c in varying if c not in STRATEGY_COLUMNS]
    table["panel"] = [_setting_label(row, panels) for _, row in table.iterrows()]
    table["init_label"] = [init_label(row, varying) for _, row in table.iterrows()]
    table["acquisition_label"] = [acquisition_label(row, varying) for _, row in table.iterrows()]
    if "acquisition" in varying or "acquisition_params" in varying:
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
    panels = [c for c in grid_columns(mixed) if c not in ("init", "shrink", "perturb", "init_params")]
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
    columns = [c for c in varying if c not in STRATEGY_COLUMNS and c != "dataset"]
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
        return f"{scale * mean:.1f}" if pd.isna(std) else f"{scale * mean:.1f} ({scale * std:.1f})"

    values["cell"] = [cell(m, s) for m, s in zip(values[f"{metric}_mean"], values[f"{metric}_std"], strict=True)]
    values["column"] = values["column"].replace("", header)
    rows = [c for c in ("dataset",) if c in values] + ["strategy"]
    order = list(dict.fromkeys(values["column"]))
    wide = values.pivot_table(index=rows, columns="column", values="cell", aggfunc="first", sort=False)
    wide = wide[order].fillna("–").reset_index()  # "–": no trials for that cell
    wide.columns.name = None
    return wide


# --- drawing --------------------------------------------------------------------------------


def _colors(labels: list[str], inits: list) -> dict[str, object]:
    """random black, warm red, shrink-perturb settings along viridis, anything else tab10."""
    mixes = [label for label, init in zip(labels, inits, strict=True) if init == "shrink_perturb"]
    others = iter(["tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"] * 4)
    ramp = colormaps["viridis"]
    colors = {}
    for label, init in zip(labels, inits, strict=True):
        if init == "random":
            colors[label] = "black"
        elif init == "warm":
            colors[label] = "tab:red"
        elif init == "shrink_perturb":
            i = mixes.index(label)
            colors[label] = ramp(0.85 * i / max(1, len(mixes) - 1))
        else:
            colors[label] = next(others)
    return colors


def _grid(count: int, width: float, height: float) -> tuple[Figure, list]:
    ncols = min(3, count)
    nrows = math.ceil(count / ncols)
    figure = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    return figure, axes[:count]


def plot_curves(table: pd.DataFrame, title: str, ylabel: str) -> Figure:
    """One panel per setting, one line per strategy: mean with a ±1 std band over seeds.
    Colour says the init strategy, line style the acquisition strategy."""
    panels = list(dict.fromkeys(table["panel"]))[:MAX_PANELS]
    lines = list(dict.fromkeys(table["line"]))
    inits = table.drop_duplicates("init_label")
    colors = _colors(list(inits["init_label"]), list(inits["init"]) if "init" in inits else [None] * len(inits))
    styles = dict(zip(dict.fromkeys(table["acquisition_label"]), ["-", "--", ":", "-."] * 4, strict=False))
    single = len(panels) == 1
    figure, axes = _grid(len(panels), 7.5 if single else 5.2, 5.0 if single else 3.8)
    handles = {}
    for ax, panel in zip(axes, panels, strict=True):
        part = table[table["panel"] == panel]
        for line in lines:
            series = part[part["line"] == line].sort_values("n_labeled")
            if series.empty:
                continue
            x, mean, std = series["n_labeled"], series["mean"], series["std"].fillna(0.0)
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


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _accuracy(value: float) -> str:
    return f"{value:.3f}"


def _random_refs(frame: pd.DataFrame, grid: pd.DataFrame, metric: str, fmt) -> dict[str, str]:
    """Per heatmap panel, random init's value for the same settings, when there is one."""
    gaps = results.gap_to_random(frame, label_keys(frame))
    if gaps.empty or f"random_{metric}" not in gaps:
        return {}
    gaps = gaps[gaps["init"] == "shrink_perturb"]
    panels = [c for c in grid.columns if c in gaps.columns and c not in ("shrink", "perturb", "init")]
    panels = [c for c in panels if c in results.CONFIG_COLUMNS]
    refs = {}
    for panel, part in grid.groupby("panel", sort=False):
        match = gaps.merge(part[panels].drop_duplicates(), on=panels) if panels else gaps
        values = match[f"random_{metric}"].dropna().unique()
        if len(values) == 1:
            unit = " s" if metric == "train_seconds" else ""
            refs[panel] = f"random init: {fmt(values[0])}{unit}"
    return refs


# --- tables as text -------------------------------------------------------------------------


def _pm(mean: pd.Series, std: pd.Series, digits: int) -> list[str]:
    return [
        "–" if pd.isna(m) else f"{m:.{digits}f}" if pd.isna(s) else f"{m:.{digits}f} ± {s:.{digits}f}"
        for m, s in zip(mean, std, strict=True)
    ]


def _shown_keys(table: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """The grid columns of a summary as text; ``init`` as its legend label (with λ and σ)
    unless shrink and perturb have columns of their own."""
    keys = [c for c in varying if c in table] or [c for c in ("point",) if c in table]
    shown = pd.DataFrame({c: table[c].map(_value) for c in keys})
    if "init" in shown and not {"shrink", "perturb"} & set(varying):
        shown["init"] = [init_label(row, varying) for _, row in table.iterrows()]
    return shown


def format_summary(table: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """results.summary as text columns, mean ± std over seeds; ``varying``: its grid columns."""
    shown = _shown_keys(table, varying)
    shown["seeds"] = table["seeds"]
    shown["rounds"] = table["rounds"]
    for name, label, digits in [
        ("final_test_acc", "final test acc", 4),
        ("mean_test_acc", "mean test acc over rounds", 4),
        ("train_seconds", "total train time (s)", 1),
    ]:
        if f"{name}_mean" in table:
            shown[label] = _pm(table[f"{name}_mean"], table[f"{name}_std"], digits)
    if "steps_mean" in table:
        shown["optimizer steps"] = table["steps_mean"].round().astype("Int64")
    return shown


def format_gaps(gaps: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """results.gap_to_random as text columns; ``varying``: its grid columns."""
    shown = _shown_keys(gaps, varying)
    shown["seeds"] = gaps["seeds"]
    for column, label, fmt in [
        ("final_test_acc", "final test acc", "{:.4f}"),
        ("random_final_test_acc", "random init", "{:.4f}"),
        ("final_acc_gap", "gap", "{:+.4f}"),
        ("mean_acc_gap", "gap, mean over rounds", "{:+.4f}"),
        ("train_time_ratio", "train time / random", "{:.2f}×"),
        ("steps_ratio", "steps / random", "{:.2f}×"),
    ]:
        if column in gaps:
            shown[label] = [("–" if pd.isna(v) else fmt.format(v)) for v in gaps[column]]
    return shown


def to_markdown(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        return _value(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# --- the report ------------------------------------------------------------------------------


class _Out:
    """Files under the report directory, on local disk or any filesystem pyarrow knows."""

    def __init__(self, out_dir: str) -> None:
        self.fs, self.base = filesystem(out_dir)
        self.uri = "://" in out_dir
        self.out_dir = out_dir.rstrip("/")
        self.fs.create_dir(self.base, recursive=True)

    def write(self, name: str, payload: bytes | str) -> str:
        with self.fs.open_output_stream(f"{self.base}/{name}") as f:
            f.write(payload.encode() if isinstance(payload, str) else payload)
        return f"{self.out_dir}/{name}" if self.uri else os.path.join(self.out_dir, name)

    def figure(self, name: str, figure: Figure) -> str:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        return self.write(name, buffer.getvalue())


def default_out(path_or_uri: str) -> str:
    """Where a report goes by default: ``<results>/_report``."""
    return f"{path_or_uri.rstrip('/')}/{REPORT_DIR}"


def _check_out(path_or_uri: str, out_dir: str) -> None:
    """A report inside the results directory must sit under a name pyarrow skips, or the
    next pandas.read_parquet of the results would try to read its PNGs as Parquet."""
    fs, base = filesystem(path_or_uri)
    out_fs, out = filesystem(out_dir)
    if type(fs) is not type(out_fs) or not out.startswith(base.rstrip("/") + "/"):
        return
    first = out[len(base.rstrip("/")) + 1 :].split("/")[0]
    if not first.startswith(("_", ".")):
        raise ConfigError(
            f"The report directory {out_dir} is inside the results {path_or_uri} under a name that "
            f"pyarrow reads as results; use one starting with '_' (the default: {default_out(path_or_uri)})."
        )


def point_notes(frame: pd.DataFrame) -> list[str]:
    """Notes on grid points the table cannot describe fully: trials that share a grid point and
    a seed (the table lacks what tells them apart), and trials with fewer rounds than the rest."""
    notes = []
    trials = results.per_trial(frame)
    keys = grid_columns(frame)
    if not keys or "seed" not in trials:
        return notes
    grouped = trials.groupby(keys, dropna=False, observed=True, sort=False)
    shared = int(grouped["seed"].agg(lambda s: s.duplicated().any()).sum())
    if shared:
        notes.append(
            f"note: {shared} grid point(s) hold several trials with the same seed; the table does not record "
            "what tells them apart (e.g. convergence or rounds.initial), so they are pooled as seeds."
        )
    short = int((trials["rounds"] < grouped["rounds"].transform("max")).sum())
    if short:
        notes.append(
            f"note: {short} trial(s) ran fewer rounds than the others of their grid point (unfinished or "
            "failed); their final values are at fewer labeled samples."
        )
    return notes


def _html_table(table: pd.DataFrame) -> str:
    return table.to_html(index=False, na_rep="–", border=0, classes="t")


def _img(name: str, alt: str) -> str:
    return f'<p><img src="{html.escape(name)}" alt="{html.escape(alt)}"></p>'


HEATMAPS = [  # file, summary column, what, colour bar label, cell format, colour map
    ("lambda_sigma_accuracy.png", "final_test_acc", "final test accuracy", "final test accuracy", _accuracy, "viridis"),
    ("lambda_sigma_train_time.png", "train_seconds", "total train time", "total train time (s)", _seconds, "magma_r"),
]
CURVES = [  # file, metric, title, y label
    ("accuracy.png", "test_acc", "Test accuracy vs labeled samples", "test accuracy"),
    ("train_time.png", "train_seconds", "Train time per round vs labeled samples", "train time per round (s)"),
]


class _Report:
    """Collects what write_report writes: files, notes, and the page's sections."""

    def __init__(self, frame: pd.DataFrame, out: _Out) -> None:
        self.frame, self.out = frame, out
        self.varying = grid_columns(frame)
        self.where = context(frame)
        self.written: list[str] = []
        self.notes = point_notes(frame)
        self.sections: list[str] = []

    def section(self, title: str, body: str) -> None:
        self.sections.append(f"<h2>{html.escape(title)}</h2>\n{body}\n")

    def write(self, name: str, payload) -> None:
        self.written.append(
            self.out.figure(name, payload) if isinstance(payload, Figure) else self.out.write(name, payload)
        )

    def summary(self) -> None:
        self.write("summary.csv", results.summary(self.frame).to_csv(index=False))
        shown = format_summary(results.summary(self.frame, label_keys(self.frame)), self.varying)
        self.write("summary.md", "# Summary per grid point\n\n" + to_markdown(shown))
        intro = "Final and mean-over-rounds test accuracy and total train time, mean ± std over seeds"
        self.section(
            "Summary per grid point", f'<p>{intro} (<a href="summary.csv">summary.csv</a>).</p>' + _html_table(shown)
        )

    def gaps(self) -> None:
        gaps = results.gap_to_random(self.frame, label_keys(self.frame))
        if gaps.empty or gaps["random_seeds"].isna().all():
            self.notes.append(
                "note: gap to random init skipped: no strategy has random-init trials with the same settings."
            )
            return
        self.write("gap_to_random.csv", results.gap_to_random(self.frame).to_csv(index=False))
        intro = (
            "Each strategy against random init with otherwise the same settings: the accuracy difference "
            "(positive: better than random init) and train time as a multiple of random init's"
        )
        link = '(<a href="gap_to_random.csv">gap_to_random.csv</a>)'
        self.section("Gap to random init", f"<p>{intro} {link}.</p>" + _html_table(format_gaps(gaps, self.varying)))

    def curves(self) -> None:
        for name, metric, title, ylabel in CURVES:
            missing = [c for c in (metric, "n_labeled") if c not in self.frame or self.frame[c].isna().all()]
            if missing:
                self.notes.append(f"note: {name} skipped: the table has no {missing[0]} values.")
                continue
            table = curves(self.frame, metric)
            if table["panel"].nunique() > MAX_PANELS:
                self.notes.append(f"note: {name} shows the first {MAX_PANELS} of {table['panel'].nunique()} settings.")
            self.write(name, plot_curves(table, f"{title}\n{self.where}" if self.where else title, ylabel))
            self.section(title, _img(name, title))

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
        for name, value, title, unit, digits, cmap in HEATMAPS:
            if grid[f"{value}_mean"].isna().all():
                self.notes.append(f"note: {name} skipped: the table has no {value} values.")
                continue
            heading = f"Shrink-perturb λ×σ grid: {title} (mean over {seeds} seeds)"
            heading += f"\n{self.where}" if self.where else ""
            refs = _random_refs(self.frame, grid, value, digits)
            self.write(name, plot_heatmaps(lambda_sigma_matrices(self.frame, value), heading, unit, digits, cmap, refs))
            images.append(_img(name, title))
        self.section("Shrink-perturb λ×σ grid", "\n".join(images))

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
            "Train seconds of the second phase, mean (std) over seeds.",
        )
        markdown = "# Table 1: two-phase training\n\n" + f"{captions[0]}\n\n{to_markdown(accuracy)}\n"
        self.write("table1.md", markdown + f"{captions[1]}\n\n{to_markdown(seconds)}")
        body = f"<p>{captions[0]}</p>{_html_table(accuracy)}<p>{captions[1]}</p>{_html_table(seconds)}"
        self.section("Table 1: two-phase training", body)


def write_report(path_or_uri: str, out_dir: str | None = None) -> list[str]:
    """Write the figures, tables and ``index.html`` for the results under ``path_or_uri``
    into ``out_dir`` (default ``<results>/_report``; a local path or a pyarrow URI).

    Returns the paths written, ``index.html`` first, then one line per figure or table the
    results could not support, each starting with ``note:``.  A path without warmstart rows
    raises ConfigError (see results.load), and so does an ``out_dir`` inside the results
    under a name pyarrow would read as results."""
    out_dir = out_dir or default_out(path_or_uri)
    _check_out(path_or_uri, out_dir)
    frame = results.load(path_or_uri)
    built = _Report(frame, _Out(out_dir))
    built.summary()
    built.gaps()
    built.curves()
    built.heatmaps()
    built.table1()
    from engine.search import report_section  # the search's points, where each stopped, the best

    report_section(path_or_uri, built)
    page = _page(path_or_uri, frame, built.where, built.notes, built.sections)
    return [built.out.write("index.html", page), *built.written, *built.notes]


def _page(path_or_uri: str, frame: pd.DataFrame, where: str, notes: list[str], sections: list[str]) -> str:
    suites = ", ".join(sorted({str(s) for s in frame["suite"].dropna()})) if "suite" in frame else ""
    trials = frame["trial_id"].nunique()
    facts = f"{trials} trials, {len(frame)} rounds" + (f" · {html.escape(where)}" if where else "")
    noted = "".join(f"<li>{html.escape(n.removeprefix('note: '))}</li>" for n in notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>warmstart report{": " + html.escape(suites) if suites else ""}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }}
table.t {{ border-collapse: collapse; font-size: 0.9em; margin-bottom: 1em; }}
table.t th, table.t td {{ padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }}
table.t th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
.notes {{ color: #555; }}
</style></head><body>
<h1>warmstart report{": " + html.escape(suites) if suites else ""}</h1>
<p>Results: <code>{html.escape(path_or_uri)}</code> · {facts}</p>
{f'<ul class="notes">{noted}</ul>' if noted else ""}
{"".join(sections)}
</body></html>
"""
