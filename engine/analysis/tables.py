"""What the report says in text: labels, the summary table, the outcome in words, the
claims table, and notes on what a table cannot tell.

``summary_text(frame)`` is what ``report`` writes to ``summary.md`` and what
``warmstart suite``/``quickstart`` print at their end: the same function, so the
terminal and the report cannot disagree.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.analysis import results
from engine.analysis.results import CFG, STRATEGY_COLUMNS, grid_columns, short_named
from engine.schema.config import strategy_label

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
    return ", ".join(_value(row[c]) if c in BARE else f"{_name(c)}={_value(row[c])}" for c in columns)


def _name(column: str) -> str:
    """A column as a table header or label says it: ``rounds.max_rounds`` for ``cfg.rounds.max_rounds``."""
    return column.removeprefix(CFG)


STRATEGY_NAMES = {"random": "random init", "warm": "warm start"}  # the rest: results.strategy_label as it is


def strategy_name(label: str) -> str:
    """A results.strategy_label as every table, legend and console line says it: "random init",
    "warm start", "shrink_perturb(0.6, 0.01)"."""
    return STRATEGY_NAMES.get(str(label), str(label))


def init_label(row: pd.Series, varying: list[str] = ()) -> str:
    """How a strategy's rounds start, as a legend says it: "warm start", "shrink_perturb(0.4, 0.1)"
    (λ, σ), with any other varying init column, e.g. "shrink_perturb(0.4, 0.1, bn_stats=keep)".
    The one name of a strategy: the report's tables, figures and the console all use it."""
    return strategy_name(results.strategy_label(row, varying))


def minus(text: str) -> str:
    """Numbers in text with the minus sign (U+2212), as every table of the report writes them."""
    return text.replace("-", "\u2212")


def acquisition_label(row: pd.Series, varying: list[str] = ()) -> str:
    """How a grid point picks its samples: "margin acquisition", with any varying parameter of it,
    e.g. "badge(embedding=penultimate) acquisition"."""
    prefix = f"{CFG}acquisition."
    params = {c.removeprefix(prefix): row[c] for c in varying if c.startswith(prefix) and c != f"{prefix}name"}
    return f"{strategy_label(_value(row.get('acquisition')), params)} acquisition"


@short_named
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


@short_named
def label_keys(frame: pd.DataFrame) -> list[str]:
    """The grid columns plus the strategy columns that do not vary within a grid point: they
    never split a grid point (grid_columns' guarantee) but name it, e.g. λ and σ of the one
    shrink-perturb setting of a random / warm / shrink-perturb comparison."""
    varying = grid_columns(frame)
    return varying + [c for c in STRATEGY_COLUMNS if c in frame and c not in varying]


# --- tables as text -------------------------------------------------------------------------


def _pm(mean: pd.Series, std: pd.Series, digits: int, scale: float = 1.0) -> list[str]:
    return [
        "–"
        if pd.isna(m)
        else minus(f"{scale * m:,.{digits}f}" if pd.isna(s) else f"{scale * m:,.{digits}f} ± {scale * s:,.{digits}f}")
        for m, s in zip(mean, std, strict=True)
    ]


