"""Ray Tune: a suite's trials packed onto the cluster, one Parquet table, resume, progress,
schedulers, searchers and trackers.

A Tune trial runs one *unit*: a (grid point, seed) trial of a plain grid, or, under a
scheduler or a sampling searcher (engine/suite/search.py), one point with all its seeds, round
by round.  A unit without ``scaling.workers`` runs the round loop in the Tune trial's
own process with one CPU (and ``gpus_per_worker`` GPUs): no worker group to start, which
is what a grid of small models needs.  With ``scaling.workers`` each seed starts one Ray
Train worker group for its whole run, and rank 0's rows come back to the Tune trial.

After every round the Tune trial reports it (engine/suite/points.py: ``tune.report`` from the
trainable's own thread, the round's metrics, mean over seeds, and the point's cumulative
optimizer steps and seconds).  Schedulers, searchers, trackers (engine/suite/tracking.py) and the suite's
console progress (``SuiteProgress``, a Tune callback on the driver) all read these
reports; nothing polls the store.  Rows and checkpoints still go to the results store
under ``--out``, which stays the record and what makes a suite resumable: finished
trials are skipped, unfinished ones continue after their last completed round, and
``--resume`` also accepts the suite grown by new seeds, grid values or rounds.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from engine.schema.config import flatten, strategy_label
from engine.storage.folders import trial_rows_intact
from engine.storage.object_store import object_store, outage, store_failure
from engine.storage.store import TrialStore, filesystem, ray_storage, read_manifest, write_manifest
from engine.suite.options import SuiteSetup, check_out, suite_plugins
from engine.suite.packing import trial_bundle
from engine.suite.points import run_point
from engine.suite.search import (
    Range,
    SearchSpec,
    point_id,
    read_record,
    scheduler,
    searcher,
    stopped_rounds,
    write_record,
)
from engine.suite.stacking import Grouping
from engine.suite.suite_file import Suite, TrialSpec, sampled_point
from engine.suite.tracking import callbacks as trackers
from engine.trial.distributed import check_resources, error_line, init_ray, log_ray_to_file


def _tracked(config: dict) -> dict[str, Any]:
    """What trackers log as a Tune trial's config: everything but the seed and the id."""
    return {k: v for k, v in flatten(config).items() if k not in ("seed", "trial_id")}


def _resources(config: dict, trials: list[dict], trials_per_gpu: int | None = None):
    from ray import tune

    scaling = trials[config["index"]]["scaling"]
    if scaling["workers"] is not None:
        # The trial only drives a worker group that asks for its own resources.
        return tune.PlacementGroupFactory([{"CPU": 0.01}])
    return tune.PlacementGroupFactory([trial_bundle(scaling, trials_per_gpu)])  # N trials share a GPU


def _quiet_progress():
    """Tune's per-trial console lines, silenced: SuiteProgress reports progress instead.
    (Passing any TrialProgressCallback keeps Tune from adding its default one.)"""
    from ray.tune.progress_reporter import TrialProgressCallback

    class Quiet(TrialProgressCallback):
        def _print(self, msg: str) -> None:
            pass

    return Quiet()


# --- the results folder -----------------------------------------------------------------


def prepare_out(suite: Suite, out: str, resume: bool) -> None:
    """Refuse an --out that holds other results or cannot be written (``check_out``); record
    this suite there."""
    record_suite(suite, out, check_out(suite, out, resume))


def record_suite(suite: Suite, out: str, trial_ids: tuple[str, ...] | list[str]) -> None:
    """Write the suite's manifest under ``out``: its name, source, base config, the trial ids
    ``check_out`` answered, and the code of its plugins (those recorded earlier kept)."""
    manifest = {"name": suite.name, "trials": list(trial_ids), "source": suite.source, "base": suite.base}
    recorded = (read_manifest(out) or {}).get("plugins") or {}
    code = {**recorded, **suite_plugins(suite)}
    write_manifest(out, {**manifest, "plugins": code} if code else manifest)


