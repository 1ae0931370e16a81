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

Around the loop: engine/trial/setup.py builds the trial's context (device, data, counts,
shared columns), engine/trial/resume.py saves and reloads its state and checks its rows,
and engine/trial/session.py (``start_trial``) opens a trial, the one way in.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import torch

from engine.compute.data import Data
from engine.compute.models import Classifier
from engine.compute.pretrain import with_target_head
from engine.compute.scoring import pool_outputs
from engine.compute.stacked import evaluate_stacked, member_batch
from engine.compute.train import PLAIN, Comm, FitStats, Performance, evaluate, fit, precise_bn, seed_for
from engine.errors import ConfigError, StrategyError, TrialError
from engine.schema.catalogue import ACQUISITION_STRATEGIES, INIT_STRATEGIES
from engine.schema.config import Config
from engine.schema.records import RoundRecord
from engine.trial.provenance import now
from engine.trial.setup import RoundPlan, TrialContext, TrialState, fresh_model
from strategies.acquisition import PoolOutputs, pick


@dataclass
class RoundResult:
    """One round's outcome: its row, the dataset indices it added, the pool outputs the
    acquisition scored (None in round 1, whose set is random) and the trained model."""

    row: dict
    picked: np.ndarray
    outputs: PoolOutputs | None
    model: Classifier
    epochs: list[tuple[int, float, float, float]] = field(default_factory=list)  # RoundStart.epochs


@dataclass
class RoundStart:
    """A round up to training: its samples labelled, its model initialised."""

    round: int
    model: Classifier  # the model to train
    positions: torch.Tensor  # [n] the labelled pool positions, ascending
    outputs: PoolOutputs | None  # what the acquisition scored (None in round 1)
    seconds: dict[str, float]  # acquire_seconds, then train_seconds and eval_seconds
    started_at: datetime = field(default_factory=now)  # UTC; an ensemble sets its stacked round's start
    # (epoch, train_acc, train_loss, seconds since training began) per epoch, with eval.epochs_table
    epochs: list[tuple[int, float, float, float]] = field(default_factory=list)
    train_timing: str = "alone"  # how train_seconds is measured: alone | stacked_share (engine/trial/stacked.py)


def run_round(context: TrialContext, state: TrialState) -> RoundResult:
    """Round ``state.round + 1``, as in the module's pseudocode.  Advances ``state``."""
    start = start_round(context, state)
    x, y = context.data.pool_x[start.positions], context.data.pool_y[start.positions]
    with stopwatch(start.seconds, "train_seconds"):
        stats = train(context, start.model, x, y, start.round, start.epochs if context.cfg.eval.epochs_table else None)
    del x, y  # the labeled copy: not held while the next round scores the pool
    (evaluation,) = evaluate_round([context], [start])
    return finish_round(context, state, start, stats, *evaluation)


def start_round(context: TrialContext, state: TrialState, outputs: PoolOutputs | None = None) -> RoundStart:
    """Round ``state.round + 1`` up to training: select and label, initialise.  ``outputs``:
    the pool outputs scored elsewhere (an ensemble scores its members in one stacked pass,
    engine/trial/stacked.py); None: scored here."""
    round_ = state.round + 1
    context.reporter.round_started(round_, context.plan.rounds, context.plan.size_after(round_))
    started_at, seconds = now(), {}
    with stopwatch(seconds, "acquire_seconds"):
        picked, outputs = context.labels.select(context, state, round_, outputs)
        state.labeled[picked] = round_
    model = initial_model(context, state, round_)
    positions = torch.from_numpy(np.flatnonzero(state.labeled)).to(context.device)
    return RoundStart(round_, model, positions, outputs, seconds, started_at)


def finish_round(
    context: TrialContext,
    state: TrialState,
    start: RoundStart,
    stats: FitStats,
    re_estimated: bool,
    test_acc: float,
    test_loss: float,
) -> RoundResult:
    """The trained and evaluated round's row; ``state`` advanced to it."""
    round_ = start.round
    added = np.sort(context.data.pool_index[state.labeled == round_])
    record = RoundRecord(
        **{**context.columns, **context.labels.columns(round_)},
        **fit_columns(stats),
        **start.seconds,
        train_timing=start.train_timing,
        round=round_,
        n_labeled=int(start.positions.shape[0]),
        test_acc=test_acc,
        test_loss=test_loss,
        precise_bn=bool(re_estimated),
        acquired=[int(i) for i in added],
        acquired_classes=class_counts(context, state.labeled == round_),
        pretrain=state.pretrain,
        started_at=start.started_at,
        ended_at=now(),
    )
    state.round, state.model = round_, start.model
    if stats.stop_reason == "diverged" and context.cfg.convergence.on_diverge == "stop":
        state.stopped = "diverged"
    return RoundResult(record.to_row(), added, start.outputs, start.model, start.epochs)


