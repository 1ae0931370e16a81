"""Ray Tune: a suite's trials packed onto the cluster, one Parquet table, resume, progress.

Each grid point × seed is one Tune trial.  A trial without ``scaling.workers`` runs the
round loop in the Tune trial's own process with one CPU (and ``gpus_per_worker`` GPUs):
no worker group to start, which is what a grid of small models needs.  A trial with
``scaling.workers`` starts one Ray Train worker group for its whole run.

Nothing a trial computes travels through Tune: rows, checkpoints and progress go to
the results store under ``--out``, which is what makes a suite resumable — finished
trials are skipped, unfinished ones continue after their last completed round.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

from engine.registry import ConfigError
from engine.store import TrialStore, filesystem, has_rows, read_manifest, write_manifest
from engine.suite import Suite


def _run_trial(params: dict, trials: list[dict], out: str) -> None:
    """The Tune trainable: one trial, in-process or as one Ray Train worker group."""
    import ray
    import torch

    from engine.config import validate
    from engine.plugins import load_plugins
    from engine.progress import ProgressWriter
    from engine.runner import run_trial

    data = trials[params["index"]]
    load_plugins(data["plugins"])
    cfg = validate(data)
    if cfg.scaling.workers is None:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))  # as many threads as CPUs Tune gave this trial
    # In-process, this process trains and leaves progress in the store; on Ray Train, rank 0 does.
    in_process = cfg.scaling.workers is None
    run_trial(cfg, out, reporter=ProgressWriter(TrialStore(out, cfg.trial_id())) if in_process else None)


def _resources(config: dict, trials: list[dict], trials_per_gpu: int | None = None):
    from ray import tune

    from engine.packing import trial_bundle

    scaling = trials[config["index"]]["scaling"]
    if scaling["workers"] is not None:
        # The trial only drives a worker group that asks for its own resources.
        return tune.PlacementGroupFactory([{"CPU": 0.01}])
    return tune.PlacementGroupFactory([trial_bundle(scaling, trials_per_gpu)])  # N trials share a GPU


def _quiet_progress():
    """Tune's per-trial console lines, silenced: SuiteMonitor reports progress instead.
    (Passing any TrialProgressCallback keeps Tune from adding its default one.)"""
    from ray.tune.progress_reporter import TrialProgressCallback

    class Quiet(TrialProgressCallback):
        def _print(self, msg: str) -> None:
            pass

    return Quiet()


def prepare_out(suite: Suite, out: str, resume: bool) -> None:
    """Refuse an --out that holds other results; record this suite there."""
    manifest = read_manifest(out)
    ids = [t.trial_id for t in suite.trials]
    if manifest is None:
        if has_rows(out):
            raise ConfigError(
                f"{out} already holds results that are not from suite {suite.name!r}; choose another --out."
            )
    elif manifest["name"] != suite.name:
        raise ConfigError(f"{out} holds suite {manifest['name']!r}, not {suite.name!r}; choose another --out.")
    elif not resume:
        raise ConfigError(
            f"{out} already holds suite {suite.name!r}; pass --resume to continue it, or choose another --out."
        )
    elif sorted(manifest["trials"]) != sorted(ids):
        raise ConfigError(
            f"Suite {suite.name!r} changed since {out} was written (its trials differ); choose another --out."
        )
    write_manifest(out, {"name": suite.name, "trials": ids, "source": suite.source})


class SuiteMonitor:
    """Follows every trial's status in the store and prints progress from the driver."""

    def __init__(self, suite: Suite, out: str, stream: TextIO, every: float) -> None:
        self.suite, self.stream, self.every = suite, stream, every
        self.stores = {t.trial_id: TrialStore(out, t.trial_id) for t in suite.trials}
        self.started = time.time()
        self.done: set[str] = set()
        self._last_block = 0.0

    def _finished(self, trial_id: str) -> dict | None:
        status = self.stores[trial_id].load_status()
        return status if status and status["round"] >= status["rounds"] else None

    def skip_finished(self) -> list[int]:
        """Indices of trials still to run; finished ones are reported as such."""
        todo = []
        for i, trial in enumerate(self.suite.trials):
            if self._finished(trial.trial_id):
                self.done.add(trial.trial_id)
            else:
                todo.append(i)
        if self.done:
            print(
                f"{len(self.done)} of {len(self.suite.trials)} trials already complete; skipping them", file=self.stream
            )
        return todo

    def poll(self, force_block: bool = False) -> None:
        running = []
        for trial in self.suite.trials:
            tid = trial.trial_id
            if tid in self.done:
                continue
            status = self._finished(tid)
            if status:
                self.done.add(tid)
                point = describe_point(trial.point)
                print(
                    f"[{len(self.done)}/{len(self.suite.trials)} done] {point}: "
                    f"{status['rounds']} rounds, final test_acc {status['test_acc']:.4f}",
                    file=self.stream,
                    flush=True,
                )
                continue
            progress = self.stores[tid].load_progress()
            if progress and progress.get("time", 0) >= self.started:
                last = self.stores[tid].load_status()
                running.append((trial, progress, last))
        now = time.time()
        if running and (force_block or now - self._last_block >= self.every):
            self._last_block = now
            pending = len(self.suite.trials) - len(self.done) - len(running)
            print(
                f"-- {len(self.done)} done, {len(running)} running, {pending} pending ({now - self.started:.0f}s)",
                file=self.stream,
            )
            for trial, progress, last in running:
                acc = f"{last['test_acc']:.4f}" if last else "-"
                point = describe_point(trial.point)
                print(f"   {point}: round {progress['round']}, last test_acc {acc}", file=self.stream)
            self.stream.flush()


