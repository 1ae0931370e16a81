"""The round loop: one trial, the same function in-process and inside every Ray Train worker.

    for each round r:
        picked = initial random set (r = 1) | acquisition(pool outputs of model r-1, k)
        model  = fresh (r = 1) | init_strategy(model r-1, fresh model r)
        stats  = fit(model, labeled)            # to convergence, a new optimizer
        metrics= evaluate(model, eval split)    # after BatchNorm re-estimation
        one row -> Parquet; checkpoint -> next to it

Every random choice of round r draws from a stream seeded by (seed, r, purpose), so a
round is reproducible on its own: resuming from a checkpoint needs no RNG state.
Labeled state is one integer array over the pool: 0 = unlabeled, r = labeled in round r.

With pretraining (config ``pretrain``, the paper's Figure 9), a source model is trained
first (``pretrain``: seeded, in-process or data-parallel like a round) and round 1
changes meaning: its training set is still ``rounds.initial`` random samples of the
target pool, but its model is ``init_strategy(pretrained, fresh model 1)`` instead of
the fresh model, so ``warm`` fine-tunes the pretrained model, ``shrink_perturb``
shrinks and perturbs it, and ``random`` ignores it (the no-transfer baseline).  When
the source and target class counts differ, the pretrained model first gets round 1's
fresh head.  Rounds 2.. are as without pretraining.  "Pretrain on a fraction, then
train on all the data" is ``pretrain: {dataset: <the target>, source_fraction: f}``
with ``rounds.initial`` = the whole pool and one round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import socket
import sys
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from engine.compute.data import Data, dataset_params, load_raw, pool_fraction, split_and_place
from engine.compute.models import Classifier, build_model
from engine.compute.pretrain import pretrain, with_target_head
from engine.compute.scoring import pool_outputs
from engine.compute.train import (
    LOCAL,
    PLAIN,
    OptimizerSpec,
    Performance,
    StepRunner,
    evaluate,
    fit,
    precise_bn,
    resolve_performance,
    seed_for,
)
from engine.errors import ConfigError, StrategyError, TrialError
from engine.schema.config import Config, resolve_count
from engine.schema.records import PRETRAIN_COLUMNS, RECORD_COLUMNS, PretrainRecord, RoundRecord, config_columns
from engine.storage.store import TrialStore
from strategies.acquisition import ACQUISITION_STRATEGIES, PoolOutputs, pick
from strategies.init import INIT_STRATEGIES, effective_mix


class Reporter(Protocol):
    def trial_started(self, info) -> None: ...  # engine.trial.runner.TrialInfo
    def round_started(self, round_: int, rounds: int, n_labeled: int) -> None: ...
    def epoch(self, round_: int, epoch: int, train_acc: float, train_loss: float) -> None: ...
    def round_done(self, row: dict) -> None: ...


class Silent:
    def trial_started(self, info): ...
    def round_started(self, round_, rounds, n_labeled): ...
    def epoch(self, round_, epoch, train_acc, train_loss): ...
    def round_done(self, row): ...


@dataclass(frozen=True)
class Plan:
    n_pool: int
    initial: int
    per_round: int
    rounds: int

    def size_after(self, round_: int) -> int:
        return min(self.n_pool, self.initial + (round_ - 1) * self.per_round)


def plan_rounds(cfg: Config, n_pool: int) -> Plan:
    """Counts from config values (ints are counts, floats fractions of the pool)."""
    initial = resolve_count(cfg.rounds.initial, n_pool, "rounds.initial")
    per_round = resolve_count(cfg.rounds.per_round, n_pool, "rounds.per_round")
    rounds = 1 + math.ceil((n_pool - initial) / per_round)
    if cfg.rounds.max_rounds is not None:
        rounds = min(rounds, cfg.rounds.max_rounds)
    return Plan(n_pool, initial, per_round, rounds)


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


def acquire(
    cfg: Config,
    model: Classifier,
    data: Data,
    labeled: np.ndarray,
    k: int,
    round_: int,
    comm,
    performance: Performance = PLAIN,
) -> tuple[np.ndarray, PoolOutputs]:
    """Pool positions of the k samples the acquisition strategy picks from the unlabeled
    pool, and the pool outputs it scored them with."""
    entry = ACQUISITION_STRATEGIES.get(cfg.acquisition.name)
    needs, params = entry.extra["needs"], cfg.acquisition.params()
    unlabeled = np.flatnonzero(labeled == 0)
    device = data.pool_x.device
    # Positions, not a gathered copy of the unlabeled inputs: scoring gathers batch by batch.
    outputs = pool_outputs(
        model,
        data.pool_x,
        needs,
        performance.inference_batch_size or cfg.eval.batch_size,
        comm,
        positions=torch.from_numpy(unlabeled).to(device),
        labeled=torch.from_numpy(np.flatnonzero(labeled)).to(device) if "labeled_embeddings" in needs else None,
        mc_samples=params.get("mc_samples", 0) if "mc_probs" in needs else 0,
        seed=seed_for(cfg.seed, round_, "mc_dropout"),
        performance=performance,
    )
    picked = None
    if comm.rank == 0:  # the strategy runs once; its answer is broadcast
        rng = np.random.default_rng(seed_for(cfg.seed, round_, "acquire"))
        with strategy_errors(f"The acquisition strategy {entry.name!r}", round_):
            # Only the k picked positions reach the host; a contract breach names the round.
            picked = unlabeled[pick(entry.name, outputs, k, rng, params, round_)]
    return comm.broadcast(picked), outputs


@contextlib.contextmanager
def strategy_errors(what: str, round_: int):
    """A strategy's exception as one line naming it and the round (the original chained,
    for --debug)."""
    try:
        yield
    except (TrialError, ConfigError):
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise StrategyError(f"{what} failed in round {round_}: {type(exc).__name__}: {reason}"[:500]) from exc


def check_model(name: str, model, shapes: dict, device: torch.device, round_: int) -> None:
    """An init strategy must return a model of the fresh model's architecture, on its device."""
    where = f"The init strategy {name!r} in round {round_} broke its contract"
    if not isinstance(model, torch.nn.Module):
        raise StrategyError(f"{where}: expected a torch.nn.Module, got {type(model).__name__}")
    got = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if got != shapes:
        differ = next((n for n in shapes if got.get(n) != shapes[n]), None) or next(n for n in got if n not in shapes)
        raise StrategyError(
            f"{where}: expected the fresh model's parameters, but {differ!r} has shape "
            f"{got.get(differ, 'none')} (expected {shapes.get(differ, 'none')})"
        )
    wrong = next((n for n, p in model.named_parameters() if p.device.type != device.type), None)
    if wrong is not None:
        raise StrategyError(
            f"{where}: parameter {wrong!r} is on {model.get_parameter(wrong).device}, expected {device}"
        )