def check_suite_resources(suite: Suite, address: str | None, trials_per_gpu: int | None) -> None:
    """Refuse a suite with a trial the cluster can never run (see check_resources): more
    CPUs or GPUs in one trial's bundle, or one worker group, than the cluster has."""
    seen = set()
    for trial in suite.trials or suite.probes:
        scaling = trial.config.scaling
        if scaling.workers is not None:
            need = (scaling.workers, float(scaling.gpus_per_worker))
        else:
            bundle = trial_bundle(scaling.to_dict(), trials_per_gpu)
            need = (1, bundle.get("GPU", 0.0))
        if need not in seen:
            seen.add(need)
            check_resources(*need, address, scaling.resource_timeout, what=f"trial {trial.trial_id}")


# --- units: what one Tune trial runs ----------------------------------------------------


def grid_units(suite: Suite) -> list[list[int]]:
    """Trial indices per Tune trial: one each, or a point's seeds together (per_point)."""
    if not suite.search.per_point:
        return [[i] for i in range(len(suite.trials))]
    points: dict[str, list[int]] = {}
    for i, trial in enumerate(suite.trials):
        key = describe_point({k: v for k, v in trial.point.items() if k != "seed"})
        points.setdefault(key, []).append(i)
    return list(points.values())


def _point_of(trial: TrialSpec) -> dict[str, Any]:
    """A trial's grid values without the seed, as JSON-able labels."""
    return {
        k: (v if isinstance(v, (int, float, str, bool)) or v is None else _label(v))
        for k, v in trial.point.items()
        if k != "seed"
    }


def _where(unit: dict) -> str:
    """A unit's point for the console: sampled floats to 4 significant digits."""
    point = unit.get("point", {})
    return describe_point({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in point.items()})


def _member_groups(unit: dict) -> dict[str, list[tuple[str, Any]]]:
    """An ensemble's members by grid point: {the point as the console says it: [(trial id, seed)]}."""
    groups: dict[str, list[tuple[str, Any]]] = {}
    for point, trial_id, seed in zip(unit["members"], unit["trial_ids"], unit["seeds"], strict=True):
        where = _where({"point": point}) or trial_id
        groups.setdefault(where, []).append((trial_id, seed))
    return groups


