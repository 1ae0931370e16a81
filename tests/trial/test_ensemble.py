"""Trials trained as one stacked ensemble (issue 20): each member computes what it computes
alone, stops alone, resumes alone; a suite's grouping; the suite's outcome unchanged.
Small data: digits and a cut MNIST-1D, the mlp."""

from __future__ import annotations

import math
import textwrap

import pandas as pd
import pytest
import torch

from engine.analysis.results import claims, summary
from engine.cli import main
from engine.schema.config import build
from engine.suite.stacking import ensemble_units
from engine.suite.suite_file import load_suite
from engine.trial.driver import STACKED, Driver
from engine.trial.session import start_trial
from engine.trial.stacked import start_members

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXACT = ["round", "n_labeled", "epochs", "steps", "stop_reason", "acquired", "trial_id", "precise_bn"]
CLOSE = ["train_acc", "train_loss", "test_acc", "test_loss"]


def member_configs(acquisition: str = "margin", rounds: int = 2) -> list:
    base = {
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "width": 32, "depth": 2},
        "device": "cpu",
        "rounds": {"initial": 100, "per_round": 100, "max_rounds": rounds},
        "acquisition": {"name": acquisition},
    }
    members = [
        ({"name": "random"}, 0, 0.99),
        ({"name": "warm"}, 1, 0.99),
        ({"name": "shrink_perturb", "shrink": 0.6, "perturb": 0.01}, 2, 0.99),
        ({"name": "random"}, 3, 0.6),  # converges in a few epochs: stops while the others train on
    ]
    return [
        build({**base, "init": init, "seed": seed, "convergence": {"train_acc": acc, "max_epochs": 200}})
        for init, seed, acc in members
    ]


def exact(row: dict) -> dict:
    return {c: [int(i) for i in row[c]] if c == "acquired" else row[c] for c in EXACT}


def assert_same_rows(alone: list[dict], stacked: list[dict]) -> None:
    assert len(alone) == len(stacked)
    for a, s in zip(alone, stacked, strict=True):
        assert exact(a) == exact(s)
        for column in CLOSE:
            assert math.isclose(a[column], s[column], rel_tol=1e-5, abs_tol=1e-6), (a["round"], column)
        assert a["ensemble"] is None and s["ensemble"] == "e-test/4"
        assert a["train_timing"] == "alone" and s["train_timing"] == "stacked_share"  # a share of the stack's time


