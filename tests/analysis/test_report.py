"""Results helpers and the report, on synthetic tables: rows with the store's columns
written as Parquet files in the real layout (TrialStore.write_row), no training.
Every figure is checked through the frame it plots, against a pandas aggregation."""

from __future__ import annotations

import functools
import io
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.analysis import report, results
from engine.errors import ConfigError
from engine.schema.records import SHORT_NAMES
from engine.storage.store import SCHEMA, TrialStore

ROOT = Path(__file__).resolve().parents[2]

RANDOM = {"init": "random", "shrink": 0.0, "perturb": 1.0, "bn_stats": None}
WARM = {"init": "warm", "shrink": 1.0, "perturb": 0.0, "bn_stats": None}


def mix(shrink: float, perturb: float) -> dict:
    return {
        "init": "shrink_perturb",
        "shrink": shrink,
        "perturb": perturb,
        "bn_stats": "fresh",
        "cfg.init.shrink": shrink,
        "cfg.init.perturb": perturb,
    }


def write_trial(out, rng, *, seed=0, rounds=3, initial=100, per_round=100, n_pool=1000, values=None, **config) -> str:
    """One trial's rows, as the round loop writes them; test_acc and train_seconds are random
    unless ``values`` gives (test_acc, train_seconds) per round.  ``config`` may name a cfg.*
    column by its short name (``init="warm"``: records.SHORT_NAMES), written as that column."""
    row = {name: None for name in SCHEMA.names}
    row.update(
        suite="synthetic", seed=seed, dataset="digits", model="mlp", optimizer="adam", lr=0.001, batch_size=128,
        weight_decay=0.0, acquisition="random", per_round=per_round, world_size=1, device="cpu",
        eval_split="holdout", precise_bn=True, **{"cfg.model.width": 100},
        n_pool=n_pool, n_eval=500, stop_reason="threshold", train_acc=0.99, train_loss=0.05, test_loss=0.4,
        acquire_seconds=0.01, eval_seconds=0.01,
    )  # fmt: skip
    row.update(RANDOM)
    row.update(config)
    described = "-".join(
        f"{row[k]}" for k in ("dataset", "model", "optimizer", "init", "shrink", "perturb", "acquisition")
    )
    trial_id = f"{described}-s{seed}"
    row = {SHORT_NAMES[k][0] if k in SHORT_NAMES else k: v for k, v in row.items()}
    store = TrialStore(str(out), trial_id)
    for r in range(1, rounds + 1):
        acc, seconds = values[r - 1] if values else (rng.uniform(0.5, 1.0), rng.uniform(0.1, 5.0))
        n_labeled = min(n_pool, initial + (r - 1) * per_round)
        row.update(trial_id=trial_id, round=r, n_labeled=n_labeled, epochs=int(rng.integers(1, 50)))
        row.update(steps=3 * row["epochs"], test_acc=acc, train_seconds=seconds, acquired=[r])
        store.write_row(row)
    return trial_id


@pytest.fixture(scope="module")
def online(tmp_path_factory) -> str:
    """Figure 2's shape: random / warm / one shrink-perturb × two acquisitions × 3 seeds, 4 rounds."""
    out = tmp_path_factory.mktemp("online")
    rng = np.random.default_rng(0)
    for init in (RANDOM, WARM, mix(0.4, 0.1)):
        for acquisition in ("random", "margin"):
            for seed in range(3):
                write_trial(out, rng, seed=seed, rounds=4, acquisition=acquisition, **init)
    return str(out)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> str:
    """Figure 8's shape: a λ × σ grid of shrink-perturb, and random init, for two models, 2 seeds."""
    out = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(1)
    for model in ("mlp", "logreg"):
        for seed in range(2):
            write_trial(out, rng, seed=seed, rounds=2, model=model, **RANDOM)
            for shrink in (0.1, 0.5, 0.9):
                for perturb in (0.001, 0.01):
                    write_trial(out, rng, seed=seed, rounds=2, model=model, **mix(shrink, perturb))
    return str(out)


@pytest.fixture(scope="module")
def two_phase(tmp_path_factory) -> str:
    """Table 1's shape: 50% then 100% of the pool, two datasets × two (model, optimizer) ×
    random / warm, 3 seeds."""
    out = tmp_path_factory.mktemp("two_phase")
    rng = np.random.default_rng(2)
    for dataset in ("cifar10", "svhn"):
        for model, optimizer, momentum in (("resnet18", "sgd", 0.9), ("mlp", "adam", None)):
            for init in (RANDOM, WARM):
                for seed in range(3):
                    config = dict(dataset=dataset, model=model, optimizer=optimizer, momentum=momentum, **init)
                    write_trial(out, rng, seed=seed, rounds=2, initial=500, per_round=500, **config)
    return str(out)


@functools.cache
def _loaded(path: str) -> pd.DataFrame:
    return results.load(path)


def load(path: str) -> pd.DataFrame:
    """results.load, read once per table (reading a few hundred small files takes a while)."""
    return _loaded(path).copy()


