"""The search: section, ranges, tracking settings, growing suites and the search record
(no Ray here; tests/suite/test_tune.py runs searches on Tune)."""

from __future__ import annotations

import dataclasses
import io
import textwrap

import pytest

from engine.cli import main
from engine.errors import ConfigError
from engine.suite.search import RoundMeans, format_search, parse_search, search_table, stopped_rounds, write_record
from engine.suite.suite_file import load_suite, sampled_point
from engine.suite.tracking import mlflow_uri, parse_tracking
from engine.suite.tune import grid_units, prepare_out


def write(tmp_path, text: str, name: str = "suite.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


SEARCH = """
    name: lam
    base:
      rounds: {initial: 100, per_round: 100, max_rounds: 3}
    grid:
      init.shrink: RANGE
      init.perturb: {loguniform: [0.001, 1]}
      seed: [0, 1]
    search: {scheduler: asha, searcher: random, num_samples: 4, grace_period: 1}
"""


@pytest.mark.parametrize(
    "search, message",
    [
        ("{scheduler: median}", r"'search.scheduler' parameter must be one of none, asha, hyperband. Got 'median'"),
        ("{metric: accuracy}", r"'search.metric' parameter must be one of test_acc, mean_test_acc"),
        ("{time_attr: epochs}", r"'search.time_attr' parameter must be one of round, steps"),
        ("{reduction_factor: 1}", r"'search.reduction_factor' parameter must be a number > 1. Got 1"),
        ("{grace_period: 0}", r"'search.grace_period' parameter must be an int >= 1. Got 0"),
        ("{scheduler: asha, time_attr: steps}", r"'search.max_t' parameter is needed with time_attr: steps"),
        ("{searcher: bayes}", r"'search.searcher' parameter must be one of grid, random, optuna"),
        ("{searcher: grid, num_samples: 3}", r"num_samples' parameter needs searcher random or optuna"),
        ("{patience: 3}", r"Unknown search key 'patience'"),
    ],
)
def test_bad_search_sections_are_one_line_errors(tmp_path, capsys, search, message):
    path = write(tmp_path, f"name: s\ngrid:\n  seed: [0]\nsearch: {search}\n")
    with pytest.raises(ConfigError, match=message):
        load_suite(path)
    assert main(["suite", path, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warmstart: error: ")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "rng, message",
    [
        ("{normal: [0, 1]}", r"grid key 'init.shrink' takes a list of values or a range \(\{uniform"),
        ("{uniform: [1, 0]}", r"uniform range of grid key 'init.shrink' needs low < high. Got \[1, 0\]"),
        ("{uniform: [0, 2]}", r"init.shrink=2.0.*'shrink' parameter of shrink_perturb must be a float in \[0, 1\]"),
    ],
)
def test_bad_ranges_fail_before_anything_runs(tmp_path, rng, message):
    with pytest.raises(ConfigError, match=message):
        load_suite(write(tmp_path, SEARCH.replace("RANGE", rng)))


def test_ranges_need_a_sampling_searcher_and_loguniform_a_positive_low(tmp_path):
    grid_only = SEARCH.replace("RANGE", "{uniform: [0, 1]}").replace("searcher: random, num_samples: 4, ", "")
    with pytest.raises(ConfigError, match="is a range; ranges need search.searcher random or optuna"):
        load_suite(write(tmp_path, grid_only))
    with pytest.raises(ConfigError, match=r"loguniform range of grid key 'init.shrink' needs 0 < low < high"):
        load_suite(write(tmp_path, SEARCH.replace("RANGE", "{loguniform: [0, 1]}")))


def test_a_sampled_suite_keeps_seeds_inside_each_point(tmp_path):
    suite = load_suite(write(tmp_path, SEARCH.replace("RANGE", "{uniform: [0, 1]}")))
    assert suite.trials == () and suite.seeds == (0, 1)
    assert suite.search.per_point and suite.search.sampled
    assert [(r.kind, r.low, r.high) for r in suite.space.values()] == [
        ("uniform", 0.0, 1.0),
        ("loguniform", 0.001, 1.0),
    ]
    # The corners were validated: each range's two ends.
    assert sorted(t.point["init.shrink"] for t in suite.probes) == [0.0, 0.0, 0.0, 1.0]
    point = sampled_point(suite.name, suite.base, suite.seeds, {"init.shrink": 0.25, "init.perturb": 0.01})
    assert [t.config.seed for t in point] == [0, 1]
    assert {(t.config.init.shrink, t.config.init.perturb, t.config.suite) for t in point} == {(0.25, 0.01, "lam")}


def test_naming_a_sampled_point_keeps_its_trials_beside_the_suite_which_stays_as_loaded(tmp_path):
    from engine.suite.tune import SuiteProgress, Units, _sampled_name

    suite = load_suite(write(tmp_path, SEARCH.replace("RANGE", "{uniform: [0, 1]}")))
    progress = SuiteProgress(8, 0, str(tmp_path), suite.search, None, io.StringIO(), 30.0)
    units = Units({}, progress, [], {}, 4)
    config = {"cfg": {"init.shrink": 0.25, "init.perturb": 0.01}}
    name = _sampled_name(suite, config, units)
    assert _sampled_name(suite, config, units) == name  # Tune names a trial twice (its name, its folder)
    assert [(t.config.seed, t.config.init.shrink) for t in units.proposed] == [(0, 0.25), (1, 0.25)]
    assert progress.units[name]["trial_ids"] == [t.trial_id for t in units.proposed]
    assert suite.trials == ()  # the suite is as loaded
    with pytest.raises(dataclasses.FrozenInstanceError):
        suite.trials = tuple(units.proposed)


def test_a_scheduler_groups_a_grid_points_seeds_into_one_unit(tmp_path):
    text = """
        name: g
        grid:
          init.shrink: [0.2, 0.6]
          seed: [0, 1, 2]
        SEARCH
    """
    plain = load_suite(write(tmp_path, text.replace("SEARCH", ""), "p.yaml"))
    assert grid_units(plain) == [[i] for i in range(6)]
    asha = load_suite(write(tmp_path, text.replace("SEARCH", "search: {scheduler: asha}"), "a.yaml"))
    assert grid_units(asha) == [[0, 1, 2], [3, 4, 5]]
    assert asha.search.metric == "mean_test_acc" and asha.search.mode == "max"
    assert parse_search({"metric": "test_loss"}).mode == "min"


def test_round_means_average_seeds_and_accumulate_compute():
    def row(round_, acc, steps, seconds):
        return {
            "round": round_,
            "n_labeled": 100 * round_,
            "test_acc": acc,
            "test_loss": 1 - acc,
            "train_acc": 1.0,
            "train_loss": 0.0,
            "epochs": 3,
            "steps": steps,
            "train_seconds": seconds,
            "acquire_seconds": 0.5,
            "eval_seconds": 0.5,
        }

    means = RoundMeans(rounds=3, seeds=2)
    first = means.report([row(1, 0.5, 10, 1.0), row(1, 0.7, 20, 2.0)])
    assert first["test_acc"] == pytest.approx(0.6) and first["mean_test_acc"] == pytest.approx(0.6)
    assert (first["steps"], first["seconds"], first["round"], first["seeds"]) == (30, 5.0, 1, 2)
    second = means.report([row(2, 0.8, 5, 1.0), row(2, 0.8, 5, 1.0)])
    assert second["test_acc"] == pytest.approx(0.8) and second["mean_test_acc"] == pytest.approx(0.7)
    assert (second["steps"], second["seconds"], second["round_steps"]) == (40, 9.0, 10)


def test_the_search_record_says_where_each_point_stopped(tmp_path):
    spec = parse_search({"scheduler": "asha"})
    record = {
        "search": spec.to_dict(),
        "points": {
            "p-a": {"point": {"init.shrink": 0.2}, "trial_ids": ["a0", "a1"], "seeds": [0, 1], "round": 3,
                    "rounds": 3, "stopped_by": None, "metric": 0.91, "steps": 900, "seconds": 9.0},
            "p-b": {"point": {"init.shrink": 0.6}, "trial_ids": ["b0", "b1"], "seeds": [0, 1], "round": 1,
                    "rounds": 3, "stopped_by": "asha", "metric": 0.95, "steps": 100, "seconds": 1.0},
            "p-c": {"point": {"init.shrink": 0.9}, "trial_ids": ["c0", "c1"], "seeds": [0, 1], "round": 3,
                    "rounds": 3, "stopped_by": None, "metric": 0.93, "steps": 700, "seconds": 7.0},
        },
    }  # fmt: skip
    table = search_table(record)
    # Complete points first, best first: a stopped point never is "the best".
    assert table["init.shrink"].tolist() == [0.9, 0.2, 0.6]
    assert table["stopped_by"].tolist() == ["", "", "asha"]
    text = format_search(record)
    assert "3 points tried, 1 stopped early; 1700 optimizer steps" in text
    assert "best point: init.shrink=0.9: mean_test_acc 0.9300 (2 seed(s), 700 steps, 7.0 s)" in text
    # The same scheduler keeps stopped points stopped; another one continues them.
    assert stopped_rounds(record, spec) == {"b0": 1, "b1": 1}
    assert stopped_rounds(record, parse_search({"scheduler": "hyperband"})) == {}
    write_record(str(tmp_path), record)
    from engine.suite.search import read_record

    assert read_record(str(tmp_path)) == record


GROWING = """
    name: grow
    base:
      optimizer: {lr: LR}
      rounds: {initial: 100, per_round: 100, max_rounds: ROUNDS}
    grid:
      init.shrink: SHRINKS
      seed: SEEDS
"""


def grown(tmp_path, name, lr="0.001", rounds="2", shrinks="[0.2, 0.6]", seeds="[0]"):
    text = GROWING.replace("LR", lr).replace("ROUNDS", rounds).replace("SHRINKS", shrinks).replace("SEEDS", seeds)
    return load_suite(write(tmp_path, text, f"{name}.yaml"))


def test_resume_accepts_a_grown_suite_and_names_a_changed_base_key(tmp_path):
    out = str(tmp_path / "out")
    prepare_out(grown(tmp_path, "a"), out, resume=False)
    # New seeds, new grid values and more rounds: accepted, and recorded.
    bigger = grown(tmp_path, "b", rounds="4", shrinks="[0.2, 0.6, 0.9]", seeds="[0, 1]")
    prepare_out(bigger, out, resume=True)
    from engine.storage.store import read_manifest

    assert sorted(read_manifest(out)["trials"]) == sorted(t.trial_id for t in bigger.trials)
    # A changed base: refused, with the key.
    with pytest.raises(ConfigError, match=r"changed since .*: base key 'optimizer.lr' was 0.001, now 0.01; --resume"):
        prepare_out(grown(tmp_path, "c", lr="0.01", seeds="[0, 1]"), out, resume=True)
    # A grid value that went away: refused, naming a trial.
    with pytest.raises(ConfigError, match=r"its trial '.*' \(and 3 more\) is not in it any more"):
        prepare_out(grown(tmp_path, "d", shrinks="[0.2]", seeds="[0, 1]"), out, resume=True)


@pytest.mark.slow
def test_tracking_settings(tmp_path):
    assert parse_tracking(None) == {}
    assert parse_tracking(["tensorboard"], ["mlflow=file:/tmp/x"]) == {
        "tensorboard": {},
        "mlflow": {"tracking_uri": "file:/tmp/x"},
    }
    assert parse_tracking({"wandb": {"project": "p", "mode": "offline"}}) == {
        "wandb": {"project": "p", "mode": "offline"}
    }
    assert mlflow_uri({}, str(tmp_path)) == f"sqlite:///{tmp_path}/_warmstart/mlflow.db"
    with pytest.raises(ConfigError, match="Unknown tracker 'neptune'; known: tensorboard, mlflow, wandb"):
        parse_tracking({"neptune": True})
    with pytest.raises(ConfigError, match="Unknown key 'uri' in 'tracking.mlflow'; it takes tracking_uri, experiment"):
        parse_tracking({"mlflow": {"uri": "x"}})
    with pytest.raises(ConfigError, match="--tracker tensorboard takes no value"):
        parse_tracking(None, ["tensorboard=x"])
    path = write(tmp_path, "name: t\ngrid:\n  seed: [0]\n")
    assert main(["suite", path, "--out", str(tmp_path / "o"), "--tracker", "comet"]) == 2