def node_name() -> str:
    """The Ray node this process runs on (several nodes may share a host), else the host name."""
    ray = sys.modules.get("ray")  # not imported here: a run outside Ray never loads it
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def trial_columns(cfg: Config, plan: Plan, data: Data, device: torch.device, comm, performance: Performance) -> dict:
    """The RoundRecord fields that are the same in every round of the trial."""
    shrink, perturb = effective_mix(cfg.init.name, cfg.init.params())
    overrides = cfg.overrides()
    return {
        "suite": cfg.suite,
        "trial_id": cfg.trial_id(),
        "seed": cfg.seed,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "batch_size": cfg.batch_size,
        "weight_decay": cfg.optimizer.weight_decay,
        "momentum": cfg.optimizer.momentum if cfg.optimizer.name == "sgd" else None,
        "init": cfg.init.name,
        "shrink": shrink,
        "perturb": perturb,
        "bn_stats": cfg.init.params().get("bn_stats"),
        "acquisition": cfg.acquisition.name,
        "per_round": plan.per_round,
        "world_size": comm.world_size,
        "device": device.type,
        "node": node_name(),
        "eval_split": cfg.dataset.eval,
        "model_params": json.dumps(cfg.model.params(), sort_keys=True),
        "init_params": json.dumps(cfg.init.params(), sort_keys=True),
        "acquisition_params": json.dumps(cfg.acquisition.params(), sort_keys=True),
        "n_pool": plan.n_pool,
        "n_eval": int(data.eval_y.shape[0]),
        "performance": json.dumps(performance.to_dict(), sort_keys=True),
        "pretrain_dataset": cfg.pretrain.dataset if cfg.pretrain is not None else None,
        "pretrain_params": json.dumps(cfg.pretrain.to_dict(), sort_keys=True) if cfg.pretrain is not None else None,
        "overrides": json.dumps(overrides, sort_keys=True) if overrides else None,
        "config": config_columns({**cfg.to_dict(), "trial_id": cfg.trial_id()}),
    }


