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
from engine.store import TrialStore
from engine.suite import load_suite

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
    path = suite_file(tmp_path, "resumable", "  seed: [0, 1, 2]\n", rounds=5)
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
