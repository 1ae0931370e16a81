"""A trial in one process: ``start_trial`` opens it (device, data, store, state) as a
``TrialSession``, which the round driver (engine/trial/driver.py) runs round by round.

This is where every trial starts in the process that trains it: the CLI's and the API's
in-process runs and Tune trials (through ``engine.trial.runner.run_trial``), each Ray Train
worker (``engine.trial.distributed.worker_main``) and ``warmstart.Trial``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch

from engine.compute.data import Data
from engine.compute.pretrain import pretrain
from engine.compute.train import LOCAL, Comm
from engine.errors import ConfigError
from engine.schema.config import Config
from engine.storage.store import CONFIG_REMEDY, TrialStore
from engine.trial.loop import SIMULATED
from engine.trial.resume import Resumed, check_code, check_rows, load_state
from engine.trial.setup import (
    LabelSource,
    Reporter,
    TrialContext,
    TrialState,
    load_data,
    plan_rounds,
    resolve_device,
    trial_context,
)


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


def open_store(cfg: Config, out: str | None, lock: bool = True, lease: str | None = None) -> TrialStore | None:
    """The trial's store under ``out`` (None: rows stay in memory), probed for writability
    and locked for this process (or, with ``lock=False``, committing under the ``lease``
    its driver holds on an object store).  Refused when ``out`` cannot be written or
    already holds this trial id with a different config; ``TrialBusy`` when another
    process runs it."""
    if out is None:
        return None
    store = TrialStore(out, cfg.trial_id())
    store.probe()  # first: an object store that does not answer is named in seconds (object_store.reach)
    try:
        saved = store.saved_config()  # a damaged one: a ConfigError naming it
    except OSError:
        saved = None  # probe() says what is wrong with the path
    try:
        identity = Config(saved).identity() if saved is not None else None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"The saved config {store.config_name()} is damaged (not a warmstart config: {type(exc).__name__} "
            f"{exc}); {CONFIG_REMEDY}."
        ) from None
    if identity is not None and identity != cfg.identity():
        raise ConfigError(
            f"{out} already holds trial {cfg.trial_id()!r} with a different config; choose another out or trial_id."
        )
    check_code(store, cfg)  # rows another version of a plugin made: refused
    if lock:
        store.lock()
    else:
        store.follow_lease(lease)
    return store


def open_trial(
    cfg: Config,
    data: Data,
    store: TrialStore | None,
    device: torch.device,
    labels: LabelSource,
    comm: Comm = LOCAL,
    reporter: Reporter | None = None,
    ensemble: str | None = None,
) -> TrialSession:
    """The trial's context, and its state: from the store's checkpoint after the last
    completed round (with the saved rows it must reproduce), else fresh (pretraining first,
    when configured)."""
    context = trial_context(cfg, data, device, labels, comm, reporter, ensemble)
    if store is not None and comm.rank == 0:
        store.save_config(cfg.to_yaml())  # frozen next to the rows it makes
    resumed = Resumed(load_state(store, context), MappingProxyType({}), ())
    if store is not None:
        resumed = check_rows(store, context, resumed.state)
    state = resumed.state
    if state is None:
        state = TrialState(0, np.zeros(context.plan.n_pool, dtype=np.int32), None)
        if cfg.pretrain is not None:
            pretrained = pretrain(cfg, device, comm, context.performance)
            state.model, state.pretrain = pretrained.model, pretrained.record
    return TrialSession(context, state, store, resumed.expected, resumed.notes)


class TrialSession:
    """One trial opened in this process: its fixed context, where it stands, its store, and
    what resuming found.  The round driver (engine/trial/driver.py) advances it."""

    def __init__(
        self,
        context: TrialContext,
        state: TrialState,
        store: TrialStore | None,
        expected: Mapping[int, dict] = MappingProxyType({}),
        notes: tuple[str, ...] = (),
    ) -> None:
        self.context, self.state, self.store = context, state, store
        # The rows saved under out when the trial opened, by round: those of the rounds this
        # process recomputes must reproduce (engine.trial.resume.verify_row).
        self.expected = expected
        self.notes = notes  # what was found under out and recovered from (one line each)
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
        return self.state.done(self.context.labels.last_round(self.context.plan))

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
            self.notes,
        )


def start_trial(
    cfg: Config,
    out: str | None,
    *,
    comm: Comm = LOCAL,
    device: torch.device | None = None,
    reporter: Reporter | None = None,
    lock: bool = True,
    data: Data | None = None,
    lease: str | None = None,
    labels: LabelSource = SIMULATED,
    ensemble: str | None = None,
) -> TrialSession:
    """Start (or resume) a validated trial in this process: device, data, store, state;
    the round driver (engine/trial/driver.py) runs its rounds.  ``lock=False`` where another
    process holds the trial's lock for it (Ray Train workers: their driver holds it, and on
    an object store gives them its ``lease``).  ``data``: the trial's data already loaded on
    ``device`` (an ensemble's members share theirs).  ``labels``: where each round's labels
    come from (default: the simulated annotator).  ``ensemble``: the label of the ensemble
    the trial trains in."""
    device = device or resolve_device(cfg.device)
    data = data if data is not None else load_data(cfg, device)
    plan_rounds(cfg, data.pool_y.shape[0])  # refused round counts: before anything is written
    store = open_store(cfg, out, lock=lock, lease=lease)
    try:
        return open_trial(cfg, data, store, device, labels, comm, reporter, ensemble)
    except BaseException:
        if store is not None:
            store.unlock()
        raise
