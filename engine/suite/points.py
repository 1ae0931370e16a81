"""A Tune trial's body: one unit (a trial, or a grid point with its seeds), run round by
round and reported to Tune after each round.

    run_point(params, ...)                    # the Tune trainable
      for rows in point_rounds(cfgs, out):    # round r of every seed, then round r + 1
          tune.report(means.report(rows))     # this (the trainable's) thread reports

In-process, each seed is a ``TrialSession`` stepped in turn.  On Ray Train
(``scaling.workers``), each seed runs its own worker group from a thread of this
process; the rows rank 0 writes come back through the runner's relay and a queue, so
that ``tune.report`` is still called from the trainable's own thread (as Ray Tune
requires).  Rows already under ``out`` are replayed, not recomputed: a resumed point
reports its earlier rounds again, so a scheduler sees its whole history.
"""

from __future__ import annotations

import queue
import threading

import torch

from engine.schema.config import validate
from engine.schema.plugins import load_plugins
from engine.storage.object_store import adopt_filesystem
from engine.storage.store import TrialStore
from engine.suite.search import RoundMeans
from engine.suite.suite_file import sampled_point
from engine.trial.runner import run_trial
from engine.trial.session import start_trial


def run_point(
    params: dict, trials: list[dict], out: str, stopped: dict[str, int], sampled: dict | None, filesystem=None
) -> None:
    """The Tune trainable: one unit (a point's seeds, or one trial), reported round by round.
    ``filesystem``: the driver's for an object-store ``out`` (object_store.object_store),
    used instead of anything this worker's environment says."""
    import ray
    from ray import tune

    adopt_filesystem(out, filesystem)
    if sampled is not None:  # a point the searcher proposed: its trials, one per seed
        values = {key: params["cfg"][key] for key in sampled["keys"]}
        datas = [t.config.to_dict() for t in sampled_point(sampled["name"], sampled["base"], sampled["seeds"], values)]
    else:
        datas = [trials[i] for i in params["trials"]]
    load_plugins(datas[0]["plugins"])
    cfgs = [validate(data) for data in datas]
    if cfgs[0].scaling.workers is None:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))  # as many threads as CPUs Tune gave this trial
    # A point a scheduler stopped before (same search) replays its rounds and stops there.
    stop_after = min((stopped[c.trial_id()] for c in cfgs if c.trial_id() in stopped), default=None)
    rounds = params["rounds"]
    means = RoundMeans(rounds, len(cfgs))
    for rows in point_rounds(cfgs, out, stop_after, params.get("ensemble")):
        tune.report(means.report(rows))


def point_rounds(cfgs: list, out: str, stop_after: int | None = None, ensemble: str | None = None):
    """Yield, round by round, the rows of every seed's trial (one row each): first the
    rounds already under ``out``, then new ones, round r of every seed before round r + 1.
    ``ensemble``: the unit's trials are one ensemble of that label (engine/suite/ensembles.py)."""
    if ensemble is not None:
        yield from _as_ensemble(cfgs, out, stop_after, ensemble)
    elif cfgs[0].scaling.workers is None:
        yield from _in_process(cfgs, out, stop_after)
    else:
        yield from _on_ray_train(cfgs, out, stop_after)


def _in_process(cfgs: list, out: str, stop_after: int | None):
    sessions = []
    try:
        for cfg in cfgs:
            sessions.append(start_trial(cfg, out))
        rows = [_completed(session) for session in sessions]
        total = sessions[0].context.plan.rounds
        for round_ in range(1, (stop_after or total) + 1):
            for session, done in zip(sessions, rows, strict=True):
                if round_ not in done:
                    # A seed stopped early (a divergence) carries its last round forward.
                    done[round_] = done[max(done)] if session.done and done else session.step().row
            yield [done[round_] for done in rows]
    finally:  # a reused Tune actor must not keep the trials' locks
        for session in sessions:
            session.close()


def _completed(session) -> dict[int, dict]:
    """The rows of the rounds a resumed session has completed, by round: not the rows after
    them that it recomputes (a trial recomputed from round 1 keeps its later rows to check)."""
    return {row["round"]: row for row in session.store.rows() if row["round"] <= session.state.round}


def _as_ensemble(cfgs: list, out: str, stop_after: int | None, label: str):
    """``_in_process`` for trials trained as one stacked ensemble (engine/trial/ensemble.py)."""
    from engine.trial.ensemble import Ensemble

    with Ensemble.start(cfgs, out, label) as ensemble:
        sessions = ensemble.sessions
        rows = [_completed(session) for session in sessions]
        total = max(session.context.plan.rounds for session in sessions)
        for round_ in range(1, (stop_after or total) + 1):
            while any(round_ not in done and ensemble.running(i) for i, done in enumerate(rows)):
                for i, result in ensemble.step():
                    rows[i][result.row["round"]] = result.row
            if any(round_ not in rows[i] for i in ensemble.failed):
                break  # a member failed before this round: the others finish, then its error
            for done in rows:
                if round_ not in done and done:  # stopped early (a divergence): its last round carries forward
                    done[round_] = done[max(done)]
            yield [done[round_] for done in rows]
        if ensemble.failed:
            while not ensemble.done:
                ensemble.step()
            ensemble.raise_failures()


class _Relay:
    """A reporter that hands a Ray Train trial's rows (relayed by its driver) to a queue."""

    def __init__(self, rows: queue.Queue, seed_index: int) -> None:
        self.rows, self.seed_index = rows, seed_index

    def trial_started(self, info) -> None: ...
    def round_started(self, round_, rounds, n_labeled) -> None: ...
    def epoch(self, round_, epoch, train_acc, train_loss) -> None: ...

    def round_done(self, row: dict) -> None:
        self.rows.put((self.seed_index, row, None))


def _on_ray_train(cfgs: list, out: str, stop_after: int | None):
    """Each seed's trial on its own Ray Train worker group (a thread each waits on its
    TorchTrainer); their rows come back through a queue, so that this (the trainable's)
    thread is the one that reports to Tune."""
    rows = [{row["round"]: row for row in TrialStore(out, cfg.trial_id()).rows()} for cfg in cfgs]
    arrived: queue.Queue = queue.Queue()

    def run(i: int) -> None:
        try:
            run_trial(cfgs[i], out, reporter=_Relay(arrived, i))
            arrived.put((i, None, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the reporting thread
            arrived.put((i, None, exc))

    limit = stop_after
    if limit is None:
        for i in range(len(cfgs)):
            threading.Thread(target=run, args=(i,), daemon=True).start()
    finished = set() if limit is None else set(range(len(cfgs)))
    round_ = 1
    while True:
        if all(round_ in done for done in rows):
            yield [done[round_] for done in rows]
            if round_ == limit:
                return
            round_ += 1
            continue
        if len(finished) == len(cfgs):
            return  # every trial ended: its last rounds were yielded
        i, row, error = arrived.get()
        if error is not None:
            raise error
        if row is None:  # the run ended: its rows are all in the store (the relay may lag)
            finished.add(i)
            rows[i].update({r["round"]: r for r in TrialStore(out, cfgs[i].trial_id()).rows()})
        else:
            rows[i][row["round"]] = row
