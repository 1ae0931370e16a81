"""A Tune trial's body: one unit (a trial, or a grid point with its seeds), run round by
round and reported to Tune after each round.

    run_point(params, ...)                    # the Tune trainable
      for rows in point_rounds(cfgs, out):    # the round driver's lockstep
          tune.report(means.report(rows))     # this (the trainable's) thread reports

The unit's trials advance through the round driver (engine/trial/driver.py): in this
process, alone or stacked as one ensemble; on Ray Train (``scaling.workers``), each on
its own worker group, whose rows come back to this thread (engine/trial/runner.py
``RayTrainGroups``), so that ``tune.report`` is called from the trainable's own thread
(as Ray Tune requires).  Rows already under ``out`` are replayed, not recomputed: a
resumed point reports its earlier rounds again, so a scheduler sees its whole history.
"""

from __future__ import annotations

import torch

from engine.schema.config import validate
from engine.schema.plugins import load_plugins
from engine.storage.object_store import adopt_filesystem
from engine.suite.search import RoundMeans
from engine.suite.suite_file import sampled_point
from engine.trial.driver import ALONE, STACKED, Driver, lockstep
from engine.trial.runner import RayTrainGroups
from engine.trial.stacked import start_members


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
    """Yield, round by round, the rows of every seed's trial (one row each): the round
    driver's ``lockstep`` (engine/trial/driver.py) over the unit's trials, on the unit's
    backend: stacked as one ensemble of label ``ensemble`` (engine/suite/stacking.py),
    each alone in this process, or each on its own Ray Train worker group."""
    if cfgs[0].scaling.workers is not None:
        yield from lockstep(RayTrainGroups(cfgs, out, start=stop_after is None), None, stop_after)
        return
    driver = Driver(start_members(cfgs, out, ensemble), ALONE if ensemble is None else STACKED)
    with driver:  # a reused Tune actor must not keep the trials' locks
        yield from lockstep(driver, max(s.context.plan.rounds for s in driver.sessions), stop_after)
