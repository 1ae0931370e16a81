"""The one summary pipeline (engine.analysis.results) on tables built here as the engine writes
rows, the config as ``cfg.*`` columns, with the short names ``results.load`` adds: grid points,
the seed-collision warning, the Pareto front, paired contrasts, the outcome in words and the
paper's claims.  Grid points of real tiny trials, too."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scipy import stats as scipy_stats

from engine.analysis import report, results, stats, tables
from engine.cli import main
from engine.errors import ConfigError
from engine.schema.records import with_short_names

EFFECTIVE = {"random": (0.0, 1.0), "warm": (1.0, 0.0)}  # the effective (λ, σ) a row records


def trial(
    trial_id: str,
    /,
    *,
    seed: int,
    final: float,
    steps: int = 300,
    seconds: float = 3.0,
    init: str = "random",
    shrink: float | None = None,
    perturb: float | None = None,
    acquisition: str = "random",
    rounds: int = 3,
    **cfg,
) -> pd.DataFrame:
    """One trial's rows: test accuracy final − 0.1·(rounds − r) in round r; steps and train
    seconds split evenly over the rounds (totals ``steps``, ``seconds``).  The flattened config
    as ``cfg.*`` columns (keyword ``cfg`` items, dots as double underscores:
    ``rounds__max_rounds=2``), and the short names ``results.load`` derives from them."""
    lam, sigma = EFFECTIVE.get(init, (shrink, perturb))
    config = {
        "cfg.suite": "built",
        "cfg.trial_id": None,
        "cfg.seed": seed,
        "cfg.device": "auto",
        "cfg.dataset.name": "digits",
        "cfg.dataset.root": "~/.cache/warmstart",
        "cfg.model.name": "mlp",
        "cfg.model.width": 100,
        "cfg.init.name": init,
        "cfg.init.shrink": shrink,
        "cfg.init.perturb": perturb,
        "cfg.init.bn_stats": "fresh" if init == "shrink_perturb" else None,
        "cfg.acquisition.name": acquisition,
        "cfg.rounds.initial": 100,
        "cfg.rounds.max_rounds": rounds,
        "cfg.convergence.train_acc": 0.99,
        "cfg.performance.compile": False,
    }
    config.update({f"cfg.{k.replace('__', '.')}": v for k, v in cfg.items()})
    rows = [
        {
            "trial_id": trial_id,
            "seed": seed,
            "shrink": lam,
            "perturb": sigma,
            "round": r,
            "n_labeled": 100 * r,
            "test_acc": final - 0.1 * (rounds - r),
            "steps": steps // rounds + (steps % rounds if r == rounds else 0),
            "epochs": 2,
            "train_seconds": seconds / rounds,
            **config,
        }
        for r in range(1, rounds + 1)
    ]
    return with_short_names(pd.DataFrame(rows))


def table(*trials: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(trials, ignore_index=True)


def comparison(finals: dict[str, list[float]], steps: dict[str, list[int]] | None = None, **cfg) -> pd.DataFrame:
    """random / warm / shrink_perturb(0.6, 0.01), one trial per seed with the given finals."""
    parts = []
    for init, values in finals.items():
        for seed, final in enumerate(values):
            mix = {"shrink": 0.6, "perturb": 0.01} if init == "shrink_perturb" else {}
            spent = (steps or {}).get(init, [300] * len(values))[seed]
            parts.append(trial(f"{init}-s{seed}", seed=seed, final=final, steps=spent, init=init, **mix, **cfg))
    return table(*parts)


# --- grid points ------------------------------------------------------------------------------


def test_cfg_columns_that_vary_make_grid_points_named_with_the_fewest_columns():
    rows = comparison({"random": [0.9, 0.91], "warm": [0.88, 0.87], "shrink_perturb": [0.9, 0.92]})
    # cfg.init.name/shrink/perturb/bn_stats vary too, but say nothing init does not
    assert results.grid_columns(rows) == ["init"]
    # two runs that differ only in rounds.initial, which no named column records
    runs = table(trial("small", seed=0, final=0.8), trial("large", seed=0, final=0.9, rounds__initial=200))
    assert results.grid_columns(runs) == ["init", "cfg.rounds.initial"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", results.SeedCollision)  # two grid points, one trial each: no warning
        summary = results.summary(runs)
    assert summary["cfg.rounds.initial"].tolist() == [100, 200] and summary["seeds"].tolist() == [1, 1]
    assert summary["final_test_acc_mean"].tolist() == pytest.approx([0.8, 0.9])


def test_keys_outside_the_identity_and_the_seed_never_split_a_grid_point():
    varied = [
        {"device": "cpu", "dataset__root": "/a", "performance__compile": False, "suite": "a", "trial_id": "x"},
        {"device": "cuda", "dataset__root": "/b", "performance__compile": True, "suite": "b", "trial_id": "y"},
        {"device": "cuda:1", "dataset__root": "/c", "performance__compile": True, "suite": "c", "trial_id": "z"},
    ]
    for seed, cfg in enumerate(varied):  # how far a trial runs is no grid point either
        cfg["rounds__max_rounds"] = 3 + seed
    rows = table(*(trial(f"t{seed}", seed=seed, final=0.8 + 0.01 * seed, **cfg) for seed, cfg in enumerate(varied)))
    assert results.config_columns(rows) == [
        "cfg.dataset.name", "cfg.model.name", "cfg.model.width", "cfg.init.name", "cfg.init.shrink", "cfg.init.perturb",
        "cfg.init.bn_stats", "cfg.acquisition.name", "cfg.rounds.initial", "cfg.convergence.train_acc",
    ]  # fmt: skip
    summary = results.summary(rows)
    assert len(summary) == 1 and summary.loc[0, "seeds"] == 3
    assert summary.loc[0, "final_test_acc_mean"] == pytest.approx(0.81)
    assert summary.loc[0, "final_test_acc_std"] == pytest.approx(0.01)


def test_a_varying_identity_key_splits_even_when_no_named_column_shows_it():
    rows = table(
        trial("a0", seed=0, final=0.8, convergence__train_acc=0.99),
        trial("a1", seed=1, final=0.82, convergence__train_acc=0.99),
        trial("b0", seed=0, final=0.7, convergence__train_acc=0.9),
    )
    summary = results.summary(rows)
    assert summary[["cfg.convergence.train_acc", "seeds"]].values.tolist() == [[0.9, 1], [0.99, 2]]


def test_one_seed_twice_in_a_grid_point_warns_and_is_noted():
    # Two runs of one config under trial ids of their own (`--set trial_id=...`), to other
    # round counts: nothing that decides what they compute tells them apart.
    runs = table(
        trial("short", seed=0, final=0.8, rounds=2, trial_id="short"),
        trial("long", seed=0, final=0.9, rounds=4, trial_id="long"),
    )
    with pytest.warns(results.SeedCollision, match=r"1 \(grid point, seed\) pair\(s\) hold more than one trial"):
        summary = results.summary(runs)
    assert summary["seeds"].tolist() == [2]
    collisions = results.seed_collisions(runs)
    assert collisions.to_dict("records") == [{"init": "random", "seed": 0, "trials": 2}]
    text = tables.summary_text(runs)
    assert "hold more than one trial (e.g. init=random, seed=0: 2 trials)" in text


# --- the Pareto front -------------------------------------------------------------------------


def test_pareto_front_on_known_points():
    accuracy = [0.90, 0.85, 0.80, 0.92, 0.80, 0.70, np.nan, 0.92]
    cost = [100, 50, 60, 300, 50, 10, 5, 300]
    # 2 (0.80@60) is dominated by 1 (0.85@50); 4 (0.80@50) by 1 too; 6 has no accuracy;
    # 3 and 7 are equal: neither dominates the other.
    assert stats.pareto_front(accuracy, cost).tolist() == [True, True, False, True, False, True, False, True]
    assert stats.pareto_front([], []).tolist() == []


def test_summary_marks_the_front_within_each_setting():
    rows = table(
        *(
            trial(f"{dataset}-{init}-{seed}", seed=seed, final=final, steps=steps, seconds=sec, init=init,
                  dataset__name=dataset)
            for dataset, init, final, steps, sec in [
                ("digits", "random", 0.95, 900, 9.0),
                ("digits", "warm", 0.90, 300, 3.0),
                ("digits", "shrink_perturb", 0.89, 500, 2.0),
                ("mnist1d", "random", 0.60, 900, 9.0),
                ("mnist1d", "warm", 0.62, 300, 3.0),
                ("mnist1d", "shrink_perturb", 0.55, 500, 5.0),
            ]
            for seed in (0, 1)
        )
    )  # fmt: skip
    summary = results.summary(rows).set_index(["dataset", "init"])
    # digits: every strategy trades accuracy for steps; shrink_perturb (0.89 at 500) is dominated by warm
    steps = summary["pareto_steps"].to_dict()
    assert steps == {
        ("digits", "random"): True, ("digits", "warm"): True, ("digits", "shrink_perturb"): False,
        ("mnist1d", "random"): False, ("mnist1d", "warm"): True, ("mnist1d", "shrink_perturb"): False,
    }  # fmt: skip
    # on train seconds shrink_perturb is the cheapest on digits: on the front there
    assert summary.loc[("digits", "shrink_perturb"), "pareto_seconds"]
    shown = tables.summary_text(rows)
    assert "front (steps)" in shown and "✓" in shown
    points = report.pareto_points(rows)
    assert set(points["panel"]) == {"digits", "mnist1d"}
    marked = points.set_index(["dataset", "init"])["front_final_test_acc_steps"]
    assert marked.to_dict() == steps


# --- contrasts, the outcome ---------------------------------------------------------------------


def test_contrast_pairs_by_seed_with_a_t_interval():
    rows = comparison({"random": [0.90, 0.92, 0.91], "warm": [0.87, 0.90, 0.87]})
    got = results.contrast(rows, "final_test_acc", "warm", "random").iloc[0]
    diffs = np.array([-0.03, -0.02, -0.04])
    half = scipy_stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    assert got["effect"] == pytest.approx(-0.03)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((-0.03 - half, -0.03 + half))
    assert (got["interval"], got["pairs"], got["treatment"], got["control"]) == ("paired t", 3, "warm", "random")


def test_contrast_without_shared_seeds_is_welch():
    rows = table(
        *(trial(f"r{s}", seed=s, final=f) for s, f in [(0, 0.90), (1, 0.94)]),
        *(trial(f"w{s}", seed=s, final=f, init="warm") for s, f in [(5, 0.80), (6, 0.82), (7, 0.84)]),
    )
    got = results.contrast(rows, "final_test_acc", "warm", "random").iloc[0]
    expected = scipy_stats.ttest_ind([0.80, 0.82, 0.84], [0.90, 0.94], equal_var=False).confidence_interval(0.95)
    assert got["interval"] == "Welch t" and got["pairs"] == 0
    assert got["effect"] == pytest.approx(0.82 - 0.92)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((expected.low, expected.high))


def test_outcome_in_words_is_computed():
    rows = comparison(
        {"random": [0.61, 0.60, 0.62], "warm": [0.58, 0.57, 0.59], "shrink_perturb": [0.615, 0.605, 0.625]},
        steps={"random": [900, 1000, 1100], "warm": [500, 500, 590], "shrink_perturb": [600, 700, 770]},
    )
    said = results.outcome(rows).set_index("treatment")
    assert said.loc["warm", "acc_effect"] == pytest.approx(-0.03)
    assert said.loc["warm", "steps_change"] == pytest.approx(530 / 1000 - 1)
    (line,) = tables.outcome_lines(rows)
    # every seed loses exactly 3 points: no spread, so the interval is the point itself
    assert line == (
        "warm start: −3.0 ± 0.0 points final test accuracy vs random init, 47% fewer steps; "
        "shrink_perturb(0.6, 0.01): +0.5 ± 0.0 points, 31% fewer steps"
    )
    noisy = comparison({"random": [0.6, 0.7], "warm": [0.62, 0.6]}, acquisition="margin")
    (line,) = tables.outcome_lines(noisy)
    half = scipy_stats.t.ppf(0.975, 1) * np.std([0.02, -0.1], ddof=1) / math.sqrt(2)
    assert line == f"warm start: −4.0 ± {100 * half:.1f} points final test accuracy vs random init, about as many steps"


# --- the paper's claims -------------------------------------------------------------------------


def _verdicts(rows: pd.DataFrame) -> dict[str, str]:
    checked = results.claims(rows)
    return dict(zip(checked["claim"], checked["verdict"], strict=True))


PAPER_STEPS = {"random": [900, 1000, 1100], "warm": [300, 320, 340], "shrink_perturb": [600, 650, 640]}


def test_claims_hold_on_a_table_that_shows_the_paper():
    rows = comparison(
        {"random": [0.61, 0.60, 0.62], "warm": [0.58, 0.56, 0.59], "shrink_perturb": [0.62, 0.60, 0.63]},
        steps=PAPER_STEPS,
    )
    assert _verdicts(rows) == {
        "final test accuracy: warm start < random init": "holds",
        "final test accuracy: shrink_perturb ≥ warm start": "holds",
        "optimizer steps: warm start < random init": "holds",
        "optimizer steps: warm start < shrink_perturb": "holds",
        "optimizer steps: shrink_perturb < random init": "holds",
    }
    assert results.untested_claims(results.claims(rows)) == [results.HEATMAP_CLAIM]
    text = tables.summary_text(rows)  # the verdicts end the suite's summary
    assert "- final test accuracy: warm start < random init: holds (−3.33 pts, 95% [" in text


def test_claims_are_contradicted_where_warm_start_wins():
    rows = comparison(
        {"random": [0.58, 0.56, 0.59], "warm": [0.61, 0.60, 0.62], "shrink_perturb": [0.55, 0.53, 0.57]},
        steps={"random": [300, 320, 340], "warm": [900, 1000, 1100], "shrink_perturb": [600, 650, 640]},
    )
    assert _verdicts(rows) == {
        "final test accuracy: warm start < random init": "contradicted",
        "final test accuracy: shrink_perturb ≥ warm start": "contradicted",
        "optimizer steps: warm start < random init": "contradicted",
        "optimizer steps: warm start < shrink_perturb": "contradicted",
        "optimizer steps: shrink_perturb < random init": "contradicted",
    }


def test_claims_with_noise_or_too_few_seeds():
    noisy = comparison({"random": [0.60, 0.70, 0.55], "warm": [0.62, 0.58, 0.60]}, steps=PAPER_STEPS)
    verdicts = _verdicts(noisy)
    assert verdicts["final test accuracy: warm start < random init"] == "inconclusive"
    assert verdicts["optimizer steps: warm start < random init"] == "holds"
    single = comparison({"random": [0.9], "warm": [0.5]})
    checked = results.claims(single)
    assert set(checked["verdict"]) == {"not enough seeds"}
    assert checked.loc[0, "effect"] == pytest.approx(-0.4) and math.isnan(checked.loc[0, "ci_low"])


def grid(best: tuple[float, float], seeds: int = 3) -> pd.DataFrame:
    """A λ×σ grid of shrink_perturb with warm start: final accuracy 0.8 everywhere but 0.9 at ``best``
    (λ = 1, σ = 0 is warm start), seed noise ±0.005."""
    parts = []
    cells = [(lam, sigma) for lam in (0.2, 0.6, 1.0) for sigma in (0.01, 0.1)] + [(1.0, 0.0)]
    for lam, sigma in cells:
        for seed in range(seeds):
            final = (0.9 if (lam, sigma) == best else 0.8) + 0.005 * (seed - 1)
            if (lam, sigma) == (1.0, 0.0):
                parts.append(trial(f"warm-{seed}", seed=seed, final=final, init="warm"))
            else:
                name = f"sp-{lam}-{sigma}-{seed}"
                parts.append(trial(name, seed=seed, final=final, init="shrink_perturb", shrink=lam, perturb=sigma))
    return table(*parts)


def test_heatmap_claim_finds_the_best_region_both_ways():
    inside = results.claims(grid(best=(0.6, 0.01))).set_index("claim").loc[results.HEATMAP_CLAIM]
    assert inside["verdict"] == "holds" and inside["interval"] == "bootstrap"
    assert inside["effect"] == pytest.approx(0.1)
    assert inside["treatment"] == "best inside: λ=0.6, σ=0.01"
    outside = results.claims(grid(best=(1.0, 0.0))).set_index("claim").loc[results.HEATMAP_CLAIM]
    assert outside["verdict"] == "contradicted" and outside["effect"] == pytest.approx(-0.1)
    assert outside["control"] == "best outside: λ=1, σ=0"
    # six shrink-perturb points against warm start: one line with the tally
    text = tables.summary_text(grid(best=(0.6, 0.01)))
    assert "- final test accuracy: shrink_perturb ≥ warm start: holds 6 (of 6 comparisons)" in text
    one_seed = results.claims(grid(best=(0.6, 0.01), seeds=1)).set_index("claim").loc[results.HEATMAP_CLAIM]
    assert one_seed["verdict"] == "not enough seeds"


def test_outcome_says_a_grid_once_at_its_best():
    rows = table(
        grid(best=(0.6, 0.01)), *(trial(f"random-{s}", seed=s, final=0.85 + 0.005 * (s - 1)) for s in range(3))
    )
    (line,) = tables.outcome_lines(rows)
    assert line.startswith("warm start: −5.0 ± 0.0 points final test accuracy vs random init, about as many steps; ")
    assert line.endswith("; shrink_perturb(0.6, 0.01) (best of 6): +5.0 ± 0.0 points, about as many steps")


def test_verdict_rule_at_the_edges():
    assert stats.verdict(-0.2, -0.1, -1) == "holds"
    assert stats.verdict(-0.2, 0.1, -1) == "inconclusive"
    assert stats.verdict(0.0, 0.1, -1) == "inconclusive"  # touches zero: not shown to be below
    assert stats.verdict(0.01, 0.1, -1) == "contradicted"
    assert stats.verdict(0.0, 0.1, 1) == "inconclusive"
    assert stats.verdict(0.0, 0.1, 1, strict=False) == "holds"  # ≥: touching zero is enough
    assert stats.verdict(-0.1, 0.0, 1, strict=False) == "inconclusive"
    assert stats.verdict(float("nan"), float("nan"), 1) == "not enough seeds"


# --- several folders, the report, the terminal ---------------------------------------------------


def _write(folder, rows: pd.DataFrame) -> str:
    """One Parquet file per trial, typed as one table (a cfg column that is null in one
    trial and a float in another is a float column, as the store writes it)."""
    folder.mkdir()
    typed = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
    for trial_id in rows["trial_id"].unique():
        part = typed.filter(pc.equal(typed["trial_id"], trial_id))
        pq.write_table(part, folder / f"{trial_id}.parquet")
    return str(folder)


@pytest.mark.slow
def test_load_and_report_several_folders(tmp_path, capsys):
    rows = comparison(
        {"random": [0.61, 0.60, 0.62], "warm": [0.58, 0.56, 0.59], "shrink_perturb": [0.62, 0.60, 0.63]},
        steps=PAPER_STEPS,
    )
    first = _write(tmp_path / "a", rows[rows["init"] != "warm"])
    second = _write(tmp_path / "b", rows[rows["init"] == "warm"])
    both = results.load(first, second)
    assert both["trial_id"].nunique() == 9 and isinstance(both["init"].dtype, pd.CategoricalDtype)
    with pytest.raises(ConfigError, match="is in both"):
        results.load(first, first)
    with pytest.raises(ConfigError, match="needs its own directory"):
        report.write_report([first, second])
    assert main(["report", first, second, "--out", str(tmp_path / "report")]) == 0
    out = tmp_path / "report"
    assert (out / "summary.md").read_text() == tables.summary_text(both)
    claims = pd.read_csv(out / "claims.csv")
    assert set(claims["verdict"]) == {"holds"} and len(claims) == 5
    assert (out / "pareto.png").stat().st_size > 0
    page = (out / "index.html").read_text()
    assert "claims, checked</h2>" in page and "pareto.png" in page and "warm start: −3.3 ± 1.4 points" in page
    assert "report:" in capsys.readouterr().out


def test_real_runs_that_differ_in_a_key_without_a_short_name_are_two_grid_points(tmp_path, capsys):
    # Two runs into one --out that differ in a key no short name shows (convergence.max_epochs).
    out = str(tmp_path / "runs")
    base = ["run", "--quiet", "--out", out, "--set", "rounds.initial=100", "--set", "rounds.per_round=100"]
    base += ["--set", "rounds.max_rounds=2", "--set", "dataset.holdout=0.2"]
    for epochs in (4, 5):
        assert main([*base, "--set", f"convergence.max_epochs={epochs}"]) == 0
    rows = results.load(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", results.SeedCollision)
        summary = results.summary(rows)
    assert summary["cfg.convergence.max_epochs"].tolist() == [4, 5] and summary["seeds"].tolist() == [1, 1]
    assert summary["rounds"].tolist() == [2, 2]
    final = rows.sort_values("round").groupby("cfg.convergence.max_epochs")["test_acc"].last()
    assert summary["final_test_acc_mean"].tolist() == pytest.approx(final.tolist())