# --- one trial: its fixed context, its state, one round ----------------------------------


@dataclass(frozen=True)
class TrialContext:
    """What stays the same for every round of one trial in one process."""

    cfg: Config
    data: Data
    plan: Plan
    device: torch.device
    comm: object
    performance: Performance
    columns: dict  # trial_columns(): the RoundRecord fields every round shares
    reporter: Reporter
    runner: StepRunner  # one model and one optimizer for the whole trial (a CUDA graph captures them once)
    # Rows that survived in the store for rounds this process recomputes: each new row must
    # reproduce its saved twin (NOT_CHECKED columns aside) before it replaces it.
    expected: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)  # what was found and recovered from


@dataclass
class TrialState:
    """Where a trial stands: what the next round starts from.  Saved after every round and
    loaded on resume, both here (``save_round``, ``load_state``) and nowhere else."""

    round: int  # the last completed round; 0 before round 1
    labeled: np.ndarray  # [n_pool] int32: 0 = unlabeled, r = labeled in round r
    model: Classifier | None  # round ``round``'s model (before round 1: the pretrained one, or None)
    pretrain: PretrainRecord | None = None  # pretraining's results, for every row
    stopped: str | None = None  # why the trial ended before its last round ("diverged"), if it did

    def done(self, rounds: int) -> bool:
        return self.round >= rounds or self.stopped is not None


@dataclass
class RoundResult:
    """One round's outcome: its row, the dataset indices it added, the pool outputs the
    acquisition scored (None in round 1, whose set is random) and the trained model."""

    row: dict
    picked: np.ndarray
    outputs: PoolOutputs | None
    model: Classifier


def open_trial(
    cfg: Config,
    data: Data,
    store: TrialStore | None,
    device: torch.device,
    comm=LOCAL,
    reporter: Reporter | None = None,
) -> tuple[TrialContext, TrialState]:
    """The trial's context, and its state: from the store's checkpoint after the last
    completed round, else fresh (pretraining first, when configured)."""
    plan = plan_rounds(cfg, data.pool_y.shape[0])
    performance = performance_for(cfg, data, device)
    columns = trial_columns(cfg, plan, data, device, comm, performance)
    optimizer = OptimizerSpec(cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum)
    runner = StepRunner(optimizer, performance, comm)
    context = TrialContext(cfg, data, plan, device, comm, performance, columns, reporter or Silent(), runner)
    if store is not None and comm.rank == 0:
        store.save_config(cfg.to_yaml())  # frozen next to the rows it makes
    state = load_state(store, context)
    if store is not None:
        state = check_rows(store, context, state)
    if state is None:
        state = TrialState(0, np.zeros(plan.n_pool, dtype=np.int32), None)
        if cfg.pretrain is not None:
            pretrained = pretrain(cfg, device, comm, performance)
            state.model, state.pretrain = pretrained.model, pretrained.record
    return context, state


# Columns left out of the integrity check: time measurements, the suite a trial ran in
# (not part of its identity: the same trial may run alone, then in a suite), and its node.
NOT_CHECKED = (
    *("train_seconds", "acquire_seconds", "eval_seconds", "capture_seconds", "pretrain_seconds", "suite"),
    "node",  # a trial resumed elsewhere (a lost node) reproduces its rows on another node
)


