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

import functools
import json
import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from engine.config import Config, resolve_count
from engine.data import Data, dataset_params, load_raw, pool_fraction, split_and_place
from engine.models import Classifier, build_model
from engine.pretrain import pretrain, with_target_head
from engine.registry import ConfigError
from engine.scoring import pool_outputs
from engine.store import TrialStore
from engine.train import (
    LOCAL,
    PLAIN,
    Performance,
    evaluate,
    fit,
    make_optimizer,
    precise_bn,
    resolve_performance,
    seed_for,
)
from strategies.acquisition import ACQUISITION_STRATEGIES, check_positions
from strategies.init import INIT_STRATEGIES, effective_mix


class Reporter(Protocol):
    def round_started(self, round_: int, rounds: int, n_labeled: int) -> None: ...
    def epoch(self, round_: int, epoch: int, train_acc: float, train_loss: float) -> None: ...
    def round_done(self, row: dict) -> None: ...


class Silent:
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
) -> np.ndarray:
    """Pool positions of the k samples the acquisition strategy picks from the unlabeled pool."""
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
        positions = entry.fn(outputs, k, rng, **params)
        picked = unlabeled[check_positions(entry.name, positions, k, unlabeled.size)]
    return comm.broadcast(picked)


def base_row(cfg: Config, plan: Plan, data: Data, device: torch.device, comm) -> dict:
    """The columns that are the same in every round of the trial."""
    shrink, perturb = effective_mix(cfg.init.name, cfg.init.params())
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
        "eval_split": cfg.dataset.eval,
        "model_params": json.dumps(cfg.model.params(), sort_keys=True),
        "init_params": json.dumps(cfg.init.params(), sort_keys=True),
        "acquisition_params": json.dumps(cfg.acquisition.params(), sort_keys=True),
        "n_pool": plan.n_pool,
        "n_eval": int(data.eval_y.shape[0]),
        # Pretraining (null without); the pretrain_* results join these once known.
        "pretrain_dataset": cfg.pretrain.dataset if cfg.pretrain is not None else None,
        "pretrain_params": json.dumps(cfg.pretrain.to_dict(), sort_keys=True) if cfg.pretrain is not None else None,
        **dict.fromkeys(PRETRAIN_COLUMNS),
    }


PRETRAIN_COLUMNS = (
    "pretrain_samples",
    "pretrain_classes",
    "pretrain_epochs",
    "pretrain_steps",
    "pretrain_stop_reason",
    "pretrain_train_acc",
    "pretrain_seconds",
)


def run_rounds(
    cfg: Config,
    data: Data,
    store: TrialStore | None,
    device: torch.device,
    comm=LOCAL,
    reporter: Reporter | None = None,
) -> list[dict]:
    """Run (or continue) the trial; returns the rows written by this call."""
    reporter = reporter or Silent()
    plan = plan_rounds(cfg, data.pool_y.shape[0])
    init = INIT_STRATEGIES.get(cfg.init.name)
    common = base_row(cfg, plan, data, device, comm)
    performance = performance_for(cfg, data, device)
    common["performance"] = json.dumps(performance.to_dict(), sort_keys=True)
    labeled = np.zeros(plan.n_pool, dtype=np.int32)
    model: Classifier | None = None  # the previous round's model (round 1: the pretrained one, if any)
    start = 1
    if store is not None and comm.rank == 0:
        store.save_config(cfg.to_yaml())  # frozen next to the rows it makes
    checkpoint = store.load_checkpoint() if store is not None else None
    if checkpoint is not None:  # continue after the last completed round
        labeled = checkpoint["labeled"]
        model = fresh_model(cfg, data, checkpoint["round"], device)
        model.load_state_dict(checkpoint["model"])
        start = checkpoint["round"] + 1
        common.update(checkpoint.get("pretrain", {}))
    elif cfg.pretrain is not None:
        pretrained = pretrain(cfg, device, comm, performance)
        model = pretrained.model
        common.update(pretrained.columns)

    rows = []
    for round_ in range(start, plan.rounds + 1):
        k = plan.size_after(round_) - plan.size_after(round_ - 1) if round_ > 1 else plan.initial
        reporter.round_started(round_, plan.rounds, plan.size_after(round_))
        began = time.perf_counter()
        if round_ == 1:
            picked = np.random.default_rng(seed_for(cfg.seed, 1, "acquire")).choice(plan.n_pool, k, replace=False)
        else:
            picked = acquire(cfg, model, data, labeled, k, round_, comm, performance)
        labeled[picked] = round_
        acquire_seconds = time.perf_counter() - began

        fresh = fresh_model(cfg, data, round_, device)
        if model is None:  # round 1 without pretraining: always fresh
            model = fresh
        else:
            if round_ == 1:
                model = with_target_head(model, fresh)
            model = init.fn(model, fresh, **cfg.init.params())
        comm.check_same(model, f"round {round_}: the init strategy {cfg.init.name!r}")
        optimizer = make_optimizer(
            model,
            cfg.optimizer.name,
            cfg.optimizer.lr,
            cfg.optimizer.weight_decay,
            cfg.optimizer.momentum,
            performance.fused_optimizer,
        )
        positions = torch.from_numpy(np.flatnonzero(labeled)).to(device)
        x, y = data.pool_x[positions], data.pool_y[positions]

        began = time.perf_counter()
        stats = fit(
            model,
            x,
            y,
            optimizer,
            cfg.batch_size,
            cfg.convergence,
            seed_for(cfg.seed, round_, "train"),
            comm,
            on_epoch=functools.partial(reporter.epoch, round_),
            performance=performance,
        )
        train_seconds = time.perf_counter() - began

        began = time.perf_counter()
        re_estimated = cfg.eval.precise_bn and precise_bn(model, x, cfg.batch_size, comm, performance)
        eval_batch = performance.inference_batch_size or cfg.eval.batch_size
        test_acc, test_loss = evaluate(model, data.eval_x, data.eval_y, eval_batch, performance)
        eval_seconds = time.perf_counter() - began

        row = {
            **common,
            "round": round_,
            "n_labeled": int(positions.shape[0]),
            "epochs": stats.epochs,
            "steps": stats.steps,
            "stop_reason": stats.stop_reason,
            "train_acc": stats.train_acc,
            "train_loss": stats.train_loss,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "train_seconds": train_seconds,
            "acquire_seconds": acquire_seconds,
            "eval_seconds": eval_seconds,
            "precise_bn": bool(re_estimated),
            "acquired": sorted(int(i) for i in data.pool_index[labeled == round_]),
        }
        del x, y  # the labeled copy: not held while the next round scores the pool
        if store is not None and comm.rank == 0:
            # The row first, then the checkpoint: a crash between the two re-runs this
            # round on resume, which rewrites the same row file instead of adding one.
            store.write_row(row)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            pretrained_columns = {c: common[c] for c in PRETRAIN_COLUMNS}
            store.save_checkpoint(
                {"round": round_, "labeled": labeled.copy(), "model": state, "pretrain": pretrained_columns}
            )
            store.save_status({"round": round_, "rounds": plan.rounds, "test_acc": test_acc})
        rows.append(row)
        reporter.round_done(row)
    return rows