def run_suite(
    suite: Suite,
    out: str,
    address: str | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
    stream: TextIO | None = None,
    every: float = 30.0,
    trials_per_gpu: int | None = None,
) -> list[tuple[str, str, str]]:
    """Run every unfinished trial; returns (trial_id, error, traceback file) for the trials that failed."""
    stream = stream or sys.stdout
    from ray import tune

    from engine.distributed import error_line, init_ray

    prepare_out(suite, out, resume)
    # A failed trial's traceback goes to its error.txt under --out; the driver lists the
    # failures at the end instead of Tune logging each traceback mid-progress.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    monitor = SuiteMonitor(suite, out, stream, every)
    todo = monitor.skip_finished()
    if not todo:
        return []
    init_ray(address)
    location = out if "://" in out else filesystem(out)[1]
    # The driver's trial ids are final: workers must not re-derive them.
    trials = [{**t.config.to_dict(), "trial_id": t.trial_id} for t in suite.trials]
    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, trials=trials, out=location),
        resources=lambda config: _resources(config, trials, trials_per_gpu),
    )
    names = [t.trial_id for t in suite.trials]
    tuner = tune.Tuner(
        trainable,
        param_space={"index": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,  # a trial process imports torch once, not once per trial
            trial_name_creator=lambda trial: names[trial.config["index"]],
            trial_dirname_creator=lambda trial: names[trial.config["index"]],
        ),
        run_config=tune.RunConfig(
            name=suite.name,
            storage_path=f"{location}/_warmstart/tune",
            failure_config=tune.FailureConfig(max_failures=suite.trials[0].config.scaling.max_failures),
            verbose=0,
            callbacks=[_quiet_progress()],
        ),
    )
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(2.0):
            monitor.poll()

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    try:
        grid = tuner.fit()
    finally:
        stop.set()
        watcher.join()
    monitor.poll()
    return [
        (names[result.config["index"]], error_line(result.error), f"{result.path}/error.txt")
        for result in grid
        if result.error is not None
    ]


def _label(value) -> str:
    """A grid value as text: a component mapping as ``shrink_perturb(shrink=0.4, perturb=0.1)``."""
    if isinstance(value, dict):
        params = ", ".join(f"{k}={v}" for k, v in value.items() if k != "name")
        if "name" in value:
            return f"{value['name']}({params})" if params else value["name"]
        return params
    return str(value)


def describe_point(point: dict) -> str:
    return " ".join(f"{k}={_label(v)}" for k, v in point.items())
