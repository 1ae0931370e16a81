"""Suites on the shared local Ray instance: one table, a failing trial, resume after the
driver dies.  Tiny trials (digits, mlp, 2-3 rounds) keep each suite to seconds of work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from engine.cli import main
from engine.storage.check import check
from engine.storage.store import TrialStore
from engine.suite.search import read_record
from engine.suite.suite_file import load_suite

# Every suite here runs on Ray Tune.
pytestmark = pytest.mark.slow

BASE = """
    base:
      rounds: {initial: 200, per_round: 200, max_rounds: ROUNDS}
      convergence: {train_acc: 0.95}
"""


def suite_file(tmp_path, name: str, grid: str, rounds: int = 2, extra: str = "") -> str:
    text = f"name: {name}\n" + textwrap.dedent(BASE).replace("ROUNDS", str(rounds)) + extra + "grid:\n" + grid
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_suite_writes_one_table_with_every_trial_round_once(ray_address, tmp_path, capsys):
    path = suite_file(tmp_path, "tiny", "  init: [{name: random}, {name: warm}]\n  seed: [0, 1]\n")
    out = tmp_path / "out"
    assert main(["suite", path, "--out", str(out)]) == 0
    table = pd.read_parquet(out)
    ids = [t.trial_id for t in load_suite(path).trials]
    assert sorted(set(table["trial_id"])) == sorted(ids)
    assert len(table) == 4 * 2
    assert not table.duplicated(["trial_id", "round"]).any()
    assert set(table["suite"]) == {"tiny"}
    assert sorted(table.groupby("trial_id")["round"].apply(list).tolist()) == [[1, 2]] * 4
    printed = capsys.readouterr().out
    assert "[4/4 done]" in printed
    # The summary: one line per grid point, seeds counted.
    summary = printed.split("finished in")[1]
    assert "random" in summary and "warm" in summary and "   2 " in summary
    assert (out / "_report" / "summary.md").read_text() in summary  # the terminal prints what report writes

    # Running it again is refused without --resume; with --resume everything is skipped.
    assert main(["suite", path, "--out", str(out)]) == 2
    assert main(["suite", path, "--out", str(out), "--resume"]) == 0
    assert "4 of 4 trials already complete" in capsys.readouterr().out
    assert len(pd.read_parquet(out)) == 8
    # A row file holding another round's row (valid Parquet) is not "complete": its trial runs
    # again, and its resume recomputes the round and verifies the others.
    first = sorted(out.glob("*-round0001.parquet"))[0]
    reference = pd.read_parquet(first)[["trial_id", "round", "test_acc", "steps"]]
    first.write_bytes(first.with_name(first.name.replace("-round0001", "-round0002")).read_bytes())
    assert main(["suite", path, "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    # its unit runs (an ensemble: 2 trials), so 2 of 4 are complete
    assert "2 of 4 trials already complete" in printed and "4 of 4 trials already complete" not in printed
    assert pd.read_parquet(first)[reference.columns].equals(reference)
    assert not any(trial.problems for trial in check(str(out)))  # every round of it again, status included

    # The suite grows: a third round for every trial and a new seed; only that runs.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    grown = suite_file(tmp_path, "tiny", "  init: [{name: random}, {name: warm}]\n  seed: [0, 1, 2]\n", rounds=3)
    assert main(["suite", grown, "--out", str(out), "--resume"]) == 0
    table = pd.read_parquet(out)
    assert len(table) == 6 * 3 and not table.duplicated(["trial_id", "round"]).any()
    assert set(table[table["trial_id"].isin(ids)]["trial_id"]) == set(ids)  # the same trials, continued
    assert all(before[p.name] == p.stat().st_mtime_ns for p in out.glob("*.parquet") if p.name in before)
    # A changed base config is refused, with the key that changed.
    changed = tmp_path / "changed.yaml"
    changed.write_text(open(grown).read().replace("train_acc: 0.95", "train_acc: 0.9"))
    capsys.readouterr()
    assert main(["suite", str(changed), "--out", str(out), "--resume"]) == 2
    assert "base key 'convergence.train_acc' was 0.95, now 0.9" in capsys.readouterr().err


EXPLODE = '''
from strategies.init import register

@register("explode")
def explode(prev, fresh):
    """Fails in round 2, to test failure reporting."""
    raise RuntimeError("boom in round 2")
'''


def test_a_failing_trial_is_reported_and_the_others_finish(ray_address, tmp_path, capsys):
    plugin = tmp_path / "explode.py"
    plugin.write_text(EXPLODE)
    path = suite_file(
        tmp_path,
        "failing",
        "  init: [{name: explode}, {name: warm}]\n",
        extra=f"  plugins: [{plugin}]\n  scaling: {{max_failures: 0}}\n",
    )
    out = tmp_path / "out"
    assert main(["suite", path, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    suite = load_suite(path)
    failed_id, ok_id = suite.trials[0].trial_id, suite.trials[1].trial_id
    assert "1 trial(s) failed" in err
    assert failed_id in err and "boom in round 2" in err
    table = pd.read_parquet(out)
    assert sorted(table[table["trial_id"] == ok_id]["round"]) == [1, 2]
    assert sorted(table[table["trial_id"] == failed_id]["round"]) == [1]  # round 1 is never lost


def test_resume_after_the_driver_is_killed(ray_address, tmp_path, capsys):
    # One trial at a time, each its own Tune trial (not one ensemble, whose members finish together).
    extra = "  performance: {ensemble: false}\n"
    path = suite_file(tmp_path, "resumable", "  seed: [0, 1, 2]\n", rounds=5, extra=extra)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "engine", "suite", path, "--out", str(out), "--max-concurrent", "1"]
    driver = subprocess.Popen([*command, "--address", ray_address], stdout=subprocess.DEVNULL, env=os.environ.copy())
    trials = load_suite(path).trials
    first = TrialStore(str(out), trials[0].trial_id)
    deadline = time.time() + 300
    while time.time() < deadline:
        status = first.load_status()
        if status and status["round"] == status["rounds"]:
            break
        assert driver.poll() is None, "the driver ended early"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert 5 <= len(before) < 15, "the driver should die after the first trial and before the last"

    assert main(["suite", path, "--out", str(out), "--resume"]) == 0
    assert "1 of 3 trials already complete" in capsys.readouterr().out or len(before) > 5
    table = pd.read_parquet(out)
    assert len(table) == 15 and not table.duplicated(["trial_id", "round"]).any()
    # The finished trial was skipped: its rows were not rewritten.
    for p in out.glob(f"{trials[0].trial_id}-*.parquet"):
        assert before[p.name] == p.stat().st_mtime_ns


@pytest.mark.parametrize("flag", ["--max-concurrent=0"])
def test_bad_suite_arguments_exit_2(tmp_path, flag, capsys):
    path = suite_file(tmp_path, "args", "  seed: [0]\n")
    assert main(["suite", path, "--out", str(tmp_path / "o"), flag]) == 2
    assert "warmstart: error:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``: {tag: [(step, value)]}
    (read with tensorboardX's protobuf: TFRecord framing, 12-byte header, 4-byte footer)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


ASHA_SUITE = """name: asha
base:
  rounds: {initial: 200, per_round: 200, max_rounds: 3}
  convergence: {train_acc: 0.95}