class SimulatedLabels:
    """The simulated annotator: ``rounds.initial`` pool positions at random in round 1, then
    the acquisition strategy's k from the previous round's model (from ``outputs`` when they
    were scored elsewhere), labelled by the dataset's own ground truth (already in
    ``data.pool_y``).  Every trial's label source unless a live project gives another
    (engine/trial/setup.py ``LabelSource``)."""

    def select(
        self, context: TrialContext, state: TrialState, round_: int, outputs: PoolOutputs | None = None
    ) -> tuple[np.ndarray, PoolOutputs | None]:
        cfg, plan, k = context.cfg, context.plan, context.plan.added_in(round_)
        if round_ == 1:
            return initial_picks(cfg.seed, plan.n_pool, k), None
        if outputs is not None:
            return choose(cfg, outputs, np.flatnonzero(state.labeled == 0), k, round_, context.comm), outputs
        return acquire(cfg, state.model, context.data, state.labeled, k, round_, context.comm, context.performance)

    def columns(self, round_: int) -> dict:
        return {}

    def last_round(self, plan: RoundPlan) -> int:
        return plan.rounds


SIMULATED = SimulatedLabels()


def initial_picks(seed: int, n_pool: int, k: int) -> np.ndarray:
    """Round 1's ``k`` pool positions, at random: seeded by (seed, 1, "acquire")."""
    return np.random.default_rng(seed_for(seed, 1, "acquire")).choice(n_pool, k, replace=False)


def initial_model(context: TrialContext, state: TrialState, round_: int) -> Classifier:
    """The model round ``round_`` trains: its fresh model in round 1 (without pretraining),
    else the init strategy's answer for (previous model, fresh model), checked."""
    cfg, device = context.cfg, context.device
    fresh = fresh_model(cfg, context.data, round_, device)
    if state.model is None:  # round 1 without pretraining: always fresh
        model = fresh
    else:
        prev = with_target_head(state.model, fresh) if round_ == 1 else state.model
        shapes = {name: tuple(p.shape) for name, p in fresh.named_parameters()}
        with strategy_errors(f"The init strategy {cfg.init.name!r}", round_):
            model = INIT_STRATEGIES.get(cfg.init.name).fn(prev, fresh, **cfg.init.params())
        check_model(cfg.init.name, model, shapes, device, round_)
    context.comm.check_same(model, f"round {round_}: the init strategy {cfg.init.name!r}")
    return model


def train(
    context: TrialContext, model: Classifier, x: torch.Tensor, y: torch.Tensor, round_: int, log: list | None = None
) -> FitStats:
    """``fit`` on the labeled set to convergence.  No optimizer is passed: the trial's runner
    owns one, reset in place, as new every round.  ``log``: a list that gets (epoch,
    train_acc, train_loss, seconds since training began) per epoch, from the values ``fit``
    already reads once per epoch (eval.epochs_table); None: nothing kept."""
    cfg, on_epoch = context.cfg, functools.partial(context.reporter.epoch, round_)
    if log is not None:
        on_epoch = epoch_logger(log, on_epoch)
    seed = seed_for(cfg.seed, round_, "train")
    return fit(model, x, y, None, cfg.batch_size, cfg.convergence, seed, context.comm, on_epoch, runner=context.runner)


def epoch_logger(log: list, report, began: float | None = None):
    """An ``on_epoch`` that appends (epoch, acc, loss, seconds since ``began``, default now) to
    ``log``, then calls ``report(epoch, acc, loss)``."""
    began = time.perf_counter() if began is None else began

    def on_epoch(epoch: int, acc: float, loss: float) -> None:
        log.append((epoch, acc, loss, time.perf_counter() - began))
        report(epoch, acc, loss)

    return on_epoch


