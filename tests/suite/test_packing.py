"""Trials packed on one GPU (engine/suite/packing.py, ``warmstart suite --trials-per-gpu``): the
choice of N, the share each trial asks for, and Ray Tune's arithmetic with a logical GPU
(the shared Ray instance has one, whether or not the machine has any)."""

from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.errors import ConfigError
from engine.suite import packing


def test_choose_takes_the_smallest_pack_near_the_best():
    assert packing.choose({1: 10.0, 2: 19.0, 4: 30.0, 8: 31.0}) == 4  # 30 >= 0.9 * 31
    assert packing.choose({1: 10.0, 2: 19.0, 4: 25.0, 8: 31.0}) == 8
    assert packing.choose({1: 10.0, 2: 9.0}) == 1  # packing did not pay
    with pytest.raises(ValueError):
        packing.choose({})


def test_auto_reads_the_measured_table_or_falls_back_to_the_default(tmp_path, monkeypatch):
    table = tmp_path / "packing.json"
    monkeypatch.setenv(packing.TABLE_ENV, str(table))
    assert packing.resolve_trials_per_gpu("auto") == packing.DEFAULT_TRIALS_PER_GPU
    packing.write_table(table, {1: 100.0, 2: 190.0, 4: 260.0, 8: 270.0}, {"device": "test"})
    assert packing.resolve_trials_per_gpu("auto") == 4
    assert json.loads(table.read_text())["chosen"] == 4
    table.write_text('{"something": "else"}')
    with pytest.raises(ConfigError, match="not one benchmarks/gpu_check.sh wrote"):
        packing.resolve_trials_per_gpu("auto")


@pytest.mark.parametrize("value, expected", [(None, None), ("1", 1), ("8", 8), (3, 3)])
def test_counts_are_accepted(value, expected):
    assert packing.resolve_trials_per_gpu(value) == expected


@pytest.mark.parametrize("value", ["0", "-2", "2.5", "many", "65"])
def test_bad_counts_are_refused_in_one_line(value):
    with pytest.raises(ConfigError) as info:
        packing.resolve_trials_per_gpu(value)
    message = str(info.value)
    assert "'--trials-per-gpu'" in message and "'auto'" in message and repr(value) in message and "\n" not in message


def test_a_trial_asks_for_its_share_of_a_gpu():
    assert packing.trial_bundle({"gpus_per_worker": 0}, 4) == {"CPU": 1.0}  # CPU trials: unchanged
    assert packing.trial_bundle({"gpus_per_worker": 1}, None) == {"CPU": 1.0, "GPU": 1.0}
    assert packing.trial_bundle({"gpus_per_worker": 1}, 4) == {"CPU": 1.0, "GPU": 0.25}
    three = packing.trial_bundle({"gpus_per_worker": 1}, 3)["GPU"]
    assert three == 0.3333 and 3 * three <= 1  # rounded down: three fit on one GPU


def test_packing_a_cpu_suite_is_refused(capsys):
    assert main(["suite", "quickstart", "--out", "unused", "--trials-per-gpu", "2"]) == 2
    assert "every trial of this suite has scaling.gpus_per_worker 0" in capsys.readouterr().err


def run_barrier_trials(tmp_path, count: int, gpus_per_worker: float, trials_per_gpu, timeout: float) -> list[bool]:
    """``count`` Tune trials through engine.suite.tune._resources; each marks its start and waits
    up to ``timeout`` s for all ``count`` to have started.  Returns, per trial, whether it saw
    them all: every trial does only if all of them ran at once."""
    from ray import tune

    from engine.suite.tune import _resources

    trials = [{"scaling": {"workers": None, "gpus_per_worker": gpus_per_worker}}] * count
    started = tmp_path / "started"
    started.mkdir()
    folder = str(started)

    def trainable(config):
        import os
        import time

        open(os.path.join(folder, str(config["index"])), "w").close()
        deadline = time.time() + timeout
        while len(os.listdir(folder)) < count and time.time() < deadline:
            time.sleep(0.05)
        return {"together": len(os.listdir(folder)) >= count}

    tuner = tune.Tuner(
        tune.with_resources(trainable, resources=lambda config: _resources(config, trials, trials_per_gpu)),
        param_space={"index": tune.grid_search(list(range(count)))},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )
    grid = tuner.fit()
    return [result.metrics["together"] for result in grid]


def test_four_trials_at_a_quarter_gpu_run_at_once_on_one_gpu(ray_address, tmp_path):
    assert run_barrier_trials(tmp_path, 4, 1, trials_per_gpu=4, timeout=120) == [True] * 4


def test_whole_gpu_trials_run_one_at_a_time(ray_address, tmp_path):
    together = run_barrier_trials(tmp_path, 2, 1, trials_per_gpu=None, timeout=3)
    assert sorted(together) == [False, True]  # the first waited alone; the second found it had run