def check_rows(store: TrialStore, context: TrialContext, state: TrialState | None) -> TrialState | None:
    """Resume trusts the rows, not only the checkpoint: when a completed round's row is
    missing or unreadable, the trial is recomputed from round 1 (every round is a function
    of the seed), and every row that survives is checked bit for bit on the way."""
    rows, unreadable = store.read_rows()
    completed = state.round if state is not None else 0
    lost = sorted(set(range(1, completed + 1)) - set(rows))
    context.expected.update(rows)
    context.notes.extend(store.notes)
    if unreadable:
        context.notes.append(f"note: the rows of round(s) {_rounds(unreadable)} cannot be read: recomputed")
    if lost:
        context.notes.append(
            f"note: the rows of round(s) {_rounds(lost)} are missing or unreadable: trial {store.trial_id} is "
            f"recomputed from round 1, and its {len(rows)} surviving row(s) must reproduce bit for bit"
        )
        return None
    if state is None and rows:
        context.notes.append(
            f"note: no intact checkpoint for trial {store.trial_id}: recomputed from round 1, and its "
            f"{len(rows)} saved row(s) must reproduce bit for bit"
        )
    return state


def _rounds(rounds: list[int]) -> str:
    return ", ".join(map(str, rounds))


def verify_row(context: TrialContext, row: dict) -> None:
    """Raise when a recomputed round differs from the row saved for it."""
    saved = context.expected.get(row["round"])
    if saved is None:
        return
    for column in RECORD_COLUMNS:
        if column in NOT_CHECKED:
            continue
        new, old = row.get(column), saved.get(column)
        same = new == old or (isinstance(new, float) and isinstance(old, float) and math.isnan(new) and math.isnan(old))
        if not same:
            raise TrialError(
                f"Integrity check failed: round {row['round']} of trial {row['trial_id']} does not reproduce its "
                f"saved row ({column} was {old!r}, now {new!r}); the saved results were not made by this code "
                "and config on this kind of machine. Nothing was overwritten."
            )


def load_state(store: TrialStore | None, context: TrialContext) -> TrialState | None:
    """The state saved after the last completed round, or None."""
    checkpoint = store.load_checkpoint() if store is not None else None
    if checkpoint is None:
        return None
    model = fresh_model(context.cfg, context.data, checkpoint["round"], context.device)
    model.load_state_dict(checkpoint["model"])
    record = PretrainRecord.from_columns(checkpoint.get("pretrain") or {})
    # A trial stopped by a divergence stays stopped, unless it is now asked to go on.
    stopped = checkpoint.get("stopped") if context.cfg.convergence.on_diverge == "stop" else None
    return TrialState(checkpoint["round"], checkpoint["labeled"], model, record, stopped)


def save_round(store: TrialStore | None, context: TrialContext, state: TrialState, row: dict) -> None:
    """Persist a completed round (rank 0): the row first, then the checkpoint and status.
    A crash between the two re-runs this round on resume, which rewrites the same row
    file instead of adding one."""
    verify_row(context, row)  # every rank: a mismatch stops them all at the same round
    if store is None or context.comm.rank != 0:
        return
    store.write_row(row)
    weights = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
    pretrained = {c: row[c] for c in PRETRAIN_COLUMNS}
    checkpoint = {"round": state.round, "labeled": state.labeled.copy(), "model": weights, "pretrain": pretrained}
    store.save_checkpoint({**checkpoint, "stopped": state.stopped})
    status = {"round": state.round, "rounds": context.plan.rounds, "test_acc": row["test_acc"]}
    store.save_status({**status, "stopped": state.stopped} if state.stopped else status)