def evaluate_round(contexts: list[TrialContext], starts: list[RoundStart]) -> list[tuple[bool, float, float]]:
    """The one evaluation of a round's trained models, alone or stacked: each member's
    (BatchNorm statistics re-estimated on its own labelled set, test accuracy, test loss).
    Members that share an evaluation split are evaluated in one stacked pass
    (engine/compute/stacked.py); a member alone, by itself.  Sets each start's
    ``eval_seconds`` (a stacked pass's seconds shared equally)."""
    evaluations: list = [None] * len(contexts)
    for group in same_data(contexts, range(len(contexts))):
        began = time.perf_counter()
        bn = {i: re_estimate(contexts[i], starts[i]) for i in group}
        first = contexts[group[0]]
        data, performance = first.data, first.performance
        eval_batch = performance.inference_batch_size or first.cfg.eval.batch_size
        if len(group) == 1:
            scores = [evaluate(starts[group[0]].model, data.eval_x, data.eval_y, eval_batch, performance)]
        else:
            models = [starts[i].model for i in group]
            scores = evaluate_stacked(
                models, data.eval_x, data.eval_y, member_batch(eval_batch, len(group)), performance
            )
        seconds = (time.perf_counter() - began) / len(group)
        for i, (acc, loss) in zip(group, scores, strict=True):
            evaluations[i] = (bn[i], acc, loss)
            starts[i].seconds["eval_seconds"] = seconds
    return evaluations


def same_data(contexts: list[TrialContext], members) -> list[list[int]]:
    """``members`` (indices into ``contexts``) grouped by the data tensors their trials share."""
    groups: dict[int, list[int]] = {}
    for i in members:
        groups.setdefault(id(contexts[i].data), []).append(i)
    return list(groups.values())


def re_estimate(context: TrialContext, start: RoundStart) -> bool:
    """BatchNorm statistics re-estimated on the round's labelled inputs (``eval.precise_bn``);
    False where not asked for or the model has none."""
    cfg = context.cfg
    if not cfg.eval.precise_bn:
        return False
    x = context.data.pool_x[start.positions]
    return bool(precise_bn(start.model, x, cfg.batch_size, context.comm, context.performance))


def class_counts(context: TrialContext, picked: np.ndarray) -> list[int]:
    """Per class label, how many of the pool positions ``picked`` (a boolean mask) hold."""
    positions = torch.from_numpy(np.flatnonzero(picked)).to(context.data.pool_y.device)
    labels = context.data.pool_y[positions].cpu().numpy()
    return np.bincount(labels, minlength=context.data.num_classes).tolist()


def fit_columns(stats: FitStats) -> dict:
    """The RoundRecord fields ``fit`` measured."""
    return {
        "epochs": stats.epochs,
        "steps": stats.steps,
        "stop_reason": stats.stop_reason,
        "train_acc": stats.train_acc,
        "train_loss": stats.train_loss,
        "capture_seconds": stats.capture_seconds,
    }


def acquire(
    cfg: Config,
    model: Classifier,
    data: Data,
    labeled: np.ndarray,
    k: int,
    round_: int,
    comm: Comm,
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
    return choose(cfg, outputs, unlabeled, k, round_, comm), outputs


def choose(cfg: Config, outputs: PoolOutputs, unlabeled: np.ndarray, k: int, round_: int, comm: Comm) -> np.ndarray:
    """The pool positions the acquisition strategy picks from ``outputs`` (over ``unlabeled``)."""
    entry = ACQUISITION_STRATEGIES.get(cfg.acquisition.name)
    picked = None
    if comm.rank == 0:  # the strategy runs once; its answer is broadcast
        rng = np.random.default_rng(seed_for(cfg.seed, round_, "acquire"))
        with strategy_errors(f"The acquisition strategy {entry.name!r}", round_):
            # Only the k picked positions reach the host; a contract breach names the round.
            picked = unlabeled[pick(entry.name, outputs, k, rng, cfg.acquisition.params(), round_)]
    return comm.broadcast(picked)


@contextlib.contextmanager
def stopwatch(seconds: dict[str, float], key: str):
    """Seconds spent in the block, as ``seconds[key]``."""
    began = time.perf_counter()
    yield
    seconds[key] = time.perf_counter() - began


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