grid:
  convergence.max_epochs: [100, 1]
  seed: SEEDS
search: {scheduler: asha, metric: test_acc, grace_period: 1, reduction_factor: 2}
tracking: {tensorboard: true}
"""


def test_asha_stops_a_point_with_its_seeds_and_trackers_log_every_round(ray_address, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    path = tmp_path / "asha.yaml"
    path.write_text(ASHA_SUITE.replace("SEEDS", "[0, 1]"))
    out = tmp_path / "out"
    # One trial at a time: the good point (max_epochs 100) reaches every rung first, then
    # the point that trains one epoch a round falls below its cutoff at round 1.  (Points
    # go to ASHA in a shuffled order seeded by search.seed; seed 0 keeps these two as listed.)
    command = ["suite", str(path), "--out", str(out), "--max-concurrent", "1", "--tracker", "mlflow"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "convergence.max_epochs=100: 3 rounds, final test_acc" in printed and "(mean of 2 seeds)" in printed
    assert "convergence.max_epochs=1: stopped by asha after round 1 of 3" in printed
    table = pd.read_parquet(out)
    good = table[table["cfg.convergence.max_epochs"] == 100]
    bad = table[table["cfg.convergence.max_epochs"] == 1]
    assert sorted(good["round"]) == [1, 1, 2, 2, 3, 3] and sorted(bad["round"]) == [1, 1]  # rows kept

    record = read_record(str(out))
    points = record["points"]
    assert points["convergence.max_epochs=1"]["stopped_by"] == "asha"
    assert points["convergence.max_epochs=1"]["round"] == 1
    kept = points["convergence.max_epochs=100"]
    assert kept["stopped_by"] is None and kept["round"] == kept["rounds"] == 3
    assert kept["metric"] == pytest.approx(good[good["round"] == 3]["test_acc"].mean())
    assert kept["steps"] == good["steps"].sum()
    assert kept["mean_test_acc"] == pytest.approx(good.groupby("round")["test_acc"].mean().mean())

    # TensorBoard: each round's seed mean at step = round, in the good point's trial folder.
    per_round = good.groupby("round")["test_acc"].mean()
    folders = [p for p in (out / "_warmstart" / "tune" / "asha").iterdir() if p.is_dir()]
    logged = {}
    for folder in folders:
        scalars = tensorboard_scalars(folder)
        if len(scalars.get("ray/tune/test_acc", [])) == 3:
            logged = scalars
    assert [step for step, _ in logged["ray/tune/test_acc"]] == [1, 2, 3]
    assert [v for _, v in logged["ray/tune/test_acc"]] == pytest.approx(per_round.tolist(), abs=1e-6)
    assert logged["ray/tune/steps"][-1][1] == good["steps"].sum()

    # MLflow (a local store under out): the whole config as params, each round's metrics.
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/_warmstart/mlflow.db")
    experiment = client.get_experiment_by_name("asha")
    runs = {r.data.params["cfg/convergence.max_epochs"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"100", "1"}
    params = runs["100"].data.params
    assert params["cfg/dataset.name"] == "digits" and params["cfg/rounds.per_round"] == "200"
    assert params["cfg/init.shrink"] == "0.4" and params["seeds"] == "[0, 1]"
    history = client.get_metric_history(runs["100"].info.run_id, "test_acc")
    assert [(m.step, round(m.value, 6)) for m in history] == [(r, round(v, 6)) for r, v in per_round.items()]
    assert [m.step for m in client.get_metric_history(runs["1"].info.run_id, "test_acc")] == [1]

    # warmstart report shows the search.
    assert main(["report", str(out)]) == 0
    search_md = (out / "_report" / "search.md").read_text()
    assert "best point: convergence.max_epochs=100" in search_md and "asha" in search_md

    # The suite grows by a seed: only the new seed's rounds run; the stopped point stays stopped.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    path.write_text(ASHA_SUITE.replace("SEEDS", "[0, 1, 2]"))
    assert main(["suite", str(path), "--out", str(out), "--max-concurrent", "1", "--resume"]) == 0
    table = pd.read_parquet(out)
    assert sorted(table[table["seed"] == 2]["round"]) == [1, 1, 2, 3]
    assert len(table) == 8 + 4 and not table.duplicated(["trial_id", "round"]).any()
    for p in out.glob("*.parquet"):
        if p.name in before:
            assert before[p.name] == p.stat().st_mtime_ns, p.name
    assert read_record(str(out))["points"]["convergence.max_epochs=100"]["seeds"] == [0, 1, 2]


SAMPLED_SUITE = """name: sampled
base:
  rounds: {initial: 200, per_round: 200, max_rounds: 2}
  convergence: {train_acc: 0.95}