def test_each_member_computes_what_it_computes_alone_and_stops_alone():
    cfgs = member_configs()
    alone = []
    for cfg in cfgs:
        with Driver([start_trial(cfg, None)]) as driver:
            ((_, first),) = driver.step()  # round 1: the model before any acquisition by it
            alone.append((first.model, driver.run()))
    with Driver(start_members(cfgs, None, "e-test/4"), STACKED) as ensemble:
        first = dict(ensemble.step())
        models = {i: result.model for i, result in first.items()}
        ensemble.run()
        for i, (model, rows) in enumerate(alone):
            # Round 1 of each member: the same parameters as alone, to float tolerance ...
            for (name, a), b in zip(model.state_dict().items(), models[i].state_dict().values(), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
            # ... and every round's row (round 2 picks by margin from the stacked scoring pass).
            assert_same_rows(rows, ensemble.sessions[i].rows)
    epochs = [rows[0]["epochs"] for _, rows in alone]
    assert epochs[3] < min(epochs[:3])  # the early member really stopped first, alone


def test_a_member_resumes_after_its_last_completed_round(tmp_path):
    cfgs = member_configs(acquisition="random", rounds=3)
    out = str(tmp_path)
    with Driver([start_trial(cfgs[1], out)]) as driver:  # one member ran a round before, alone
        driver.step()
    saved = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    with Driver(start_members(cfgs, out, "e-test/4"), STACKED) as ensemble:
        assert [s.state.round for s in ensemble.sessions] == [0, 1, 0, 0]
        ensemble.run()
    table = pd.read_parquet(out)
    assert len(table) == 4 * 3 and not table.duplicated(["trial_id", "round"]).any()
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    assert all(after[name] == t for name, t in saved.items())  # its round 1 was not recomputed
    resumed = table[table["trial_id"] == cfgs[1].trial_id()].sort_values("round")
    assert resumed["ensemble"].fillna("alone").tolist() == ["alone", "e-test/4", "e-test/4"]
    assert resumed["train_timing"].tolist() == ["alone", "stacked_share", "stacked_share"]
    # Provenance: the stacked round's start is every member's; each row ends after it starts.
    stacked = table[table["ensemble"] == "e-test/4"]
    assert (stacked.groupby("round")["started_at"].nunique() == 1).all()
    assert (table["started_at"] <= table["ended_at"]).all() and str(table["started_at"].dt.tz) == "UTC"
    assert set(table["cpu_isa"]) == {torch.backends.cpu.get_cpu_capability()}
    assert set(table["torch_version"]) == {torch.__version__} and table["device_name"].notna().all()
    with Driver([start_trial(cfgs[1], None)]) as driver:
        assert_same_rows(driver.run()[1:], resumed.iloc[1:].to_dict("records"))


PLUGIN = '''
import math
from torch import nn
from engine.compute.models import Classifier, register

@register("plain_mlp")
def plain_mlp(input_shape, num_classes, width: int = 16):
    """An mlp registered without stackable=True."""
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU()),
                      nn.Linear(width, num_classes), [["features.1"], ["head"]])
'''


def test_grouping_and_a_model_plugin_that_is_not_stackable_runs_alone(tmp_path):
    (tmp_path / "plain_mlp.py").write_text(PLUGIN)
    suite = tmp_path / "grouped.yaml"
    suite.write_text(
        textwrap.dedent(f"""\
        name: grouped
        base: {{device: cpu, plugins: [{tmp_path / "plain_mlp.py"}], performance: {{ensemble_size: 3}}}}
        grid:
          - model: [{{name: mlp}}, {{name: plain_mlp}}, {{name: cnn1d}}]
            seed: [0, 1, 2, 3, 4]
          - {{model: [{{name: mlp, width: 50}}], seed: [0], performance.ensemble: [false]}}
        """)
    )
    trials = load_suite(str(suite)).trials
    grouping = ensemble_units(trials, "grouped", per_point=False, max_concurrent=1)
    models = [[trials[i].config.model.name for i in unit] for unit in grouping.units]
    # mlp: 5 trials in ensembles of at most 3; cnn1d: not measured faster on a CPU (auto); the rest alone.
    assert sorted(len(u) for u, label in zip(grouping.units, grouping.labels, strict=True) if label) == [2, 3]
    assert all(m == ["mlp"] * len(m) for m, label in zip(models, grouping.labels, strict=True) if label)
    assert sum(len(u) for u in grouping.units) == len(trials)
    assert all(label.endswith(f"/{len(u)}") for u, label in zip(grouping.units, grouping.labels, strict=True) if label)
    assert len(grouping.notes) == 5
    assert "runs alone: its model 'plain_mlp' is registered without stackable=True" in grouping.notes[0]


@pytest.mark.parametrize("seeds,sizes", [(8, []), (40, [40]), (70, [35, 35])])
def test_on_a_gpu_auto_stacks_only_from_the_measured_break_even(tmp_path, seeds, sizes):
    """The mlp on CUDA was slower stacked at 8 members and faster from 32 (FASTER): under
    auto a smaller group runs alone; ``ensemble: true`` stacks it all the same."""
    suite = tmp_path / "gpu.yaml"
    suite.write_text(
        f"name: gpu\nbase: {{device: cuda, performance: {{ensemble_size: 64}}}}\ngrid: {{seed: {list(range(seeds))}}}\n"
    )
    trials = load_suite(str(suite)).trials
    grouping = ensemble_units(trials, "gpu", per_point=False, max_concurrent=4)
    assert sorted(len(u) for u, label in zip(grouping.units, grouping.labels, strict=True) if label) == sizes
    assert sum(len(u) for u in grouping.units) == seeds
    forced = tmp_path / "forced.yaml"
    forced.write_text(suite.read_text().replace("ensemble_size: 64", "ensemble_size: 64, ensemble: true"))
    trials = load_suite(str(forced)).trials
    grouping = ensemble_units(trials, "forced", per_point=False, max_concurrent=4)
    assert all(label for label in grouping.labels)


QUICKSTART = """
name: quick_cut
base:
  dataset: {name: mnist1d, size: 2000, eval: test}
  model: {name: mlp, activation: relu, width: 100, depth: 2}
  rounds: {initial: 200, per_round: 200, max_rounds: 3}
  convergence: {train_acc: 0.99, max_epochs: 150}
grid:
  init:
    - {name: random}
    - {name: warm}
    - {name: shrink_perturb, shrink: 0.6, perturb: 0.01}
  seed: [0, 1, 2]
"""


def test_a_quickstart_cut_reaches_the_same_claims_stacked(ray_address, tmp_path, capsys):
    path = tmp_path / "quick_cut.yaml"
    path.write_text(QUICKSTART)
    tables, printed = {}, {}
    for setting in ("false", "true"):
        out = tmp_path / setting
        sets = ["--set", f"performance.ensemble={setting}", "--max-concurrent", "2"]
        assert main(["suite", str(path), "--out", str(out), *sets]) == 0
        tables[setting] = pd.read_parquet(out).sort_values(["trial_id", "round"]).reset_index(drop=True)
        printed[setting] = capsys.readouterr().out
    alone, stacked = tables["false"], tables["true"]
    assert alone["ensemble"].isna().all() and stacked["ensemble"].notna().all()
    assert stacked["ensemble"].nunique() == 2  # 9 trials, 2 CPUs: two ensembles of 4 and 5
    assert (alone["train_timing"] == "alone").all() and (stacked["train_timing"] == "stacked_share").all()
    # The end-of-suite summary says so, and shows no total train time for the stacked trials.
    assert "9 of 9 trials trained stacked" in printed["true"] and "trained stacked" not in printed["false"]
    assert summary(stacked)["train_seconds_mean"].isna().all() and summary(alone)["train_seconds_mean"].notna().all()
    # Round 1 of every trial agrees; later rounds of ~100 epochs each may drift apart by an epoch
    # (float sums in another order, amplified by training), so the outcome is what must agree.
    first = alone["round"] == 1
    assert [exact(r) for r in alone[first].to_dict("records")] == [exact(r) for r in stacked[first].to_dict("records")]
    for column in CLOSE:
        assert ((alone[first][column] - stacked[first][column]).abs() <= 1e-4).all(), column
    assert (alone["epochs"] - stacked["epochs"]).abs().max() <= 5
    verdicts = [claims(t)[["claim", "treatment", "control", "verdict"]] for t in (alone, stacked)]
    assert len(verdicts[0]) >= 4
    pd.testing.assert_frame_equal(verdicts[0], verdicts[1])


def test_the_gpu_ensemble_benchmark_runs_at_toy_sizes_anywhere(tmp_path):
    import json

    from benchmarks import ensemble

    assert ensemble.main(["--gpu", "--smoke", "--out", str(tmp_path)]) == 0
    cases = json.loads((tmp_path / "ensemble.json").read_text())["cases"]
    assert [(c["model"], c["members"]) for c in cases] == [("mlp", 2), ("mlp", 3), ("resnet18", 2), ("resnet18", 3)]
    assert all(c["images_per_s_stacked"] > 0 and c["images_per_s_one_trial"] > 0 for c in cases)


@pytest.mark.parametrize(
    "name, params",
    [
        ("mlp", {"width": 16, "depth": 2, "activation": "relu"}),
        ("mlp", {"width": 16, "depth": 3, "activation": "tanh", "bias": False}),
        ("logreg", {}),
    ],
)
def test_a_plain_chain_stacks_without_vmap_to_the_same_bits(name, params):
    from engine.compute import stacked
    from engine.compute.models import build_model

    torch.manual_seed(0)
    models = [build_model(name, params, (2, 8), 10) for _ in range(3)]
    x, y = torch.randn(3, 7, 2, 8), torch.randint(0, 10, (3, 7))
    direct, mapped = stacked.Stack(models), stacked.Stack(models)
    assert direct.chain is not None
    mapped.chain = None  # the vmap path
    results = []
    for stack in (direct, mapped):
        out = stack.forward(x)
        torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()).backward()
        results.append((out, [p.grad for p in stack.params.values()]))
    assert results[0][0].shape == (3, 7, 10)
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_a_model_that_is_not_a_plain_chain_runs_under_vmap():
    from engine.compute.models import Classifier, build_model
    from engine.compute.stacked import Stack

    class Twice(Classifier):
        def forward(self, x):
            return 2 * super().forward(x)

    mlp = build_model("mlp", {"width": 8, "depth": 1}, (4,), 3)
    hooked = build_model("mlp", {"width": 8, "depth": 1}, (4,), 3)
    hooked.head.register_forward_hook(lambda module, args, out: out * 2)
    dropout = build_model("mlp", {"width": 8, "depth": 1, "dropout": 0.5}, (4,), 3)
    assert Stack([mlp, mlp]).chain is not None
    assert Stack([build_model("cnn1d", {}, (1, 40), 3)] * 2).chain is None
    assert Stack([Twice(mlp.features, mlp.head)] * 2).chain is None
    assert Stack([hooked, hooked]).chain is None
    assert Stack([dropout, dropout]).chain is None
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
    try:
        assert Stack([mlp, mlp]).chain is None
    finally:
        handle.remove()
    assert Stack([mlp, mlp]).chain is not None


