"""docs/results.md's recipes (pandas, pyarrow, polars, DuckDB, grouping by strategy) and the
README's grouping, run on a real results folder that also holds the report's files, and the
report's compute comparison on real stacked rows."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from engine.analysis import report, results
from engine.schema.config import build
from engine.trial.driver import STACKED, Driver
from engine.trial.session import start_trial
from engine.trial.stacked import start_members

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # trials and a report, once for the module

ROOT = Path(__file__).resolve().parents[2]
INITS = {
    "random": {"name": "random"},
    "warm": {"name": "warm"},
    "shrink_perturb": {"name": "shrink_perturb", "shrink": 0.6, "perturb": 0.01},
}
ROUNDS = 2


def config(init: str, seed: int):
    return build(
        {
            "dataset": {"name": "digits"},
            "model": {"name": "mlp", "width": 32, "depth": 2},
            "device": "cpu",
            "rounds": {"initial": 100, "per_round": 100, "max_rounds": ROUNDS},
            "convergence": {"train_acc": 0.9, "max_epochs": 50},
            "eval": {"epochs_table": True},  # the per-epoch table beside the rows, _epochs/
            "init": INITS[init],
            "seed": seed,
        }
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """Real rows: warm start's two seeds trained stacked in one ensemble, random init and
    shrink-perturb alone; then the report written into the folder (``_report/``)."""
    out = str(tmp_path_factory.mktemp("results"))
    with Driver(start_members([config("warm", seed) for seed in (0, 1)], out, "e-recipes/2"), STACKED) as ensemble:
        ensemble.run()
    for init in ("random", "shrink_perturb"):
        for seed in (0, 1):
            with Driver([start_trial(config(init, seed), out)]) as driver:
                driver.run()
    report.write_report(out)
    return out


def section(page: str, heading: str) -> str:
    text = (ROOT / page).read_text()
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end > 0 else None]


def test_the_recipes_read_every_row_beside_the_report(folder):
    assert list(Path(folder, "_report").glob("*.png")) and Path(folder, "_report", "index.html").is_file()
    blocks = re.findall(r"```python\n(.*?)```", section("docs/results.md", "### Recipes"), flags=re.S)
    assert len(blocks) == 5  # pandas, pyarrow, polars, DuckDB, grouping
    names = {"out": folder}
    for block in blocks:
        exec(compile(block, "docs/results.md", "exec"), names)
    rows = 6 * ROUNDS
    assert len(names["df"]) == rows and names["table"].num_rows == rows and names["rows"].height == rows
    assert names["finals"].shape[0] == 6
    per_strategy = names["per_strategy"]
    assert sorted(per_strategy["init"]) == ["random", "shrink_perturb", "warm"]
    assert per_strategy["trials"].tolist() == [2, 2, 2]
    by_strategy = names["by_strategy"].reset_index()
    assert set(by_strategy["cfg.init.name"]) == set(INITS) and by_strategy["count"].sum() == 6
    steps = names["df"].groupby("trial_id")["steps"].sum()
    assert per_strategy["steps"].sum() == pytest.approx(steps.sum() / 2)  # two trials per strategy: the mean


def test_the_readme_grouping_keeps_every_init_strategy(folder):
    df = pd.read_parquet(folder)
    said = section("README.md", "## Results")
    grouping = re.search(r"`(df\.groupby\(\[.*?\], dropna=False, observed=True\))`", said, flags=re.S).group(1)
    groups = eval(grouping).size()
    assert groups.sum() == len(df) == 6 * ROUNDS
    assert set(groups.index.get_level_values("cfg.init.name")) == set(INITS)
    assert df.groupby("cfg.init.shrink").size().sum() == 2 * ROUNDS  # the trap the README warns of


def test_the_report_compares_stacked_trials_by_steps_only(folder):
    df = results.load(folder)
    assert df.groupby("init", observed=True)["train_timing"].agg(set).to_dict() == {
        "random": {"alone"},
        "shrink_perturb": {"alone"},
        "warm": {"stacked_share"},
    }
    points = results.summary(df).set_index("init")
    assert points["train_seconds_mean"].isna().to_dict() == {"random": False, "warm": True, "shrink_perturb": False}
    assert (points["steps_mean"] > 0).all()
    gaps = results.gap_to_random(df).set_index("init")
    assert gaps["train_time_ratio"].isna().to_dict() == {"warm": True, "shrink_perturb": False}
    assert gaps["steps_ratio"].notna().all()
    page = Path(folder, "_report", "index.html").read_text()
    assert "2 of 6 trials trained stacked in ensembles" in page and report.STACKED_TIMES in page
    assert Path(folder, "_report", "steps.png").is_file()


@pytest.mark.parametrize("metric", ["train_seconds", "acquire_seconds", "eval_seconds"])
def test_no_per_round_time_of_a_stacked_row_is_compared(folder, metric):
    """A stacked row's acquisition and evaluation seconds are shares of the stack's passes too:
    the per-round curves (acquire_time.png) show a time only where every seed trained alone."""
    df = results.load(folder)
    assert df.loc[df["init"] == "warm", metric].notna().all()  # the rows hold the shares
    rounds = results.by_round(df, metrics=(metric,))
    shown = rounds.groupby("init", observed=True)[f"{metric}_mean"].agg(lambda s: bool(s.notna().all()))
    assert shown.to_dict() == {"random": True, "warm": False, "shrink_perturb": True}
    assert set(report.curves(df, metric).dropna(subset=["mean"])["init"]) == {"random", "shrink_perturb"}


def test_the_report_header_says_when_what_and_where_the_configs_are(folder, tmp_path):
    import shutil

    import torch

    from engine import __version__
    from engine.storage.store import TrialStore

    df = pd.read_parquet(folder)
    page = Path(folder, "_report", "index.html").read_text()
    start, end = df["started_at"].min(), df["ended_at"].max()
    assert f"{start:%Y-%m-%d %H:%M:%S} – {end:%Y-%m-%d %H:%M:%S} UTC" in page
    assert f"<th>warmstart</th><td>{__version__}</td>" in page
    assert f"<th>torch</th><td>{torch.__version__}</td>" in page
    commit = df["git_commit"].iloc[0]
    assert (commit is None and "none (not a git checkout)" in page) or str(commit)[:12] in page
    # A link per trial to its frozen config, relative to the report, to a file that is there.
    hrefs = re.findall(r'<a href="(\.\./_warmstart/[^"]+/config\.yaml)"', page)
    assert len(hrefs) == df["trial_id"].nunique() == 6
    assert all((Path(folder, "_report") / href).is_file() for href in hrefs)

    # Rows written before the provenance columns: "not recorded", counted beside the recorded ones.
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed, ignore=shutil.ignore_patterns("_report"))
    old = TrialStore(folder, df["trial_id"].iloc[0]).rows()[0]
    old.update({c: None for c in ("started_at", "ended_at", "warmstart_version", "torch_version", "git_commit")})
    old.update(trial_id="old-trial", seed=7, ray_version=None, git_dirty=None, device_name=None, cpu_isa=None)
    TrialStore(str(mixed), "old-trial").write_row(old)
    facts = dict(report.provenance(results.load(str(mixed))))
    assert facts["warmstart"] == f"{__version__}; 1 older rows: not recorded"
    assert facts["rounds ran"].endswith("UTC; 1 older rows: not recorded")
    assert dict(report.provenance(df.drop(columns=["warmstart_version"])))["torch"] == "not recorded"


def test_the_epochs_table_is_its_own_dataset_and_agrees_with_the_rows(folder):
    """Alone and stacked (warm start's ensemble): one per-epoch row per epoch each round trained,
    the last one the round's own train_acc and train_loss; pd.read_parquet(out) never reads it."""
    rows = pd.read_parquet(folder)
    assert "epoch" not in rows.columns and len(rows) == 6 * ROUNDS
    epochs = pd.read_parquet(Path(folder, "_epochs"))
    assert list(epochs.columns) == ["trial_id", "round", "epoch", "train_loss", "train_acc", "seconds"]
    for row in rows.itertuples(index=False):
        mine = epochs[(epochs["trial_id"] == row.trial_id) & (epochs["round"] == row.round)].sort_values("epoch")
        assert mine["epoch"].tolist() == list(range(1, row.epochs + 1)), (row.trial_id, row.round)
        assert mine["train_acc"].iloc[-1] == row.train_acc and mine["train_loss"].iloc[-1] == row.train_loss
        assert mine["seconds"].is_monotonic_increasing and (mine["seconds"] > 0).all()
    page = Path(folder, "_report", "index.html").read_text()
    assert '<section id="epochs">' in page and Path(folder, "_report", "epochs.png").is_file()
    curves = report.epoch_curves(results.load(folder), epochs)
    warm = curves[(curves["line"] == "warm start") & (curves["round"] == 2) & (curves["epoch"] == 1)]
    expected = epochs[epochs["trial_id"].str.contains("-warm-") & (epochs["round"] == 2) & (epochs["epoch"] == 1)]
    assert warm["train_loss"].item() == pytest.approx(expected["train_loss"].mean()) and warm["seeds"].item() == 2


def test_nullable_integers_and_counts_read_as_docs_say(folder):
    """docs/results.md: an int column with nulls is int64 in the files (float64 in plain pandas,
    Int64 with numpy_nullable), and a count given as rounds.initial is round 1's n_labeled."""
    import pyarrow.dataset as ds

    schema = ds.dataset(folder, format="parquet").schema
    assert str(schema.field("cfg.convergence.patience").type) == "int64"
    assert str(schema.field("cfg.rounds.initial").type) == "double"
    assert pd.read_parquet(folder)["cfg.convergence.patience"].dtype == "float64"
    nullable = pd.read_parquet(folder, dtype_backend="numpy_nullable")
    assert str(nullable["cfg.convergence.patience"].dtype) == "Int64"
    assert str(nullable["cfg.performance.autocast"].dtype) == "boolean"
    df = results.load(folder)
    first = df[df["round"] == 1]
    assert (first["cfg.rounds.initial"] >= 1).all()  # counts, not fractions
    assert first["n_labeled"].tolist() == first["cfg.rounds.initial"].astype(int).tolist() == [100] * 6


def test_the_results_functions_take_rows_however_they_were_read(folder):
    """pd.read_parquet's frame has only the cfg.* columns; every results function derives
    the short names it groups by, so it answers as on load's frame (not an empty table)."""
    loaded = results.load(folder)
    raw = pd.concat([pd.read_parquet(p) for p in sorted(Path(folder).glob("*.parquet"))], ignore_index=True)
    assert "init" not in raw and "init" in loaded
    for function in (results.summary, results.outcome, results.claims, results.per_trial, results.by_round):
        expected, got = function(loaded), function(raw)
        assert len(expected) > 0, function.__name__
        plain = [f.reset_index(drop=True).astype(object) for f in (got, expected)]
        pd.testing.assert_frame_equal(*plain, check_like=True)
