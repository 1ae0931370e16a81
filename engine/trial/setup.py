"""A trial's set-up in one process: its device, its data, its round counts, its fresh
models and performance options, and the row columns every round shares, gathered into
the ``TrialContext`` the round loop (engine/trial/loop.py) reads; and ``TrialState``,
where the trial stands between rounds."""

from __future__ import annotations

import json
import math
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import numpy as np
import torch

from engine.compute.data import Data, load_raw, pool_fraction, split_and_place
from engine.compute.models import Classifier, build_model
from engine.compute.train import LOCAL, Comm, OptimizerSpec, Performance, StepRunner, resolve_performance, seed_for
from engine.errors import ConfigError
from engine.schema.config import Config, dataset_params, resolve_count
from engine.schema.records import PretrainRecord, config_columns
from engine.trial.provenance import provenance_columns
from strategies.acquisition import PoolOutputs
from strategies.init import effective_mix


class Reporter(Protocol):
    def trial_started(self, info) -> None: ...  # engine.trial.session.TrialInfo
    def round_started(self, round_: int, rounds: int, n_labeled: int) -> None: ...
    def epoch(self, round_: int, epoch: int, train_acc: float, train_loss: float) -> None: ...
    def round_done(self, row: dict) -> None: ...


class Silent:
    def trial_started(self, info): ...
    def round_started(self, round_, rounds, n_labeled): ...
    def epoch(self, round_, epoch, train_acc, train_loss): ...
    def round_done(self, row): ...


@dataclass(frozen=True)
class RoundPlan:
    """How many samples a trial labels and when: its round counts resolved against its pool."""

    n_pool: int
    initial: int
    per_round: int
    rounds: int

    def size_after(self, round_: int) -> int:
        return min(self.n_pool, self.initial + (round_ - 1) * self.per_round)

    def added_in(self, round_: int) -> int:
        """How many samples round ``round_`` labels."""
        return self.size_after(round_) - self.size_after(round_ - 1) if round_ > 1 else self.initial


def plan_rounds(cfg: Config, n_pool: int) -> RoundPlan:
    """Counts from config values (ints are counts, floats fractions of the pool)."""
    initial = resolve_count(cfg.rounds.initial, n_pool, "rounds.initial")
    per_round = resolve_count(cfg.rounds.per_round, n_pool, "rounds.per_round")
    rounds = 1 + math.ceil((n_pool - initial) / per_round)
    if cfg.rounds.max_rounds is not None:
        rounds = min(rounds, cfg.rounds.max_rounds)
    return RoundPlan(n_pool, initial, per_round, rounds)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"The 'device' parameter is {name!r}, but no CUDA device is available; use 'cpu' or 'auto'.")
    return device


def load_data(cfg: Config, device: torch.device) -> Data:
    """The trial's data; with pretraining, its pool is ``pretrain.fraction`` of the target pool
    (and the source dataset is checked to have the same input shape)."""
    raw = load_raw(cfg.dataset.name, cfg.dataset.root, cfg.dataset.download, dataset_params(cfg.dataset))
    data = split_and_place(raw, cfg.dataset.eval, cfg.dataset.holdout, seed_for(cfg.seed, 0, "split"), device)
    if cfg.pretrain is None:
        return data
    if cfg.pretrain.dataset != cfg.dataset.name:
        # Read here too (pretraining reads it again) so a mismatch is refused before a run writes anything.
        source = load_raw(cfg.pretrain.dataset, cfg.dataset.root, cfg.dataset.download).train.images.shape[1:]
        if tuple(source) != data.input_shape:
            shape = "x".join(map(str, source))
            raise ConfigError(
                f"The 'pretrain.dataset' {cfg.pretrain.dataset!r} has {shape} inputs, but 'dataset.name' "
                f"{cfg.dataset.name!r} has {'x'.join(map(str, data.input_shape))}: a pretrained model cannot transfer."
            )
    return pool_fraction(data, cfg.pretrain.fraction, seed_for(cfg.seed, 0, "pool_fraction"))


def fresh_model(cfg: Config, data: Data, round_: int, device: torch.device) -> Classifier:
    """Round ``round_``'s freshly initialised model, the same whatever the strategy or device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(cfg.seed, round_, "fresh"))
        model = build_model(cfg.model.name, cfg.model.params(), data.input_shape, data.num_classes)
    return model.to(device)


def performance_for(cfg: Config, data: Data, device: torch.device) -> Performance:
    """The effective ``performance`` options of this trial on ``device`` (``auto`` resolved)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # no memory, no RNG use
        probe = build_model(cfg.model.name, cfg.model.params(), data.input_shape, data.num_classes)
    conv = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in probe.modules())
    return resolve_performance(cfg.performance.to_dict(), device, conv, cfg.eval.batch_size)