def run_round(context: TrialContext, state: TrialState) -> RoundResult:
    """Round ``state.round + 1``: acquire, initialise, train, evaluate.  Advances ``state``."""
    cfg, data, plan, device, comm, performance = (
        context.cfg,
        context.data,
        context.plan,
        context.device,
        context.comm,
        context.performance,
    )
    round_ = state.round + 1
    k = plan.size_after(round_) - plan.size_after(round_ - 1) if round_ > 1 else plan.initial
    context.reporter.round_started(round_, plan.rounds, plan.size_after(round_))
    began = time.perf_counter()
    outputs = None
    if round_ == 1:
        picked = np.random.default_rng(seed_for(cfg.seed, 1, "acquire")).choice(plan.n_pool, k, replace=False)
    else:
        picked, outputs = acquire(cfg, state.model, data, state.labeled, k, round_, comm, performance)
    state.labeled[picked] = round_
    acquire_seconds = time.perf_counter() - began

    fresh = fresh_model(cfg, data, round_, device)
    if state.model is None:  # round 1 without pretraining: always fresh
        model = fresh
    else:
        prev = with_target_head(state.model, fresh) if round_ == 1 else state.model
        shapes = {name: tuple(p.shape) for name, p in fresh.named_parameters()}
        with strategy_errors(f"The init strategy {cfg.init.name!r}", round_):
            model = INIT_STRATEGIES.get(cfg.init.name).fn(prev, fresh, **cfg.init.params())
        check_model(cfg.init.name, model, shapes, device, round_)
    comm.check_same(model, f"round {round_}: the init strategy {cfg.init.name!r}")
    positions = torch.from_numpy(np.flatnonzero(state.labeled)).to(device)
    x, y = data.pool_x[positions], data.pool_y[positions]

    began = time.perf_counter()
    stats = fit(
        model,
        x,
        y,
        None,  # the trial's runner owns one optimizer, reset in place: as new every round
        cfg.batch_size,
        cfg.convergence,
        seed_for(cfg.seed, round_, "train"),
        comm,
        on_epoch=functools.partial(context.reporter.epoch, round_),
        runner=context.runner,
    )
    train_seconds = time.perf_counter() - began

    began = time.perf_counter()
    re_estimated = cfg.eval.precise_bn and precise_bn(model, x, cfg.batch_size, comm, performance)
    eval_batch = performance.inference_batch_size or cfg.eval.batch_size
    test_acc, test_loss = evaluate(model, data.eval_x, data.eval_y, eval_batch, performance)
    eval_seconds = time.perf_counter() - began
    del x, y  # the labeled copy: not held while the next round scores the pool

    added = np.sort(data.pool_index[state.labeled == round_])
    record = RoundRecord(
        **context.columns,
        round=round_,
        n_labeled=int(positions.shape[0]),
        epochs=stats.epochs,
        steps=stats.steps,
        stop_reason=stats.stop_reason,
        train_acc=stats.train_acc,
        train_loss=stats.train_loss,
        test_acc=test_acc,
        test_loss=test_loss,
        train_seconds=train_seconds,
        capture_seconds=stats.capture_seconds,
        acquire_seconds=acquire_seconds,
        eval_seconds=eval_seconds,
        precise_bn=bool(re_estimated),
        acquired=[int(i) for i in added],
        pretrain=state.pretrain,
    )
    state.round, state.model = round_, model
    if stats.stop_reason == "diverged" and cfg.convergence.on_diverge == "stop":
        state.stopped = "diverged"
    return RoundResult(record.to_row(), added, outputs, model)


def advance(context: TrialContext, state: TrialState, store: TrialStore | None) -> RoundResult:
    """The next round, run and saved, then reported."""
    result = run_round(context, state)
    save_round(store, context, state, result.row)
    context.reporter.round_done(result.row)
    return result


def run_rounds(
    cfg: Config,
    data: Data,
    store: TrialStore | None,
    device: torch.device,
    comm=LOCAL,
    reporter: Reporter | None = None,
) -> list[dict]:
    """Run (or continue) the trial to its last round; returns the rows of this call's rounds."""
    context, state = open_trial(cfg, data, store, device, comm, reporter)
    rows = []
    while not state.done(context.plan.rounds):
        rows.append(advance(context, state, store).row)
    return rows