space:
  init.shrink: {uniform: [0.2, 0.8]}
  init.perturb: {loguniform: [0.001, 0.1]}
  seed: [0]
search: {searcher: optuna, num_samples: 2, metric: mean_test_acc}
tracking: {wandb: {project: ws-test, mode: offline}}
"""


def test_optuna_samples_points_from_ranges_and_wandb_logs_offline(ray_address, tmp_path, capsys):
    path = tmp_path / "sampled.yaml"
    path.write_text(SAMPLED_SUITE)
    out = tmp_path / "out"
    assert main(["suite", str(path), "--out", str(out)]) == 0
    assert "2 points x 1 seed(s) from a optuna searcher" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert len(table) == 4 and table["trial_id"].nunique() == 2
    assert table["cfg.init.shrink"].between(0.2, 0.8).all()
    assert table["cfg.init.perturb"].between(0.001, 0.1).all()
    points = read_record(str(out))["points"]
    assert len(points) == 2 and all(p["round"] == 2 and p["stopped_by"] is None for p in points.values())
    from engine.storage.store import read_manifest

    assert sorted(read_manifest(str(out))["trials"]) == sorted(set(table["trial_id"]))
    # W&B, offline: one run per point, with the config and the rounds in its files.
    runs = list(out.glob("_warmstart/wandb/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    for run in runs:  # wandb's own record format: the config's keys and the metrics' names are in it
        data = run.read_bytes()
        assert b"init.shrink" in data and b"rounds.per_round" in data and b"mean_test_acc" in data


def test_ctrl_c_stops_the_suite_cleanly_and_resume_continues(ray_address, tmp_path, capsys):
    path = suite_file(tmp_path, "interrupted", "  seed: [0, 1, 2]\n", rounds=4)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "engine", "suite", path, "--out", str(out), "--max-concurrent", "1"]
    driver = subprocess.Popen(
        [*command, "--address", ray_address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    first = TrialStore(str(out), load_suite(path).trials[0].trial_id)
    deadline = time.time() + 300
    while time.time() < deadline and not (first.load_status() or {}).get("round"):
        assert driver.poll() is None, driver.stderr.read()
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) == 130
    assert "interrupted; completed rounds are saved" in driver.stderr.read()
    assert len(pd.read_parquet(out)) < 12

    assert main(["suite", path, "--out", str(out), "--resume"]) == 0
    table = pd.read_parquet(out)
    assert len(table) == 12 and not table.duplicated(["trial_id", "round"]).any()


def test_a_point_on_ray_train_reports_its_seeds_rounds_from_rank_0(ray_address, tmp_path, capsys):
    # scaling.workers: each seed is a Ray Train run of its own; rank 0's rows come back to
    # the Tune trial, which reports the round once both seeds have it.
    path = suite_file(
        tmp_path,
        "ddp",
        "  seed: [0, 1]\n",
        extra="  scaling: {workers: 1, max_failures: 0}\nsearch: {scheduler: asha, grace_period: 1}\n",
    )
    out = tmp_path / "out"
    assert main(["suite", path, "--out", str(out)]) == 0
    assert "2 rounds, final test_acc" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert sorted(table["round"]) == [1, 1, 2, 2] and set(table["world_size"]) == {1}
    (point,) = read_record(str(out))["points"].values()
    assert point["round"] == 2 and point["seeds"] == [0, 1]
    assert point["steps"] == table["steps"].sum()
    assert point["test_acc"] == pytest.approx(table[table["round"] == 2]["test_acc"].mean())


def test_the_console_counts_and_names_an_ensembles_trials_and_never_averages_across_points(tmp_path):
    """An ensemble of 4 trials (2 grid points × 2 seeds) is one Tune trial: the console counts 4
    trials, names their points and seeds, and ends with a final accuracy per grid point."""
    import io
    from types import SimpleNamespace

    from engine.storage.store import SCHEMA
    from engine.suite.search import SearchSpec
    from engine.suite.tune import SuiteProgress

    finals = {("random", 0): 0.5, ("random", 1): 0.7, ("warm", 0): 0.2, ("warm", 1): 0.4}
    for (init, seed), acc in finals.items():
        row = {name: None for name in SCHEMA.names}
        row.update(
            trial_id=f"{init}-s{seed}", round=2, test_acc=acc, seed=seed, n_labeled=200, **{"cfg.init.name": init}
        )
        TrialStore(str(tmp_path), row["trial_id"]).write_row(row)
    stream = io.StringIO()
    progress = SuiteProgress(6, 0, str(tmp_path), SearchSpec(), None, stream, every=0)
    ids = [f"{init}-s{seed}" for init, seed in finals]
    progress.units["e1"] = {
        "point": {}, "ensemble": "e1/4", "trial_ids": ids, "seeds": [0, 1, 0, 1], "n": 4,
        "members": [{"init": "random"}, {"init": "random"}, {"init": "warm"}, {"init": "warm"}],
    }  # fmt: skip
    trial = SimpleNamespace(trial_id="tune-1", custom_trial_name="e1")  # what the callback reads of Tune's Trial
    progress.running["tune-1"] = trial
    progress.last["tune-1"] = {"round": 1, "rounds": 2, "test_acc": 0.45, "seeds": 4}  # a mean over both points
    progress.block(force=True)
    progress.complete(trial)
    printed = stream.getvalue()
    assert printed.splitlines()[0].startswith("-- 0 done, 4 running, 2 pending (")
    assert printed.splitlines()[1:3] == [
        "   init=random (seeds 0, 1): round 2",
        "   init=warm (seeds 0, 1): round 2",
    ]
    assert "[2/6 done] init=random: 2 rounds, final test_acc 0.6000 (mean of 2 seeds)" in printed
    assert "[4/6 done] init=warm: 2 rounds, final test_acc 0.3000 (mean of 2 seeds)" in printed
    assert "0.45" not in printed and "e1" not in printed