def node_name() -> str:
    """The Ray node this process runs on (several nodes may share a host), else the host name."""
    ray = sys.modules.get("ray")  # not imported here: a run outside Ray never loads it
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def trial_columns(
    cfg: Config, plan: RoundPlan, data: Data, device: torch.device, comm: Comm, performance: Performance
) -> dict:
    """The RoundRecord fields that are the same in every round of the trial."""
    shrink, perturb = effective_mix(cfg.init.name, cfg.init.params())
    overrides, plugins = cfg.code()
    return {
        "suite": cfg.suite,
        "trial_id": cfg.trial_id(),
        "seed": cfg.seed,
        "momentum": cfg.optimizer.momentum if cfg.optimizer.name == "sgd" else None,
        "shrink": shrink,
        "perturb": perturb,
        "per_round": plan.per_round,
        "world_size": comm.world_size,
        "device": device.type,
        "node": node_name(),
        "n_pool": plan.n_pool,
        "n_eval": int(data.eval_y.shape[0]),
        "performance": json.dumps(performance.to_dict(), sort_keys=True),
        "overrides": json.dumps(overrides, sort_keys=True) if overrides else None,
        "plugins": json.dumps(plugins, sort_keys=True) if plugins else None,
        "ensemble": None,  # an ensemble's member: its label (trial_context's ``ensemble``)
        "label_files": None,  # a live project's round: its LabelSource's columns (engine/live/step.py)
        **provenance_columns(device),  # what made the rows; started_at and ended_at are the round's
        "config": config_columns({**cfg.to_dict(), "trial_id": cfg.trial_id()}),
    }


class LabelSource(Protocol):
    """Where a round's labels come from: the seam between the round and the world.  The
    simulated source (engine/trial/loop.py ``SIMULATED``: ``rounds.initial`` at random in
    round 1, then the acquisition's picks, labelled by the dataset's ground truth) is every
    trial's default; a live project's source takes them from files an annotator leaves."""

    def select(
        self, context: TrialContext, state: TrialState, round_: int, outputs: PoolOutputs | None
    ) -> tuple[np.ndarray, PoolOutputs | None]:
        """The pool positions round ``round_`` labels, and the pool outputs they were picked
        with (``outputs``: already scored elsewhere, or None).  When it returns,
        ``context.data.pool_y`` holds their labels."""
        ...

    def columns(self, round_: int) -> dict:
        """Row columns round ``round_``'s labels add (a live project's ``label_files``); {}: none."""
        ...

    def last_round(self, plan: RoundPlan) -> int | None:
        """The trial's last round: the plan's when the source labels ``rounds.per_round`` a round
        (simulated); None: as long as labels arrive (a live project stops at ``rounds.max_rounds``)."""
        ...


@dataclass(frozen=True)
class TrialContext:
    """What stays the same for every round of one trial in one process."""

    cfg: Config
    data: Data
    plan: RoundPlan
    device: torch.device
    comm: Comm
    performance: Performance
    columns: Mapping  # trial_columns(), read-only: the RoundRecord fields every round shares
    reporter: Reporter
    runner: StepRunner  # one model and one optimizer for the whole trial (a CUDA graph captures them once)
    labels: LabelSource  # where each round's labels come from


def trial_context(
    cfg: Config,
    data: Data,
    device: torch.device,
    labels: LabelSource,
    comm: Comm = LOCAL,
    reporter: Reporter | None = None,
    ensemble: str | None = None,
) -> TrialContext:
    """The trial's fixed context: round counts, performance options, shared columns, and
    the one model-and-optimizer runner every round trains with.  ``ensemble``: the label of
    the ensemble the trial trains in (its rows' ``ensemble`` column), if any."""
    plan = plan_rounds(cfg, data.pool_y.shape[0])
    performance = performance_for(cfg, data, device)
    columns = {**trial_columns(cfg, plan, data, device, comm, performance), "ensemble": ensemble}
    optimizer = OptimizerSpec(cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum)
    runner = StepRunner(optimizer, performance, comm)
    return TrialContext(
        cfg, data, plan, device, comm, performance, MappingProxyType(columns), reporter or Silent(), runner, labels
    )


@dataclass
class TrialState:
    """Where a trial stands: what the next round starts from.  Saved after every round and
    loaded on resume (engine/trial/resume.py: ``save_round``, ``load_state``) and nowhere else."""

    round: int  # the last completed round; 0 before round 1
    labeled: np.ndarray  # [n_pool] int32: 0 = unlabeled, r = labeled in round r
    model: Classifier | None  # round ``round``'s model (before round 1: the pretrained one, or None)
    pretrain: PretrainRecord | None = None  # pretraining's results, for every row
    stopped: str | None = None  # why the trial ended before its last round ("diverged"), if it did

    def done(self, rounds: int | None) -> bool:
        """``rounds`` run (None: never all), or stopped early."""
        return (rounds is not None and self.round >= rounds) or self.stopped is not None
