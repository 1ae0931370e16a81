"""The round driver (engine/trial/driver.py): lockstep's replay, carry-forward and failure
rules on trials whose rows are given, and a real Driver over digits trials."""

from __future__ import annotations

import uuid

import pytest

from engine.errors import StrategyError
from engine.schema.config import build
from engine.trial.driver import ALONE, STACKED, Driver, lockstep
from engine.trial.loop import SIMULATED
from engine.trial.session import start_trial
from engine.trial.stacked import start_members
from strategies import init


class Scripted:
    """Trials whose rounds arrive as scripted: ``script[i]`` is trial i's rounds in order
    (a row per round); ``saved[i]`` the rounds already in its store; ``fail_at``: (trial,
    round) whose computation fails (the trial leaves, the others go on)."""

    def __init__(self, script: list[list[int]], saved: list[int] | None = None, fail_at=None) -> None:
        self.script = [list(rounds) for rounds in script]
        self.saved = saved or [0] * len(script)
        self.fail_at = fail_at
        self.failed: dict[int, BaseException] = {}
        self.advanced: list[tuple[int, int]] = []
        self.finished = False
        for i, n in enumerate(self.saved):
            self.script[i] = [r for r in self.script[i] if r > n]

    def completed(self):
        return [{r: {"trial": i, "round": r} for r in range(1, n + 1)} for i, n in enumerate(self.saved)]

    def running(self, i: int) -> bool:
        return i not in self.failed and bool(self.script[i])

    def advance(self):
        behind = [i for i in range(len(self.script)) if self.running(i)]
        i = min(behind, key=lambda j: self.script[j][0])
        r = self.script[i].pop(0)
        if self.fail_at == (i, r):
            self.failed[i] = StrategyError("boom")
            return []
        self.advanced.append((i, r))
        return [(i, {"trial": i, "round": r})]

    def finish(self):
        self.finished = True


def rounds_of(yielded):
    return [[(row["trial"], row["round"]) for row in rows] for rows in yielded]


def test_lockstep_yields_round_r_of_every_trial_before_r_plus_1():
    trials = Scripted([[1, 2, 3], [1, 2, 3]])
    assert rounds_of(lockstep(trials, 3)) == [[(0, r), (1, r)] for r in (1, 2, 3)]
    assert trials.advanced == [(0, 1), (1, 1), (0, 2), (1, 2), (0, 3), (1, 3)]


def test_saved_rounds_are_replayed_not_recomputed():
    trials = Scripted([[1, 2, 3], [1, 2, 3]], saved=[2, 1])
    assert rounds_of(lockstep(trials, 3)) == [[(0, r), (1, r)] for r in (1, 2, 3)]
    assert trials.advanced == [(1, 2), (0, 3), (1, 3)]  # only what was not saved


def test_a_trial_that_stopped_early_carries_its_last_row_forward():
    trials = Scripted([[1, 2, 3], [1]])  # trial 1 diverged in round 1
    assert rounds_of(lockstep(trials, 3)) == [[(0, 1), (1, 1)], [(0, 2), (1, 1)], [(0, 3), (1, 1)]]
    # Without a round count, until every trial has ended.
    assert rounds_of(lockstep(Scripted([[1, 2], [1]]))) == [[(0, 1), (1, 1)], [(0, 2), (1, 1)]]


def test_stop_after_replays_only_that_far():
    trials = Scripted([[1, 2, 3]], saved=[3])
    assert rounds_of(lockstep(trials, 3, stop_after=2)) == [[(0, 1)], [(0, 2)]]
    assert trials.advanced == []


def test_a_failed_trial_ends_the_rounds_there_and_the_others_finish():
    trials = Scripted([[1, 2, 3], [1, 2, 3]], fail_at=(1, 2))
    assert rounds_of(lockstep(trials, 3)) == [[(0, 1), (1, 1)]]
    assert trials.finished and list(trials.failed) == [1]


TRIAL = {
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "width": 16, "depth": 1},
    "device": "cpu",
    "rounds": {"initial": 40, "per_round": 40, "max_rounds": 2},
    "convergence": {"train_acc": 0.9, "max_epochs": 5},
}


@pytest.mark.usefixtures("one_torch_thread")
def test_the_driver_saves_reports_and_replays_one_trial(tmp_path):
    class Reporter:
        def __init__(self):
            self.done = []

        def trial_started(self, info): ...
        def round_started(self, round_, rounds, n_labeled): ...
        def epoch(self, round_, epoch, acc, loss): ...
        def round_done(self, row):
            self.done.append(row["round"])

    cfg, reporter = build({**TRIAL, "seed": 0}), Reporter()
    with Driver([start_trial(cfg, str(tmp_path), reporter=reporter)]) as driver:
        assert driver.sessions[0].context.labels is SIMULATED and driver.compute is ALONE
        ((index, first),) = driver.step()
        assert index == 0 and first.row["round"] == 1 and first.row["n_labeled"] == 40
        rows = driver.run()
    assert [r["round"] for r in rows] == [1, 2] and reporter.done == [1, 2] and driver.done
    with pytest.raises(StopIteration):
        driver.step()
    # Reopened: both rounds replayed from the store, nothing recomputed.
    with Driver([start_trial(cfg, str(tmp_path))]) as again:
        replayed = list(lockstep(again, 2))
        assert again.sessions[0].rows == []
    assert [[r["test_acc"] for r in rs] for rs in replayed] == [[r["test_acc"]] for r in rows]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_stacked_member_whose_strategy_fails_leaves_and_the_others_finish(tmp_path, monkeypatch):
    monkeypatch.setattr(init.INIT_STRATEGIES, "_entries", dict(init.INIT_STRATEGIES._entries))  # gone after
    name = f"explodes_{uuid.uuid4().hex[:8]}"

    @init.register(name)
    def explodes(prev, fresh):
        raise RuntimeError("no model for you")

    cfgs = [build({**TRIAL, "seed": 1, "init": {"name": "warm"}}), build({**TRIAL, "seed": 3, "init": {"name": name}})]
    with Driver(start_members(cfgs, str(tmp_path), "e-drv/2"), STACKED) as driver:
        assert [s.context.columns["ensemble"] for s in driver.sessions] == ["e-drv/2", "e-drv/2"]
        with pytest.raises(TypeError):  # frozen: the shared columns are read-only
            driver.sessions[0].context.columns["ensemble"] = "other"
        with pytest.raises(
            StrategyError, match=f"trial {cfgs[1].trial_id()}: The init strategy '{name}' failed in round 2"
        ):
            driver.run()
        assert list(driver.failed) == [1]
        assert [r["round"] for r in driver.sessions[0].rows] == [1, 2]  # the other member finished
        assert [r["round"] for r in driver.sessions[1].rows] == [1]
