"""Starting a trial: the one path that the CLI, a Tune trial, a Ray Train worker and the
Python API all take.

    run_trial(config, out)          # validate, then in-process or on Ray Train; the rows
      └─ start_trial(cfg, out)      # in one process: device, data, store, state
           └─ TrialSession.step()   # engine.loop.advance: one round, saved

A Ray Train worker calls ``start_trial`` with its own ``comm`` and device; everything
else goes through ``run_trial``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass

import torch
import yaml

from engine.config import Config, build
from engine.loop import (
    Reporter,
    RoundResult,
    Silent,
    TrialContext,
    TrialState,
    advance,
    load_data,
    open_trial,
    plan_rounds,
    resolve_device,
)
from engine.registry import ConfigError
from engine.store import TrialStore
from engine.train import LOCAL


@dataclass(frozen=True)
class TrialInfo:
    """What a trial is about to do, for whoever announces it (``Reporter.trial_started``)."""

    trial_id: str
    cfg: Config
    n_pool: int
    n_eval: int
    rounds: int
    initial: int
    per_round: int
    completed: int  # rounds already completed under ``out`` (0: a new trial)
    where: str  # "cpu", "cuda", or "Ray Train with N worker(s)"
    out: str | None
    notes: tuple[str, ...] = ()  # what was found under out and recovered from (one line each)


def open_store(cfg: Config, out: str | None, lock: bool = True) -> TrialStore | None:
    """The trial's store under ``out`` (None: rows stay in memory), probed for writability
    and locked for this process.  Refused when ``out`` cannot be written or already holds
    this trial id with a different config; ``TrialBusy`` when another process runs it."""
    if out is None:
        return None
    store = TrialStore(out, cfg.trial_id())
    try:
        saved = store.saved_config()
    except (NotADirectoryError, yaml.YAMLError, OSError):
        saved = None  # probe() says what is wrong with the path; a damaged config is rewritten
    if saved is not None and Config(saved).identity() != cfg.identity():
        raise ConfigError(
            f"{out} already holds trial {cfg.trial_id()!r} with a different config; choose another out or trial_id."
        )
    store.probe()
    if lock:
        store.lock()
    return store


class TrialSession:
    """One trial in this process, round by round."""

    def __init__(self, context: TrialContext, state: TrialState, store: TrialStore | None) -> None:
        self.context, self.state, self.store = context, state, store
        self.rows: list[dict] = []  # the rows of the rounds this session ran

    def close(self) -> None:
        """Release the trial's lock (also released when the process ends, however it ends)."""
        if self.store is not None:
            self.store.unlock()

    def __enter__(self) -> TrialSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def done(self) -> bool:
        """Every round run, or stopped early (``state.stopped``: a divergence)."""
        return self.state.done(self.context.plan.rounds)

    def step(self) -> RoundResult:
        """Run and save the next round."""
        if self.done:
            raise StopIteration(f"trial {self.context.columns['trial_id']} is complete")
        result = advance(self.context, self.state, self.store)
        self.rows.append(result.row)
        return result

    def run(self) -> list[dict]:
        """Every remaining round; the rows of this session's rounds."""
        while not self.done:
            self.step()
        return self.rows

    def info(self, out: str | None) -> TrialInfo:
        plan, data = self.context.plan, self.context.data
        return TrialInfo(
            self.context.columns["trial_id"],
            self.context.cfg,
            plan.n_pool,
            int(data.eval_y.shape[0]),
            plan.rounds,
            plan.initial,
            plan.per_round,
            self.state.round,
            self.context.device.type,
            out,
            tuple(self.context.notes),
        )


def start_trial(
    cfg: Config,
    out: str | None,
    *,
    comm=LOCAL,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
    lock: bool = True,
) -> TrialSession:
    """Start (or resume) a validated trial in this process: device, data, store, state.
    ``lock=False`` where another process holds the trial's lock for it (Ray Train workers:
    their driver holds it)."""
    device = device or resolve_device(cfg.device)
    data = load_data(cfg, device)
    plan_rounds(cfg, data.pool_y.shape[0])  # refused round counts: before anything is written
    store = open_store(cfg, out, lock=lock)
    try:
        context, state = open_trial(cfg, data, store, device, comm, reporter)
    except BaseException:
        if store is not None:
            store.unlock()
        raise
    return TrialSession(context, state, store)


def run_trial(
    config,
    out: str | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
    reporter: Reporter | None = None,
    sets=(),
    plugins=(),
) -> list[dict]:
    """Run (or continue) one trial to its last round; every row of the trial, in round order.

    ``config``: a mapping, a YAML file's path or a Config.  ``out=None`` keeps the rows in
    memory (on Ray Train, in a temporary folder on this machine).  ``workers`` runs it on
    Ray Train with that many data-parallel workers (``scaling.workers``); ``address`` joins
    a running Ray cluster (and then runs there, one worker unless ``workers`` says more).
    Invalid input raises ``ConfigError`` before anything is written."""
    sets = list(sets)
    if workers is not None:
        sets.append(f"scaling.workers={workers}")
    if address and workers is None and not any(s.startswith("scaling.workers=") for s in sets):
        sets.append("scaling.workers=1")  # joining a cluster means running there
    cfg = build(config, sets, plugins)
    reporter = reporter or Silent()
    if cfg.scaling.workers is None:
        with start_trial(cfg, out, reporter=reporter) as session:
            reporter.trial_started(session.info(out))
            session.run()
            return session.store.rows() if session.store is not None else session.rows
    if out is None and address:
        raise ConfigError("A trial on a Ray cluster needs an out that every node can reach (a shared path or URI).")
    with tempfile.TemporaryDirectory(prefix="warmstart-") if out is None else contextlib.nullcontext(out) as location:
        return _run_on_ray(cfg, location, address, reporter)


def _run_on_ray(cfg: Config, out: str, address: str | None, reporter: Reporter) -> list[dict]:
    from engine.distributed import check_resources, init_ray, run_trial_on_ray

    # The driver reads the data only to check the plan; every worker loads its own copy.
    data = load_data(cfg, torch.device("cpu"))
    plan = plan_rounds(cfg, data.pool_y.shape[0])  # refused round counts: before anything is written
    n_eval = int(data.eval_y.shape[0])
    del data
    init_ray(address)  # an unreachable address, or a request the cluster cannot meet: before anything is written
    check_resources(cfg.scaling.workers, cfg.scaling.gpus_per_worker, address, cfg.scaling.resource_timeout)
    store = open_store(cfg, out)  # this driver holds the trial's lock for its workers
    try:
        status = store.load_status() or {}
        rows, _ = store.read_rows()
        # Complete only when every completed round's row is readable; the workers recompute otherwise.
        last = status.get("round", 0)
        completed = last if all(r in rows for r in range(1, last + 1)) else 0
        where = f"Ray Train with {cfg.scaling.workers} worker(s)"
        info = TrialInfo(
            cfg.trial_id(), cfg, plan.n_pool, n_eval, plan.rounds, plan.initial, plan.per_round, completed, where, out,
            tuple(store.notes),
        )  # fmt: skip
        reporter.trial_started(info)
        if completed < plan.rounds:
            relay = None if isinstance(reporter, Silent) else reporter
            run_trial_on_ray(cfg, out if "://" in out else os.path.abspath(out), address, relay, plan.rounds)
        return store.rows()
    finally:
        store.unlock()