class SuiteProgress:
    """The suite's console progress, from Tune's reports (a Tune callback on the driver):
    a line per finished trial, and every ``every`` seconds a block of the running ones.
    Under a search it also keeps ``_warmstart/search.json``: each point, where it stopped."""

    def __init__(
        self, total: int, done: int, out: str, spec: SearchSpec, record: dict | None, stream: TextIO, every: float
    ) -> None:
        self.total, self.done, self.out, self.spec = total, done, out, spec
        self.stream, self.every = stream, every
        self.record = (
            record if record and record.get("search") == spec.to_dict() else {"search": spec.to_dict(), "points": {}}
        )
        self.started = time.time()
        self.last: dict[str, dict] = {}  # Tune trial id -> last report
        self.running: dict[str, Any] = {}
        self.ended: set[str] = set()
        self.failed: set[str] = set()
        self.replays: set[str] = set()  # trial names whose rounds are only replayed
        self.units: dict[str, dict] = {}  # trial name -> {"point", "trial_ids", "seeds"}
        self._last_block = 0.0

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks into the experiment state; a console stream is no state.
        return {**self.__dict__, "stream": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({**state, "stream": sys.stdout})

    def callback(self):
        from ray.tune import Callback

        progress = self

        class Relay(Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                progress.running[trial.trial_id] = trial

            def on_trial_result(self, iteration, trials, trial, result, **info):
                progress.last[trial.trial_id] = result

            def on_step_begin(self, iteration, trials, **info):
                progress.block()

            def on_trial_complete(self, iteration, trials, trial, **info):
                progress.complete(trial)

            def on_trial_error(self, iteration, trials, trial, **info):
                progress.running.pop(trial.trial_id, None)
                progress.failed.add(trial.trial_id)
                progress.ended.add(trial.trial_id)

        return Relay()

    def complete(self, trial) -> None:
        self.running.pop(trial.trial_id, None)
        self.ended.add(trial.trial_id)
        last = self.last.get(trial.trial_id)
        unit = self.units.get(trial.custom_trial_name) or {}
        if last is None:
            return
        stopped = self.spec.scheduler if last["round"] < last["rounds"] else None
        if self.spec.per_point and unit:
            # Keyed by the point, so a point that gained seeds replaces its earlier entry.
            self.record["points"][describe_point(unit["point"])] = {
                **unit,
                "round": last["round"],
                "rounds": last["rounds"],
                "stopped_by": stopped,
                "metric": last[self.spec.metric],
                "test_acc": last["test_acc"],
                "mean_test_acc": last["mean_test_acc"],
                "steps": last["steps"],
                "seconds": last["seconds"],
            }
            write_record(self.out, self.record)
        if trial.custom_trial_name in self.replays:
            return
        if unit.get("ensemble"):  # members of any grid points: a line per grid point, never a mean across them
            self.complete_members(unit)
            return
        self.done += last["seeds"]
        where = _where(unit) or trial.custom_trial_name
        if stopped:
            text = (
                f"stopped by {stopped} after round {last['round']} of {last['rounds']}, test_acc {last['test_acc']:.4f}"
            )
        else:
            text = f"{last['rounds']} rounds, final test_acc {last['test_acc']:.4f}"
        mean = f" (mean of {last['seeds']} seeds)" if last["seeds"] > 1 else ""
        print(f"[{self.done}/{self.total} done] {where}: {text}{mean}", file=self.stream, flush=True)

    def complete_members(self, unit: dict) -> None:
        """An ensemble's end: per grid point among its members, the final test accuracy over
        that point's seeds, read from the members' own rows (Tune's report is a mean over
        every member, whatever its grid point)."""
        for where, members in _member_groups(unit).items():
            finals = []
            for trial_id, _ in members:
                try:
                    rows = TrialStore(self.out, trial_id).rows()
                except OSError:
                    rows = []
                if rows:
                    finals.append(max(rows, key=lambda r: r["round"]))
            self.done += len(members)
            if not finals:
                text = "no rounds"
            else:
                acc = sum(float(r["test_acc"]) for r in finals) / len(finals)
                rounds = max(int(r["round"]) for r in finals)
                text = f"{rounds} rounds, final test_acc {acc:.4f}"
                text += f" (mean of {len(finals)} seeds)" if len(finals) > 1 else f" (seed {members[0][1]})"
            print(f"[{self.done}/{self.total} done] {where}: {text}", file=self.stream, flush=True)

    def block(self, force: bool = False) -> None:
        now = time.time()
        if not self.running or not (force or now - self._last_block >= self.every):
            return
        self._last_block = now
        units = [self.units.get(t.custom_trial_name) or {} for t in self.running.values()]
        running = sum(unit.get("n", 1) for unit in units)  # trials, not Tune trials: an ensemble of 9 is 9
        pending = max(self.total - self.done - running, 0)
        print(
            f"-- {self.done} done, {running} running, {pending} pending ({now - self.started:.0f}s)", file=self.stream
        )
        for (tid, trial), unit in zip(self.running.items(), units, strict=True):
            last = self.last.get(tid)
            round_ = last["round"] + 1 if last else 1
            if unit.get("ensemble"):  # its report is a mean over grid points: the trials, and their round
                for where, members in _member_groups(unit).items():
                    seeds = ", ".join(str(seed) for _, seed in members)
                    print(
                        f"   {where} (seed{'s' if len(members) > 1 else ''} {seeds}): round {round_}", file=self.stream
                    )
                continue
            where = _where(unit) or trial.custom_trial_name
            acc = f"{last['test_acc']:.4f}" if last else "-"
            print(f"   {where}: round {round_}, last test_acc {acc}", file=self.stream)
        self.stream.flush()


@dataclass
class Units:
    """What one suite run submits to Tune: the param space (one entry per unit to run, or
    the searcher's space), the Tune trials' names, and the progress that watches them."""

    param_space: dict
    progress: SuiteProgress
    trials: list[dict]  # every trial's config, by index; the driver's trial ids are final
    stopped: dict[str, int]  # trial id -> the round a scheduler stopped it at, in an earlier run
    expected: int  # how many Tune trials a run that is not interrupted ends with
    names: list[str] | None = None  # a grid unit's Tune trial name; None: named as sampled
    sampled: dict | None = None  # what a sampled point's trainable needs to build its trials
    # The trials a sampling searcher proposed in this run, added as Tune names them (_sampled_name):
    # the one thing that grows while Tune runs (the Suite stays as loaded).
    proposed: list[TrialSpec] = field(default_factory=list)


def run_suite(setup: SuiteSetup, stream: TextIO | None = None, every: float = 30.0) -> list[tuple[str, str, str]]:
    """Run every unfinished trial of a checked suite (``engine.suite.options.set_up_suite``:
    nothing is checked again here); returns (trial_id, error, traceback file) for the trials
    that failed.  ``stream``: the console progress (default stdout), a block every ``every``
    seconds.  Ctrl-C stops the trials and raises KeyboardInterrupt; completed rounds are
    saved and ``resume`` continues."""
    suite, options, out = setup.suite, setup.options, setup.out
    record_suite(suite, out, setup.trial_ids)
    # A failed trial's traceback goes to its error.txt under --out; the driver lists the
    # failures at the end instead of Tune logging each traceback mid-progress.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    location = out if "://" in out else filesystem(out)[1]
    units = plan_units(suite, out, location, setup.rounds, stream or sys.stdout, every, setup.grouping)
    if units is None:
        return []
    init_ray(options.address)
    log_ray_to_file()  # Ray's own tracebacks (a sync to a store that is down) stay in its log folder
    check_suite_resources(suite, options.address, options.trials_per_gpu)  # needs Ray: the cluster's resources
    most = max(setup.rounds.values())
    tuner = build_tuner(suite, units, out, location, most, options.max_concurrent, options.trials_per_gpu)
    try:
        grid = tuner.fit()
        units.progress.block(force=True)
        if suite.search.sampled:
            record_sampled_trials(units.proposed, out)
    except OSError as exc:  # Tune reads its state back from the store at the end; the store is down
        if "://" in out and store_failure(str(exc)):
            raise outage(exc, out) from None
        raise
    failed = failures(grid, units)
    # A store that stopped answering past its retries ended these trials, not their code:
    # one line with the cause and the resume command (cli.py), instead of a list of failures.
    down = [error for _, error, _ in failed if "://" in out and store_failure(error)]
    if down:
        raise outage(down[0], out)
    return failed


def plan_units(
    suite: Suite, out: str, location: str, rounds: dict[str, int], stream: TextIO, every: float, grouping: Grouping
) -> Units | None:
    """What to submit: a grid's unfinished units (and, under a scheduler, its finished ones
    to replay), or a searcher's samples; None when every trial is already complete.
    ``grouping``: a plain grid's units with its ensembles (engine/suite/stacking.py)."""
    spec = suite.search
    record = read_record(out)
    stopped = stopped_rounds(record, spec)
    trials = [{**t.config.to_dict(), "trial_id": t.trial_id} for t in (suite.trials or suite.probes)]
    if spec.sampled:
        progress = SuiteProgress(spec.num_samples * len(suite.seeds), 0, location, spec, record, stream, every)
        sampled = {"name": suite.name, "base": suite.base, "seeds": list(suite.seeds), "keys": list(suite.space)}
        space = _sampled_space(suite, max(rounds.values()))
        return Units(space, progress, trials, stopped, spec.num_samples, sampled=sampled)
    units = grid_units(suite) if spec.per_point else grouping.units  # a point's seeds, or ensembles
    labels = [None] * len(units) if spec.per_point else grouping.labels
    for note in grouping.notes:
        print(note, file=stream)
    todo, replay = _todo(suite, location, units, rounds, stopped)
    done = sum(len(units[u]) for u in replay)
    progress = SuiteProgress(len(suite.trials), done, location, spec, record, stream, every)
    names = [
        label.split("/")[0] if label else _unit_name(suite, unit) for unit, label in zip(units, labels, strict=True)
    ]
    for u, unit in enumerate(units):
        info = _unit_info(suite, unit)
        # An ensemble's members are any grid points: the console names them by their points and seeds.
        members = [_point_of(suite.trials[i]) for i in unit]
        progress.units[names[u]] = (
            {**info, "point": {}, "ensemble": labels[u], "members": members} if labels[u] else info
        )
    progress.replays = {names[u] for u in replay}
    if replay:
        also = "; replaying their rounds to the scheduler" if spec.scheduler != "none" else "; skipping them"
        print(f"{done} of {len(suite.trials)} trials already complete{also}", file=stream)
    if spec.scheduler == "none":
        todo = [u for u in todo if u not in replay]
    else:
        # Asynchronous ASHA judges each point against those that reached a rung
        # before it; a grid's own order (λ ascending, say) often runs from worse to
        # better, and then no point ever falls below a cutoff.  So the new points go
        # in a seeded random order, as a random searcher's would.
        fresh = [u for u in todo if u not in replay]
        random.Random(spec.seed).shuffle(fresh)
        todo = [u for u in todo if u in replay] + fresh
    if not todo:
        return None
    space = _grid_space(suite, units, todo, rounds, labels)
    return Units(space, progress, trials, stopped, len(todo), names=names)


def build_tuner(
    suite: Suite,
    units: Units,
    out: str,
    location: str,
    most: int,
    max_concurrent: int | None,
    trials_per_gpu: int | None,
):
    """The Tuner: the trainable with its resources, the scheduler and searcher, the callbacks."""
    from ray import tune

    trials, spec = units.trials, suite.search
    trainable = tune.with_resources(
        tune.with_parameters(
            run_point,
            trials=trials,
            out=location,
            stopped=units.stopped,
            sampled=units.sampled,
            filesystem=object_store(out),  # the bucket's endpoint and credentials, for every trial
        ),
        resources=lambda config: _resources(config, trials, trials_per_gpu),
    )

    def name(trial) -> str:
        if units.names is not None:
            return units.names[trial.config["unit"]]
        return _sampled_name(suite, trial.config, units)

    return tune.Tuner(
        trainable,
        param_space=units.param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,  # a trial process imports torch once, not once per trial
            trial_name_creator=name,
            trial_dirname_creator=name,
            scheduler=scheduler(spec, most),
            search_alg=searcher(spec),
            num_samples=spec.num_samples if spec.sampled else 1,
        ),
        run_config=tune.RunConfig(
            name=suite.name,
            **ray_storage(out, "tune"),  # an object store's filesystem, given to Tune explicitly
            failure_config=tune.FailureConfig(max_failures=trials[0]["scaling"]["max_failures"]),
            verbose=0,
            callbacks=[_quiet_progress(), units.progress.callback(), *trackers(suite.tracking, out, suite.name)],
        ),
    )


def record_sampled_trials(proposed: list[TrialSpec], out: str) -> None:
    """The points the searcher proposed join the suite's manifest."""
    ids = [t.trial_id for t in proposed]
    manifest = read_manifest(out) or {}
    ids += [tid for tid in manifest.get("trials", []) if tid not in ids]
    write_manifest(out, {**manifest, "trials": ids})


def failures(grid, units: Units) -> list[tuple[str, str, str]]:
    """(trial id, error, traceback file) of each failed Tune trial in the ResultGrid;
    KeyboardInterrupt when Tune ended before every trial did (Ctrl-C)."""
    if len(units.progress.ended) < len(grid) or len(grid) < units.expected:
        raise KeyboardInterrupt("the suite was interrupted")
    # A Tune trial's folder is named after its unit: the trial id (or a point's id).
    scheme = units.progress.out.split("://")[0] + "://" if "://" in units.progress.out else ""  # none in Tune's
    return [
        (result.path.rstrip("/").rsplit("/", 1)[-1], error_line(result.error), f"{scheme}{result.path}/error.txt")
        for result in grid
        if result.error is not None
    ]


def _todo(suite: Suite, out: str, units: list[list[int]], rounds: dict[str, int], stopped: dict[str, int]):
    """Units to submit (complete ones first, so a scheduler rebuilds its rungs from them)
    and the complete ones.  One status read per trial, once; a trial whose status says it is
    complete is, only when each of its rows is there and holds its (trial, round): otherwise it
    runs, and its resume recomputes what is not (engine/trial/resume.py)."""
    last = {}
    for trial in suite.trials:
        if trial.trial_id not in stopped:
            status = TrialStore(out, trial.trial_id).load_status()
            if status and status["round"] >= rounds[trial.trial_id]:
                last[trial.trial_id] = status["round"]
    intact = trial_rows_intact(out, last) if last else {}

    def finished(trial: TrialSpec) -> bool:
        return trial.trial_id in stopped or intact.get(trial.trial_id, False)

    complete = [u for u, unit in enumerate(units) if all(finished(suite.trials[i]) for i in unit)]
    rest = [u for u in range(len(units)) if u not in complete]
    return complete + rest, complete


def _unit_name(suite: Suite, unit: list[int]) -> str:
    ids = [suite.trials[i].trial_id for i in unit]
    return ids[0] if len(ids) == 1 else point_id(ids)


def _unit_info(suite: Suite, unit: list[int]) -> dict[str, Any]:
    first = suite.trials[unit[0]]
    return {
        "point": _point_of(first),
        "trial_ids": [suite.trials[i].trial_id for i in unit],
        "seeds": [suite.trials[i].config.seed for i in unit],
        "n": len(unit),
    }


def _grid_space(
    suite: Suite, units: list[list[int]], todo: list[int], rounds: dict[str, int], labels: list[str | None]
) -> dict:
    from ray import tune

    # Plain data only: Tune keeps this space in its experiment state.
    plain = [
        {
            "trials": unit,
            "index": unit[0],
            "rounds": max(rounds[suite.trials[i].trial_id] for i in unit),
            "seeds": [suite.trials[i].config.seed for i in unit],
            "cfg": _tracked(suite.trials[unit[0]].config.to_dict()),
            "ensemble": label,
        }
        for unit, label in zip(units, labels, strict=True)
    ]
    # The unit is the one grid axis; the rest follows from it, so trackers see the whole config.
    space: dict[str, Any] = {"unit": tune.grid_search(todo)}
    for key in ("trials", "index", "rounds", "seeds", "cfg", "ensemble"):
        space[key] = tune.sample_from(lambda spec, key=key: plain[spec.config["unit"]][key])
    return space


def _sampled_space(suite: Suite, most: int) -> dict:
    """The searcher's space: each sampled key a Tune domain, the rest of the config constant."""
    from ray import tune

    constant = _tracked(suite.probes[0].config.to_dict())
    for key in suite.space:  # a sampled key replaces its whole subtree
        constant = {k: v for k, v in constant.items() if k != key and not k.startswith(key + ".")}
    domains = {k: v.domain() if isinstance(v, Range) else tune.choice(v) for k, v in suite.space.items()}
    return {"cfg": {**constant, **domains}, "seeds": list(suite.seeds), "index": 0, "rounds": most}


def _sampled_name(suite: Suite, config: dict, units: Units) -> str:
    """A sampled point's Tune trial name; the first time, its trials join ``units.proposed``
    and the console progress learns the point."""
    values = {key: config["cfg"][key] for key in suite.space}
    point = sampled_point(suite.name, suite.base, suite.seeds, values)
    ids = [t.trial_id for t in point]
    name = point_id(ids)
    if name not in units.progress.units:
        units.proposed.extend(point)
        units.progress.units[name] = {
            "point": {k: (v if isinstance(v, (int, float, str, bool)) else _label(v)) for k, v in values.items()},
            "trial_ids": ids,
            "seeds": list(suite.seeds),
            "n": len(ids),
        }
    return name


def _label(value) -> str:
    """A grid value as text: a component mapping as ``shrink_perturb(0.4, 0.1)`` (schema.config.strategy_label)."""
    if isinstance(value, dict):
        params = ", ".join(f"{k}={v}" for k, v in value.items() if k != "name")
        if "name" in value:
            return strategy_label(value["name"], {k: v for k, v in value.items() if k != "name"})
        return params
    return str(value)


def describe_point(point: dict) -> str:
    return " ".join(f"{k}={_label(v)}" for k, v in point.items())