# --- load ---------------------------------------------------------------------------------


def test_load_gives_categorical_names_and_integer_counts(online):
    df = load(online)
    assert len(df) == 3 * 2 * 3 * 4 and df["trial_id"].nunique() == 18
    for name in ("init", "acquisition", "dataset", "model"):
        assert isinstance(df[name].dtype, pd.CategoricalDtype)
    for name in ("round", "n_labeled", "epochs", "steps", "seed"):
        assert df[name].dtype == "int64"


def test_empty_missing_and_foreign_directories_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no warmstart rows"):
        results.load(str(empty))
    with pytest.raises(ConfigError, match="does not exist"):
        results.load(str(tmp_path / "nowhere"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pq.write_table(pa.table({"x": [1, 2], "y": ["a", "b"]}), foreign / "part-0.parquet")
    with pytest.raises(ConfigError, match="not a warmstart results table.*'trial_id'"):
        results.load(str(foreign))
    for path in (empty, foreign):  # the report says the same, and writes nothing
        with pytest.raises(ConfigError):
            report.write_report(str(path))
        assert not (path / "_report").exists()


# --- grid points and summaries ---------------------------------------------------------------


def test_grid_columns_name_what_varies_and_nothing_it_implies(online, grid, two_phase):
    # shrink / perturb / bn_stats / cfg.init.* follow from init here, momentum from the optimizer
    assert results.grid_columns(load(online)) == ["init", "acquisition"]
    assert results.grid_columns(load(grid)) == ["model", "init", "shrink", "perturb"]
    assert results.grid_columns(load(two_phase)) == ["dataset", "model", "optimizer", "init"]


def test_by_round_is_the_mean_and_std_over_seeds(online):
    df = load(online)
    table = results.by_round(df)
    expected = df.groupby(["init", "acquisition", "round"], observed=True)["test_acc"].agg(["mean", "std", "count"])
    assert len(table) == len(expected) == 6 * 4
    got = table.set_index(["init", "acquisition", "round"]).loc[expected.index]
    np.testing.assert_allclose(got["test_acc_mean"], expected["mean"])
    np.testing.assert_allclose(got["test_acc_std"], expected["std"])
    assert (got["seeds"] == expected["count"]).all()
    assert list(table["init"].drop_duplicates()) == ["random", "warm", "shrink_perturb"]  # reading order


def test_summary_and_per_trial(online):
    df = load(online)
    trials = results.per_trial(df)
    last = df[df["round"] == 4].set_index("trial_id")["test_acc"]
    assert trials.set_index("trial_id")["final_test_acc"].to_dict() == last.to_dict()
    totals = df.groupby("trial_id")["train_seconds"].sum()
    np.testing.assert_allclose(trials.set_index("trial_id")["total_train_seconds"], totals.loc[trials["trial_id"]])
    table = results.summary(df)
    assert list(table.columns[:4]) == ["init", "acquisition", "seeds", "rounds"]
    assert (table["seeds"] == 3).all() and len(table) == 6


def test_gap_to_random_on_known_numbers(tmp_path):
    # Two datasets; per seed (final acc, train seconds) chosen so the answers are exact.
    # Each trial has two rounds; the second is the final one, both count to the total time.
    rng = np.random.default_rng(0)
    cases = {
        ("digits", "random"): [[(0.5, 1.0), (0.80, 9.0)], [(0.5, 1.0), (0.82, 11.0)]],  # final 0.81, total 11
        ("digits", "warm"): [[(0.5, 1.0), (0.78, 1.0)], [(0.5, 1.0), (0.78, 3.0)]],  # final 0.78, total 3
        ("svhn", "random"): [[(0.5, 2.0), (0.90, 18.0)], [(0.5, 2.0), (0.90, 18.0)]],  # final 0.90, total 20
        ("svhn", "warm"): [[(0.5, 2.0), (0.85, 3.0)], [(0.5, 2.0), (0.87, 3.0)]],  # final 0.86, total 5
    }
    for (dataset, init), seeds in cases.items():
        for seed, values in enumerate(seeds):
            write_trial(
                tmp_path,
                rng,
                seed=seed,
                rounds=2,
                values=values,
                dataset=dataset,
                **(RANDOM if init == "random" else WARM),
            )
    for seed in range(2):  # a strategy on a dataset without random init: no gap to report
        write_trial(tmp_path, rng, seed=seed, rounds=2, values=[(0.5, 1.0), (0.7, 1.0)], dataset="cifar10", **WARM)
    gaps = results.gap_to_random(results.load(str(tmp_path))).set_index("dataset")
    assert list(gaps["init"]) == ["warm"] * 3
    assert gaps.loc["digits", "final_acc_gap"] == pytest.approx(0.78 - 0.81)
    assert gaps.loc["digits", "train_time_ratio"] == pytest.approx(3 / 11)
    assert gaps.loc["digits", "mean_acc_gap"] == pytest.approx((0.5 + 0.78) / 2 - (0.5 + 0.81) / 2)
    assert gaps.loc["svhn", "final_acc_gap"] == pytest.approx(0.86 - 0.90)
    assert gaps.loc["svhn", "train_time_ratio"] == pytest.approx(5 / 20)
    assert gaps.loc["svhn", "random_final_test_acc"] == pytest.approx(0.90)
    assert gaps.loc["svhn", "seeds"] == 2 and gaps.loc["svhn", "random_seeds"] == 2
    assert gaps.loc["cifar10", ["final_acc_gap", "train_time_ratio"]].isna().all()


# --- the data behind each figure -------------------------------------------------------------


@pytest.mark.parametrize("figure, metric", [("accuracy_curves", "test_acc"), ("train_time_curves", "train_seconds")])
def test_curves_plot_the_seed_means_per_strategy(online, figure, metric):
    df = load(online)
    table = getattr(report, figure)(df)
    expected = df.groupby(["init", "acquisition", "n_labeled"], observed=True)[metric].agg(["mean", "std"])
    got = table.set_index(["init", "acquisition", "n_labeled"]).loc[expected.index]
    np.testing.assert_allclose(got["mean"], expected["mean"])
    np.testing.assert_allclose(got["std"], expected["std"])
    assert set(table["panel"]) == {""}  # one setting: one panel
    assert set(table["line"]) == {
        f"{init} · {acquisition} acquisition"
        for init in ("random init", "warm start", "shrink_perturb(0.4, 0.1)")
        for acquisition in ("random", "margin")
    }


def test_curves_get_a_panel_per_setting(grid):
    table = report.accuracy_curves(load(grid))
    assert set(table["panel"]) == {"mlp", "logreg"}
    assert table.groupby("panel")["line"].nunique().to_dict() == {"mlp": 7, "logreg": 7}


def test_heatmap_matrices_are_pivots_of_per_trial_finals(grid):
    df = load(grid)
    trials = results.per_trial(df)
    mixed = trials[trials["init"] == "shrink_perturb"]
    for value, column in [("final_test_acc", "final_test_acc"), ("train_seconds", "total_train_seconds")]:
        matrices = report.lambda_sigma_matrices(df, value)
        assert set(matrices) == {"mlp", "logreg"}
        for model, matrix in matrices.items():
            part = mixed[mixed["model"] == model]
            expected = part.pivot_table(index="shrink", columns="perturb", values=column, aggfunc="mean")
            assert list(matrix.index) == [0.1, 0.5, 0.9] and list(matrix.columns) == [0.001, 0.01]
            np.testing.assert_allclose(matrix.to_numpy(), expected.to_numpy())


def test_no_heatmap_without_a_lambda_sigma_grid(online):
    assert report.lambda_sigma_matrices(load(online)) == {}


def test_table1_cells_are_mean_and_std_of_the_second_phase(two_phase):
    df = load(two_phase)
    table = report.table1(df)
    assert list(table.columns) == ["dataset", "strategy", "mlp / adam", "resnet18 / sgd"]
    assert list(zip(table["dataset"], table["strategy"], strict=True)) == [
        ("cifar10", "random init"), ("cifar10", "warm start"), ("svhn", "random init"), ("svhn", "warm start"),
    ]  # fmt: skip
    final = df[df["round"] == 2].groupby(["dataset", "init", "model", "optimizer"], observed=True)["test_acc"]
    for _, row in table.iterrows():
        init = {"random init": "random", "warm start": "warm"}[row["strategy"]]
        for model, optimizer in (("resnet18", "sgd"), ("mlp", "adam")):
            values = final.get_group((row["dataset"], init, model, optimizer))
            assert len(values) == 3
            assert row[f"{model} / {optimizer}"] == f"{100 * values.mean():.1f} ({100 * values.std():.1f})"
    seconds = report.table1(df, "train_seconds")
    values = df[(df["round"] == 2) & (df["dataset"] == "svhn") & (df["init"] == "warm")]
    values = values[(values["model"] == "mlp") & (values["optimizer"] == "adam")]["train_seconds"]
    assert seconds.iloc[3]["mlp / adam"] == f"{values.mean():.1f} ({values.std():.1f})"


def test_no_table1_without_two_phase_trials(online):
    assert report.table1(load(online)).empty


# --- the report -------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_writes_every_file_and_notes_what_it_skips(online):
    lines = report.write_report(online)
    out = Path(online) / "_report"
    paths = [line for line in lines if not line.startswith("note: ")]
    notes = [line for line in lines if line.startswith("note: ")]
    assert paths[0] == str(out / "index.html")
    assert {Path(p).name for p in paths} == {
        "index.html", "summary.csv", "summary.md", "gap_to_random.csv", "accuracy.png", "train_time.png",
        "claims.csv", "claims.md", "pareto.png", "acquire_time.png", "acquisition_overlap.csv",
    }  # fmt: skip
    assert all((out / report.hidpi(Path(p).name)).stat().st_size > 0 for p in paths if p.endswith(".png"))
    assert all(Path(p).stat().st_size > 0 for p in paths)
    assert any("λ×σ heatmaps skipped" in n for n in notes) and any("Table 1 skipped" in n for n in notes)
    page = (out / "index.html").read_text()
    assert '<img src="accuracy.png"' in page and '<img src="train_time.png"' in page
    assert "Table 1 skipped" in page and "<table" in page
    assert pd.read_parquet(online)["trial_id"].nunique() == 18  # the report does not spoil the table

    df = load(online)
    trials = results.per_trial(df)
    csv = pd.read_csv(out / "summary.csv")
    assert list(csv.columns[:2]) == ["init", "acquisition"] and len(csv) == 6
    expected = trials.groupby(["init", "acquisition"], observed=True).agg(
        acc_mean=("final_test_acc", "mean"),
        acc_std=("final_test_acc", "std"),
        time_mean=("total_train_seconds", "mean"),
        time_std=("total_train_seconds", "std"),
    )
    got = csv.set_index(["init", "acquisition"]).loc[expected.index]
    np.testing.assert_allclose(got["final_test_acc_mean"], expected["acc_mean"])
    np.testing.assert_allclose(got["final_test_acc_std"], expected["acc_std"])
    np.testing.assert_allclose(got["train_seconds_mean"], expected["time_mean"])
    np.testing.assert_allclose(got["train_seconds_std"], expected["time_std"])
    markdown = (out / "summary.md").read_text()
    first = expected.loc[("warm", "margin")]
    assert (
        f"| warm start               | margin      |     3 |      4 |      {100 * first['acc_mean']:.2f} ± " in markdown
    )
    assert "shrink_perturb(0.4, 0.1)" in markdown and "shrink-perturb" not in markdown  # one name per strategy
    steps = df.groupby(["init", "acquisition", "trial_id"], observed=True)["steps"].sum().loc[("warm", "margin")]
    assert f"{steps.mean():,.0f} ± {steps.std():,.0f}" in markdown  # optimizer steps with their ±
    assert markdown == report.summary_text(df)  # what warmstart suite prints at its end
    assert '<img src="pareto.png" srcset="pareto.png 1x, pareto@2x.png 2x"' in page and "claims, checked" in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert 'http-equiv="refresh"' not in page  # only while watching
    # Results first: the claims, the summary, the figures; what could not be shown at the end.
    order = [page.index(f'<section id="{name}">') for name in ("claims", "summary", "accuracy-against-compute")]
    assert order == sorted(order) and page.index('<section id="notes">') > page.index('<section id="about">')
    assert page.index('<section id="notes">') > max(order) and "Table 1 skipped" in page[page.index('id="notes"') :]
    results_part = page[: page.index('<section id="about">')]  # (the trial ids of the links hold hyphens)
    assert '<span class="verdict ' in page and "\u2212" in results_part
    claims = page[page.index('<section id="claims">') :]
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", claims[: claims.index("</thead>")])
    assert heads == ["verdict", "claim", "effect", "95% interval", "setting", "seeds"]  # the effect beside the claim
    assert "final test accuracy: warm start &lt; random init" in claims  # the strategies' one name, not "warm < random"
    assert "warm &lt; random" not in page
    assert "<td>shrink_perturb(0.4,\u00a00.1)</td>" in page  # a strategy's name never wraps inside its λ, σ
    assert "table.t th.num { white-space: normal;" in page  # headers of number columns wrap, their numbers never
    assert not re.search(r"[\s>(\[]-\d", results_part)  # one minus sign: U+2212, never an ASCII hyphen


@pytest.mark.slow
def test_acquisition_panels_on_known_picks(tmp_path):
    """Two strategies, two seeds, two rounds: the picks' classes and their overlap, by hand."""
    rng = np.random.default_rng(5)
    picks = {  # (init, seed) -> per round (acquired, acquired_classes)
        ("random", 0): [([1, 2, 3, 4], [2, 2]), ([5, 6], [0, 2])],
        ("warm", 0): [([1, 2, 3, 4], [2, 2]), ([6, 7], [1, 1])],
        ("random", 1): [([1, 2, 8, 9], [4, 0]), ([10, 11], [2, 0])],
        ("warm", 1): [([1, 2, 8, 9], [4, 0]), ([12, 13], [0, 2])],
    }
    for (init, seed), rounds in picks.items():
        trial = write_trial(tmp_path, rng, seed=seed, rounds=2, **(RANDOM if init == "random" else WARM))
        store = TrialStore(str(tmp_path), trial)
        for row, (acquired, classes) in zip(store.rows(), rounds, strict=True):
            store.write_row({**row, "acquired": acquired, "acquired_classes": classes})
    df = results.load(str(tmp_path))
    classes = report.acquired_classes(df).set_index(["line", "round", "class"])["count"]
    assert classes[("random init", 2, 0)] == pytest.approx(1.0) and classes[("random init", 2, 1)] == pytest.approx(1.0)
    assert classes[("warm start", 2, 0)] == pytest.approx(0.5) and classes[("warm start", 2, 1)] == pytest.approx(1.5)
    overlap = report.acquisition_overlap(df).set_index("round")
    assert list(overlap["a"]) == ["random init"] * 2 and list(overlap["b"]) == ["warm start"] * 2
    assert overlap.loc[1, "jaccard"] == 1.0 and overlap.loc[1, "seeds"] == 2  # round 1: the seed's initial set
    assert overlap.loc[2, "jaccard"] == pytest.approx((1 / 3 + 0) / 2)  # {5,6} vs {6,7}; {10,11} vs {12,13}
    lines = report.write_report(str(tmp_path))
    assert {"acquired_classes.png", "acquired_classes.csv", "acquisition_overlap.csv"} <= {Path(p).name for p in lines}
    page = (tmp_path / "_report" / "index.html").read_text()
    assert "random init ↔ warm start" in page and '<section id="acquisition">' in page
    assert "Not shown: round 1, where every pair picked the same samples (overlap 1)." in page
    table = page[page.index("<th>pair</th>") :]
    table = table[: table.index("</table>")]
    assert "round 1" not in table and '<td class="num">0.17</td>' in table  # round 2: (1/3 + 0) / 2


def test_strategy_colours_are_far_apart_and_shrink_perturb_settings_share_a_hue():
    labels = ["random init", "warm start", "shrink_perturb(0.2, 0.1)", "shrink_perturb(0.6, 0.01)", "mine"]
    inits = ["random", "warm", "shrink_perturb", "shrink_perturb", "mine"]
    colors = report._colors(labels, inits)
    assert colors["random init"] == report.OKABE_ITO["orange"] and colors["warm start"] == report.OKABE_ITO["blue"]
    greens = [colors[label] for label in labels[2:4]]
    assert len(set(greens)) == 2 and all(int(c[3:5], 16) > int(c[1:3], 16) for c in greens)  # green over red
    assert colors["mine"] not in set(greens) | {colors["random init"], colors["warm start"]}


@pytest.mark.slow
def test_report_with_heatmaps_and_table1(grid, two_phase, tmp_path):
    names = {Path(line).name for line in report.write_report(grid, str(tmp_path / "grid")) if "note" not in line}
    assert {"lambda_sigma_accuracy.png", "lambda_sigma_train_time.png"} <= names
    lines = report.write_report(two_phase, str(tmp_path / "two"))
    assert {"table1.csv", "table1.md", "table1_train_seconds.csv"} <= {Path(line).name for line in lines}
    csv = pd.read_csv(tmp_path / "two" / "table1.csv")
    assert csv.equals(pd.read_csv(io.StringIO(report.table1(load(two_phase)).to_csv(index=False))))
    assert "Table 1" in (tmp_path / "two" / "index.html").read_text()


def test_report_skips_what_the_table_lacks(tmp_path):
    # A table with only a few columns: an older or hand-made one.  Curves of accuracy, a note for time.
    rows = pd.DataFrame(
        {
            "trial_id": ["a"] * 3 + ["b"] * 3,
            "seed": [0] * 3 + [1] * 3,
            "init": ["warm"] * 6,
            "round": [1, 2, 3] * 2,
            "n_labeled": [10, 20, 30] * 2,
            "test_acc": [0.5, 0.6, 0.7, 0.55, 0.65, 0.75],
        }
    )
    rows.to_parquet(tmp_path / "rows.parquet")
    lines = report.write_report(str(tmp_path))
    assert any(line.endswith("accuracy.png") for line in lines)
    assert "note: train_time.png skipped: the table has no train_seconds values." in lines
    assert any("gap to random init skipped" in line for line in lines)
    page = (tmp_path / "_report" / "index.html").read_text()  # no provenance columns: the header says so
    assert "<th>rounds ran</th><td>not recorded</td>" in page and "<th>warmstart</th><td>not recorded</td>" in page
    assert "<th>git commit</th><td>not recorded</td>" in page
    curve = report.accuracy_curves(results.load(str(tmp_path)))
    np.testing.assert_allclose(curve["mean"], [0.525, 0.625, 0.725])


def test_notes_on_unfinished_trials_and_indistinguishable_ones(tmp_path):
    rng = np.random.default_rng(3)
    for seed, rounds in [(0, 3), (1, 3), (2, 2)]:
        write_trial(tmp_path, rng, seed=seed, rounds=rounds)
    # the same config and seed under another trial id: something the table does not record differs
    store = TrialStore(str(tmp_path), "other")
    for row in TrialStore(str(tmp_path), write_trial(tmp_path, rng, seed=0, rounds=3, dataset="svhn")).rows():
        store.write_row({**row, "trial_id": "other", "cfg.dataset.name": "digits"})
    notes = report.point_notes(results.load(str(tmp_path)))
    assert len(notes) == 2
    assert "1 (grid point, seed) pair(s) hold more than one trial" in notes[0]
    assert "1 trial(s) ran fewer rounds" in notes[1]


def test_report_refuses_a_folder_that_would_read_as_results(online):
    with pytest.raises(ConfigError, match="starting with '_'"):
        report.write_report(online, str(Path(online) / "report"))


def test_analysis_example_runs(online, tmp_path, monkeypatch, capsys):
    png = tmp_path / "by_hand.png"
    script = ROOT / "benchmarks" / "analysis_example.py"
    monkeypatch.setattr(sys, "argv", [str(script), online, "--out", str(png)])
    runpy.run_path(str(script), run_name="__main__")  # as `python benchmarks/analysis_example.py ...`
    assert png.stat().st_size > 0 and "18 trials" in capsys.readouterr().out


# --- stacked trials: times that are shares, compute compared by steps --------------------------


@pytest.mark.slow
def test_stacked_trials_are_marked_and_their_times_never_compared(tmp_path):
    """digits: warm trained stacked (its seconds a share of an ensemble's), random alone; svhn: both
    alone.  Times are compared on svhn only; steps everywhere.  One stacked trial is a row written
    before the train_timing column: its ensemble column says it."""
    rng = np.random.default_rng(4)
    for dataset in ("digits", "svhn"):
        for init in (RANDOM, WARM):
            for seed in range(2):
                stacked = dataset == "digits" and init is WARM
                timing = {"ensemble": "e1/2", "train_timing": None if seed else "stacked_share"} if stacked else {}
                write_trial(tmp_path, rng, seed=seed, rounds=2, dataset=dataset, **init, **timing)
    df = results.load(str(tmp_path))
    assert results.train_timing(df).value_counts().to_dict() == {"alone": 12, "stacked_share": 4}
    trials = results.per_trial(df).set_index(["dataset", "init", "seed"])
    assert trials.loc[("digits", "warm"), "train_timing"].tolist() == ["stacked_share"] * 2
    assert trials.loc[("digits", "warm"), "total_train_seconds"].isna().all()
    assert trials.loc[("svhn", "warm"), "total_train_seconds"].notna().all()

    points = results.summary(df).set_index(["dataset", "init"])
    assert np.isnan(points.loc[("digits", "warm"), "train_seconds_mean"])
    assert not points.loc[("digits", "warm"), "pareto_seconds"]
    assert points.loc[("digits", "warm"), "train_timing"] == "stacked_share"
    expected = trials.loc[("svhn", "warm"), "total_train_seconds"].mean()
    assert points.loc[("svhn", "warm"), "train_seconds_mean"] == pytest.approx(expected)
    gaps = results.gap_to_random(df).set_index("dataset")
    assert np.isnan(gaps.loc["digits", "train_time_ratio"]) and gaps.loc["digits", "steps_ratio"] > 0
    assert gaps.loc["svhn", "train_time_ratio"] == pytest.approx(
        expected / points.loc[("svhn", "random"), "train_seconds_mean"]
    )
    rounds = results.by_round(df).set_index(["dataset", "init", "round"])
    assert rounds.loc[("digits", "warm"), "train_seconds_mean"].isna().all()
    assert rounds.loc[("digits", "random"), "train_seconds_mean"].notna().all()

    lines = report.write_report(str(tmp_path))
    assert any("2 of 8 trials trained stacked in ensembles" in line for line in lines)
    assert "steps.png" in {Path(line).name for line in lines}
    page = (tmp_path / "_report" / "index.html").read_text()
    assert report.STACKED_TIMES in page and "train_timing = stacked_share" in page
    summary = pd.read_csv(tmp_path / "_report" / "summary.csv").set_index(["dataset", "init"])
    assert summary["train_timing"].to_dict() == {
        ("digits", "random"): "alone", ("digits", "warm"): "stacked_share",
        ("svhn", "random"): "alone", ("svhn", "warm"): "alone",
    }  # fmt: skip
    text = report.summary_text(df)  # what the suite prints at its end
    assert "trained stacked in ensembles" in text
    warm = next(line for line in text.splitlines() if line.startswith("| digits") and "warm start" in line)
    assert "| stacked |" in warm and " – |" in warm  # marked, and no total train time


# --- report --watch ------------------------------------------------------------------------------


@pytest.mark.slow
def test_watch_rewrites_a_self_refreshing_page_until_ctrl_c(tmp_path, capsys):
    from engine.cli import _watch_report

    out = tmp_path / "results"
    out.mkdir()
    page = out / "_report" / "index.html"
    seen = []

    def sleep(seconds):  # stands for the wait between rewrites; rows arrive while "sleeping"
        seen.append((seconds, page.read_text() if page.exists() else None))
        if len(seen) == 1:  # a suite that has not written a row yet: waited for
            write_trial(out, np.random.default_rng(6), seed=0, rounds=2)
        elif len(seen) == 3:
            raise KeyboardInterrupt

    _watch_report([str(out)], None, 5, sleep=sleep)
    said = capsys.readouterr().out
    assert [s for s, _ in seen] == [5, 5, 5] and seen[0][1] is None and "waiting: No results at" in said
    assert '<meta http-equiv="refresh" content="5">' in seen[1][1] and "reloads itself" in seen[1][1]
    assert 'http-equiv="refresh"' not in page.read_text()  # after Ctrl-C: a page that stays still
    assert said.rstrip().endswith("stopped watching")
    with pytest.raises(ConfigError, match="--every"):
        _watch_report([str(out)], None, 0.5, sleep=sleep)
    with pytest.raises(ConfigError, match="does not exist"):  # a mistyped parent folder: no waiting
        _watch_report([str(tmp_path / "nowhere" / "results")], None, 5, sleep=sleep)


@pytest.mark.slow
def test_watch_started_before_the_suite_waits_for_its_folder(tmp_path, capsys):
    """``warmstart report DIR --watch`` and ``warmstart suite ... --out DIR`` started together:
    DIR does not exist for the first seconds; the watch waits instead of exiting."""
    from engine.cli import _watch_report

    out = tmp_path / "results"
    seen = []

    def sleep(seconds):
        seen.append((out / "_report" / "index.html").exists())
        if len(seen) == 2:
            write_trial(out, np.random.default_rng(8), seed=0, rounds=2)  # the suite's first rows
        elif len(seen) == 3:
            raise KeyboardInterrupt

    _watch_report([str(out)], None, 2, sleep=sleep)
    said = capsys.readouterr().out
    assert seen == [False, False, True] and said.count("the path does not exist") == 1
    assert 'http-equiv="refresh"' not in (out / "_report" / "index.html").read_text()


def _epochs_for(frame: pd.DataFrame, epochs: int = 3) -> pd.DataFrame:
    """Per-epoch rows (the _epochs dataset's columns) for every round of ``frame``."""
    rounds = frame[["trial_id", "round"]].drop_duplicates()
    rows = [
        {"trial_id": t, "round": r, "epoch": e, "train_loss": 1.0 / e, "train_acc": 0.3 * e, "seconds": 0.1 * e}
        for t, r in rounds.itertuples(index=False)
        for e in range(1, epochs + 1)
    ]
    return pd.DataFrame(rows)


def test_within_round_curves_look_as_in_every_other_figure(online):
    """A strategy has one colour (its init) and one line style (its acquisition) in the curves
    and in the within-round figure; two acquisitions of one init are told apart by style, not
    drawn as shades of one hue as if they were λ/σ settings; the legend fits in the figure."""
    df = load(online)
    table = report.epoch_curves(df, _epochs_for(df))
    assert {"init_label", "acquisition_label"} <= set(table.columns)
    figure = report.plot_epoch_curves(table, "within")
    drawn = {
        text.get_text(): (line.get_color(), line.get_linestyle())
        for line, text in zip(figure.legends[0].get_lines(), figure.legends[0].get_texts(), strict=True)
    }
    across = report.plot_curves(report.accuracy_curves(df), "across", "accuracy", 100.0)
    expected = {
        text.get_text(): (line.get_color(), line.get_linestyle())
        for line, text in zip(across.legends[0].get_lines(), across.legends[0].get_texts(), strict=True)
    }
    assert len(drawn) == 6 and drawn == expected
    assert drawn["shrink_perturb(0.4, 0.1) · margin acquisition"][0] == report.INIT_COLORS["shrink_perturb"]
    assert drawn["random init · margin acquisition"][1] != drawn["random init · random acquisition"][1]
    figure.canvas.draw()
    box, legend = figure.bbox, figure.legends[0].get_window_extent()
    assert box.x0 <= legend.x0 and legend.x1 <= box.x1, (box, legend)  # not clipped at either side


@pytest.mark.slow
def test_what_acquisition_panels_cannot_show_is_said_at_the_end(tmp_path):
    """One strategy alone: no overlap to compute, said in a note; rows without picks (older
    rows, a hand-made table): every acquisition panel is skipped with its reason."""
    rng = np.random.default_rng(7)
    for seed in (0, 1):
        write_trial(tmp_path / "one", rng, seed=seed, rounds=2, **WARM)
    lines = report.write_report(str(tmp_path / "one"))
    assert "note: overlap of picks between strategies skipped: no two strategies ran the same seed." in lines
    page = (tmp_path / "one" / "_report" / "index.html").read_text()
    assert "no two strategies ran the same seed" in page[page.index('<section id="notes">') :]
    rows = pd.read_parquet(tmp_path / "one").drop(columns=["acquired", "acquired_classes", "acquire_seconds"])
    (tmp_path / "old").mkdir()
    rows.to_parquet(tmp_path / "old" / "rows.parquet")
    lines = report.write_report(str(tmp_path / "old"))
    assert (
        "note: overlap of picks between strategies skipped: the rows do not record their picks (the acquired column)."
        in lines
    )
    assert any(line.startswith("note: acquired_classes.png skipped") for line in lines)
    assert "note: acquire_time.png skipped: the table has no acquire_seconds values." in lines
    assert '<section id="acquisition">' not in (tmp_path / "old" / "_report" / "index.html").read_text()


@pytest.mark.slow
def test_a_search_reads_in_the_pages_units_and_scrolls_in_its_own_box(tmp_path):
    """A search's points: sampled values to 4 digits (not 17), accuracy in % as in every other
    table, the table in its own scrolling box (the page never scrolls sideways on a phone)."""
    from engine.suite.search import parse_search, write_record

    rng = np.random.default_rng(9)
    ids = [write_trial(tmp_path, rng, seed=s, rounds=2, **mix(0.6095693498571635, 0.01)) for s in (0, 1)]
    record = {
        "search": parse_search({"scheduler": "asha"}).to_dict(),
        "points": {
            "p-a": {"point": {"init.shrink": 0.6095693498571635}, "trial_ids": ids, "seeds": [0, 1], "round": 2,
                    "rounds": 2, "stopped_by": None, "metric": 0.5715080690038953, "steps": 1240, "seconds": 1.1},
            "p-b": {"point": {"init.shrink": 0.13277881914895576}, "trial_ids": ["b0", "b1"], "seeds": [0, 1],
                    "round": 1, "rounds": 2, "stopped_by": "asha", "metric": 0.3614357262103505, "steps": 120,
                    "seconds": 0.2},
        },
    }  # fmt: skip
    write_record(str(tmp_path), record)
    lines = report.write_report(str(tmp_path))
    assert {"search.csv", "search.md"} <= {Path(line).name for line in lines}
    page = (tmp_path / "_report" / "index.html").read_text()
    search = page[page.index('<section id="search">') :]
    search = search[: search.index("</section>")]
    assert '<div class="scroll"><table' in search and "0.6095693498571635" not in search
    assert '<td class="num">0.6096</td>' in search and '<td class="num">57.15</td>' in search
    assert "<th>stopped by</th>" in search and "<td>asha</td>" in search  # text: left-aligned
    assert "best point: init.shrink=0.6096: mean test acc over rounds 57.15 % (2 seeds, 1,240 steps, 1.1 s)" in search
    assert pd.read_csv(tmp_path / "_report" / "search.csv")["mean_test_acc"].iloc[0] == 0.5715080690038953


def test_within_round_curves_keep_two_panels_a_row_for_a_phone(online):
    """Four rounds: a row per round (loss, accuracy), not four columns that shrink to a few
    pixels a letter on a 390 px screen."""
    df = load(online)
    figure = report.plot_epoch_curves(report.epoch_curves(df, _epochs_for(df)), "within")
    shown = [ax for ax in figure.axes if ax.get_visible()]
    assert len(shown) == 8 and {ax.get_subplotspec().colspan.start for ax in shown} == {0, 1}
    assert [ax.get_ylabel() for ax in shown[::2]] == [f"round {r}\ntrain loss" for r in (1, 2, 3, 4)]
    assert figure.get_size_inches()[0] <= 8.5  # scaled to 358 px, a 9 pt legend stays ≥ 4 px a letter


def test_overlap_compares_strategies_that_differ_in_one_thing_in_reading_order(online):
    """Three inits × two acquisitions: the inits compared at each acquisition (3 + 3 pairs)
    and the acquisitions at each init (3), not the 6 pairs that differ in both; random init
    first.  A 15-row table of every pair was a wall of wrapped names on a phone."""
    df = load(online)
    pairs = report.acquisition_overlap(df).drop_duplicates(["a", "b"])
    assert len(pairs) == 9
    for a, b in zip(pairs["a"], pairs["b"], strict=True):
        (init_a, acq_a), (init_b, acq_b) = a.split(" · "), b.split(" · ")
        assert (init_a == init_b) != (acq_a == acq_b), (a, b)
    assert pairs["a"].iloc[0].startswith("random init") and pairs["b"].iloc[-1].startswith("shrink_perturb")


def test_class_histograms_one_panel_a_row_for_six_strategies():
    table = pd.DataFrame(
        [
            {"panel": "", "line": f"s{s}", "round": r, "class": c, "count": 1.0, "seeds": 1, "init": "warm"}
            for s in range(6)
            for r in (1, 2)
            for c in range(3)
        ]
    )
    figure = report.plot_class_histograms(table, "classes")
    shown = [ax for ax in figure.axes if ax.get_visible() and ax.get_title()]
    assert len(shown) == 6 and {ax.get_subplotspec().colspan.start for ax in shown} == {0}


@pytest.mark.slow
def test_the_headers_dates_never_break_at_their_hyphens(tmp_path):
    rng = np.random.default_rng(10)
    when = {"started_at": pd.Timestamp("2026-12-06 07:16:20"), "ended_at": pd.Timestamp("2026-12-06 07:17:38")}
    write_trial(tmp_path, rng, seed=0, rounds=2, warmstart_version="9.9", **when)
    report.write_report(str(tmp_path))
    page = (tmp_path / "_report" / "index.html").read_text()
    lead = page[page.index('<p class="lead">') :]
    lead = lead[: lead.index("</p>")]
    expected = '<span class="nw">2026-12-06 07:16:20</span> – <span class="nw">2026-12-06 07:17:38</span> UTC'
    assert f"ran {expected}" in lead and "warmstart 9.9" in lead
    assert ".nw { white-space: nowrap; }" in page