def test_the_benchmark_measures_how_full_a_stack_stays():
    from benchmarks.ensemble import stack_fill

    rows = [
        {"round": 1, "epochs": 10, "n_labeled": 100},
        {"round": 1, "epochs": 10, "n_labeled": 100},
        {"round": 2, "epochs": 10, "n_labeled": 200},
        {"round": 2, "epochs": 5, "n_labeled": 200},
    ]
    # round 2: 15 member epochs of 20; overall (20 * 100 + 15 * 200) / (20 * 100 + 20 * 200)
    assert stack_fill(rows) == {"by_round": {1: 1.0, 2: 0.75}, "overall": round(5000 / 6000, 3)}


def test_the_benchmark_prints_the_readme_tables(capsys):
    from benchmarks.ensemble import print_cpu

    arm = {"ensembles": 2, "wall_seconds": 30.0, "steps_per_second": 2000.0, "final_test_acc": 0.6}
    suite = {
        "suite": "mnist1d_sp_sweep",
        "seeds": [0],
        "rounds": 4,
        "speedup": 2.0,
        "runs": [
            {**arm, "ensemble": False, "wall_seconds": 60.0, "load_before": [1.5], "load_after": [1.9]},
            {**arm, "ensemble": True, "load_before": [1.9], "load_after": [1.4]},
        ],
    }
    mlp = {"model": "mlp", "members": 11, "alone_seconds": [20.0, 22.0], "stacked_seconds": [10.0, 9.0]}
    mlp |= {"speedup": 2.1, "steps_per_second_alone": 300.0, "steps_per_second_stacked": 700.0, "load": [1.2]}
    print_cpu({"cpus": 2, "suite": suite, "in_process": [mlp]})
    out = capsys.readouterr().out
    assert "| 1 | off (trials alone) | 60.0 | 2000.0 | 0.6 | 1.5 → 1.9 |" in out
    assert "| 1 | on (2 ensembles) | 30.0 | 2000.0 | 0.6 | 1.9 → 1.4 |" in out
    assert "stacked / alone, median wall: 2.0x" in out
    assert "| mlp | 11 | 21.0 | 9.5 | 2.1x | 300.0 → 700.0 | 1.2 |" in out


def test_under_autocast_a_stacked_plain_chain_computes_what_vmap_computes():
    from engine.compute.models import build_model
    from engine.compute.stacked import Stack

    torch.manual_seed(0)
    models = [build_model("mlp", {"width": 16, "depth": 2}, (8,), 10) for _ in range(2)]
    x = torch.randn(2, 5, 8)
    direct, mapped = Stack(models), Stack(models)
    mapped.chain = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = direct.forward(x), mapped.forward(x)
    assert out.shape == (2, 5, 10) and out.dtype == expected.dtype
    assert torch.equal(out, expected)