def _shown_keys(table: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """The grid columns of a summary as text; ``init`` as its legend label (with λ and σ)
    unless shrink and perturb have columns of their own."""
    keys = [c for c in varying if c in table] or [c for c in ("point",) if c in table]
    shown = pd.DataFrame({c: table[c].map(_value) for c in keys})
    if "init" in shown and not {"shrink", "perturb"} & set(varying):
        shown["init"] = [init_label(row, varying) for _, row in table.iterrows()]
    return shown.rename(columns=_name)


def format_summary(table: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """results.summary as text columns, mean ± std over seeds; ``varying``: its grid columns."""
    shown = _shown_keys(table, varying)
    shown["seeds"] = table["seeds"]
    shown["rounds"] = table["rounds"]
    for name, label, digits, scale in [
        ("final_test_acc", "final test acc (%)", 2, 100.0),
        ("mean_test_acc", "mean test acc over rounds (%)", 2, 100.0),
        ("train_seconds", "total train time (s)", 1, 1.0),
        ("steps", "optimizer steps", 0, 1.0),
    ]:
        if f"{name}_mean" in table:
            std = table[f"{name}_std"] if f"{name}_std" in table else pd.Series(np.nan, index=table.index)
            shown[label] = _pm(table[f"{name}_mean"], std, digits, scale)
    if "train_timing" in table and (table["train_timing"] != results.ALONE).any():
        shown["trained"] = table["train_timing"].map(TRAINED).fillna(table["train_timing"])
    for flag, label in [("pareto_steps", "front (steps)"), ("pareto_seconds", "front (time)")]:
        if flag in table:
            shown[label] = ["✓" if on else "" for on in table[flag]]
    return shown


TRAINED = {"alone": "alone", "stacked_share": "stacked", "mixed": "partly stacked"}  # train_timing, as tables say it


def format_gaps(gaps: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """results.gap_to_random as text columns; ``varying``: its grid columns."""
    shown = _shown_keys(gaps, varying)
    shown["seeds"] = gaps["seeds"]
    for column, label, fmt, scale in [
        ("final_test_acc", "final test acc (%)", "{:.2f}", 100.0),
        ("random_final_test_acc", "random init (%)", "{:.2f}", 100.0),
        ("final_acc_gap", "gap (pts)", "{:+.2f}", 100.0),
        ("mean_acc_gap", "gap, mean over rounds (pts)", "{:+.2f}", 100.0),
        ("train_time_ratio", "train time / random", "{:.2f}×", 1.0),
        ("steps_ratio", "steps / random", "{:.2f}×", 1.0),
    ]:
        if column in gaps:
            shown[label] = [("–" if pd.isna(v) else minus(fmt.format(scale * v))) for v in gaps[column]]
    return shown


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown table padded to aligned columns (numbers to the right), so the same text
    reads well in a terminal and renders as a table."""

    def cell(value) -> str:
        return _value(value).replace("|", "\\|")

    header = [cell(c) for c in table.columns]
    rows = [[cell(v) for v in row] for row in table.itertuples(index=False)]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    right = [bool(rows) and all(NUMBER.match(r[i]) for r in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right, strict=True))
    return "\n".join([line(header), rule + "|", *(line(r) for r in rows)]) + "\n"


NUMBER = re.compile(r"^([-+−]?[\d.]|–$|✓$|$)")  # a number, "–" (none) or a mark: right-aligned


@short_named
def point_notes(frame: pd.DataFrame, keys: list[str] | None = None) -> list[str]:
    """Notes on grid points the table cannot describe fully: trials that share a grid point and
    a seed (results.seed_collisions: the table lacks what tells them apart), and trials with
    fewer rounds than the rest of their grid point."""
    keys = grid_columns(frame) if keys is None else keys
    notes = []
    timing = results.timing_note(frame)
    if timing:
        notes.append(f"note: {timing}")
    collided = results.collision_note(results.seed_collisions(frame, keys))
    if collided:
        notes.append(f"note: {collided}")
    trials = results.per_trial(frame)
    most = (
        trials.groupby(keys, dropna=False, observed=True)["rounds"].transform("max") if keys else trials["rounds"].max()
    )
    short = int((trials["rounds"] < most).sum())
    if short:
        notes.append(
            f"note: {short} trial(s) ran fewer rounds than the others of their grid point (unfinished or "
            "failed); their final values are at fewer labeled samples."
        )
    return notes


# --- the outcome and the claims in words ------------------------------------------------------

INTERVAL_NOTE = "± is half the 95% t-interval over seeds, paired by seed where the two share seeds"
CLAIMS_RULE = (
    "Each claim is tested on every pair of grid points it compares (same settings otherwise): the effect is "
    "treatment − control over seeds with its 95% interval (paired t-interval on the per-seed differences "
    "when the two share at least two seeds, Welch's t-interval otherwise; for the λ×σ claim, a bootstrap "
    "over seeds of best-inside − best-outside). Verdict: holds when the whole interval lies on the side the "
    "claim states (for ≥, touching zero is enough), contradicted when the whole interval lies on the other "
    "side, inconclusive when it contains zero, not enough seeds when a side has fewer than 2 seeds."
)


CLAIMS_SHORT = (
    "Treatment − control over seeds with a 95% interval: holds / contradicted when the interval lies wholly "
    "on the claim's / the other side of zero, inconclusive when it contains zero."
)


def _points(value: float) -> str:
    return "–" if pd.isna(value) else minus(f"{100 * value:+.1f}")


@short_named
def outcome_lines(frame: pd.DataFrame, keys: list[str] | None = None) -> list[str]:
    """The outcome stated in words, one line per setting, computed by results.outcome, e.g.
    "warm start: −3.0 ± 0.4 points final test accuracy vs random init, 47% fewer steps".
    A strategy tried at several grid points (a λ×σ grid) is said once, at the point with
    the best final accuracy: "shrink_perturb(0.6, 0.01) (best of 55): ..."."""
    said = results.outcome(frame, keys)
    if said.empty:
        return []
    lines = []
    for setting, part in said.groupby("setting", sort=False):
        # A strategy at many grid points (a λ×σ grid) is said once, at its best final accuracy.
        names = part["treatment"].str.split("(").str[0]
        counts = names.map(names.value_counts())
        best = part.groupby(names, sort=False)["acc_effect"].transform("max")
        part = part.assign(of=counts)[(counts == 1) | (part["acc_effect"] == best)].drop_duplicates("treatment")
        phrases = []
        for i, row in enumerate(part.itertuples(index=False)):
            half = (row.acc_high - row.acc_low) / 2
            label = strategy_name(row.treatment) + (f" (best of {row.of})" if row.of > 1 else "")
            text = f"{label}: {_points(row.acc_effect)}"
            if pd.isna(half):
                text += f" points ({row.n_treatment} vs {row.n_control} seeds: no interval)"
            else:
                text += f" ± {100 * half:.1f} points" + ("" if row.pairs else " (unpaired)")
            if i == 0:
                text += " final test accuracy vs random init"
            change = getattr(row, "steps_change", float("nan"))
            if not pd.isna(change) and round(100 * change) == 0:
                text += ", about as many steps"
            elif not pd.isna(change):
                text += f", {abs(100 * change):.0f}% {'fewer' if change < 0 else 'more'} steps"
            phrases.append(text)
        prefix = "" if setting == "all" else f"{setting}: "
        lines.append(prefix + "; ".join(phrases))
    return lines


def format_claims(claims: pd.DataFrame) -> pd.DataFrame:
    """results.claims as text columns: accuracies in points, steps as counts."""

    def amount(measure: str, value: float) -> str:
        if pd.isna(value):
            return "–"
        return minus(f"{100 * value:+.2f}" if "acc" in measure else f"{value:+,.0f}")

    shown = pd.DataFrame({"claim": claims["claim"], "setting": claims["setting"]})
    shown["compared"] = [
        f"{strategy_name(t)} − {strategy_name(c)}" for t, c in zip(claims["treatment"], claims["control"], strict=True)
    ]
    rows = list(claims.itertuples(index=False))
    shown["effect"] = [amount(r.measure, r.effect) + (" pts" if "acc" in r.measure else " steps") for r in rows]
    shown["95% interval"] = [
        "–" if pd.isna(r.ci_low) else f"[{amount(r.measure, r.ci_low)}, {amount(r.measure, r.ci_high)}]" for r in rows
    ]
    shown["seeds"] = [
        f"{r.pairs} paired seeds"
        if r.pairs
        else f"{r.n_treatment} vs {r.n_control} {'trials' if r.interval == 'bootstrap' else 'seeds'}"
        for r in rows
    ]  # a bootstrap row counts the trials of every cell it resamples
    shown["interval"] = claims["interval"]
    shown["verdict"] = claims["verdict"]
    return shown


SUMMARY_INTRO = (
    "Final and mean-over-rounds test accuracy (%), total train time (s) and optimizer steps, mean ± std over seeds; "
    "front: on the Pareto front of final test accuracy against optimizer steps (steps) or train time (time) "
    "among the strategies of one setting. Train time is shown, and compared, only for grid points whose "
    "every trial trained alone (trained: stacked marks shares of an ensemble's time)."
)


@dataclass(frozen=True)
class Summary:
    """The summary's pieces: ``table`` (results.summary, one row per grid point), ``shown``
    (the same as text columns), ``notes`` (what the table cannot tell: seed collisions,
    unfinished trials), ``outcome`` (lines in words) and ``claims`` (results.claims)."""

    table: pd.DataFrame
    shown: pd.DataFrame
    notes: list[str]
    outcome: list[str]
    claims: pd.DataFrame


@short_named
def summary_parts(frame: pd.DataFrame) -> Summary:
    varying = grid_columns(frame)
    with warnings.catch_warnings():  # the collision warning becomes a note line
        warnings.simplefilter("ignore", results.SeedCollision)
        table = results.summary(frame, label_keys(frame))
        return Summary(
            table=table,
            shown=format_summary(table, varying),
            notes=point_notes(frame),
            outcome=outcome_lines(frame, varying),
            claims=results.claims(frame, varying),
        )


def claim_lines(claims: pd.DataFrame) -> list[str]:
    """One line per claim: its verdict with effect and interval when it was tested once, the
    count of each verdict when it was tested on several pairs of grid points."""
    lines = []
    shown = format_claims(claims)
    for claim, part in shown.groupby("claim", sort=False):
        if len(part) == 1:
            row = part.iloc[0]
            where = "" if row["setting"] == "all" else f"{row['setting']}: "
            lines.append(
                f"{claim}: {row['verdict']} ({where}{row['effect']}, 95% {row['95% interval']}, {row['seeds']})"
            )
        else:
            counts = part["verdict"].value_counts()
            tally = ", ".join(f"{verdict} {counts[verdict]}" for verdict in VERDICTS if verdict in counts)
            lines.append(f"{claim}: {tally} (of {len(part)} comparisons)")
    return lines


VERDICTS = ["holds", "contradicted", "inconclusive", "not enough seeds"]


@short_named
def summary_text(frame: pd.DataFrame) -> str:
    """What ``report`` writes to summary.md and ``warmstart suite``/``quickstart`` print at their
    end: the summary per grid point (results.summary, mean ± std over seeds, the Pareto
    fronts marked), the notes on what the table cannot tell, the outcome in words and the
    verdicts on the paper's claims."""
    parts = summary_parts(frame)
    text = f"# Summary per grid point\n\n{SUMMARY_INTRO}\n\n{to_markdown(parts.shown)}"
    if parts.notes:
        text += "\n" + "\n".join(f"- {n.removeprefix('note: ')}" for n in parts.notes) + "\n"
    if parts.outcome:
        text += f"\n## Outcome\n\nAgainst random init with otherwise the same settings ({INTERVAL_NOTE}):\n\n"
        text += "\n".join(f"- {line}" for line in parts.outcome) + "\n"
    if not parts.claims.empty:
        text += f"\n## The paper's claims\n\n{CLAIMS_SHORT} Details: claims.md in the report.\n\n"
        text += "\n".join(f"- {line}" for line in claim_lines(parts.claims)) + "\n"
    return text


# --- what made the rows: dates, versions, machines ------------------------------------------

NOT_RECORDED = "not recorded"  # rows written before the provenance columns


def _recorded(frame: pd.DataFrame) -> pd.Series:
    """The rows that carry the provenance columns (written by a version that records them)."""
    if "warmstart_version" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["warmstart_version"].notna()


def _tally(values: pd.Series, unrecorded: int, none: str) -> str:
    """A column's distinct values in text: one value alone, several with their row counts;
    ``none`` for a null among recorded rows; rows that do not record it counted at the end."""
    counts = values.astype(object).where(values.notna(), none).value_counts(sort=True)
    if counts.empty:
        return NOT_RECORDED
    text = str(counts.index[0]) if len(counts) == 1 else ", ".join(f"{v} ({n} rows)" for v, n in counts.items())
    return text + (f"; {unrecorded} older rows: {NOT_RECORDED}" if unrecorded else "")


@short_named
def provenance(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """What made the rows, for the report's header: (what, text) for the UTC date range of the
    rounds (``started_at`` … ``ended_at``), the warmstart, torch and ray versions, the git
    commit (with ``dirty`` where the checkout had uncommitted changes) and the machines
    (``device_name``, ``cpu_isa``).  Rows written before those columns say "not recorded"."""
    recorded = _recorded(frame)
    rows, unrecorded = frame[recorded], int((~recorded).sum())
    facts = []
    if "started_at" in frame and rows["started_at"].notna().any():
        start, end = rows["started_at"].min(), rows["ended_at"].max()
        text = f"{start:%Y-%m-%d %H:%M:%S} – {end:%Y-%m-%d %H:%M:%S} UTC"
        facts.append(("rounds ran", text + (f"; {unrecorded} older rows: {NOT_RECORDED}" if unrecorded else "")))
    else:
        facts.append(("rounds ran", NOT_RECORDED))
    for column, what, none in [
        ("warmstart_version", "warmstart", "none"),
        ("torch_version", "torch", "none"),
        ("ray_version", "ray", "not installed"),
    ]:
        facts.append((what, _tally(rows[column], unrecorded, none) if column in rows else NOT_RECORDED))
    if "git_commit" in rows:
        dirty = rows["git_dirty"].fillna(False).astype(bool) if "git_dirty" in rows else False
        commit = rows["git_commit"].astype(object)
        said = commit.where(commit.isna(), commit.str[:12] + np.where(dirty, " (dirty: uncommitted changes)", ""))
        facts.append(("git commit", _tally(said, unrecorded, "none (not a git checkout)")))
    else:
        facts.append(("git commit", NOT_RECORDED))
    if "device_name" in rows:
        machine = rows["device_name"].astype(object)
        if "cpu_isa" in rows:
            machine = machine + " · " + rows["cpu_isa"].astype(object)
        facts.append(("machines", _tally(machine, unrecorded, "none")))
    else:
        facts.append(("machines", NOT_RECORDED))
    return facts
