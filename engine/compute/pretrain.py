"""Pretraining (the paper's Figure 9): a source model trained before round 1 of a trial.

With a ``pretrain`` section in the config, round 1's model is
``init_strategy(pretrained, fresh model 1)`` instead of the fresh model (engine/trial/loop.py):
``warm`` fine-tunes the pretrained model, ``shrink_perturb`` shrinks and perturbs it,
``random`` ignores it.  Every random choice here is seeded by (seed, 0, purpose).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from engine.compute.data import RawDataset, RawSplit, load_raw, sample_fraction, split_and_place
from engine.compute.models import Classifier, build_model
from engine.compute.train import LOCAL, PLAIN, Comm, Performance, fit, make_optimizer, seed_for
from engine.schema.config import Config, dataset_params
from engine.schema.records import PretrainRecord


@dataclass
class Pretrained:
    model: Classifier  # the source's class count
    source_index: np.ndarray  # dataset indices (training split of the source) it was trained on
    record: PretrainRecord  # what pretraining measured: the pretrain_* columns of every row


def pretrain(cfg: Config, device: torch.device, comm: Comm = LOCAL, performance: Performance = PLAIN) -> Pretrained:
    """The source model: ``cfg.model`` trained to convergence on ``pretrain.source_fraction``
    of the source dataset's pool, every random choice seeded by (seed, 0, purpose).

    The source pool is split exactly as the target's (dataset.eval, dataset.holdout and
    the split seed), so with the target as its own source, pretraining never sees the
    evaluation samples; with ``dataset.eval: test`` it is the whole training split."""
    spec = cfg.pretrain
    # The target as its own source: with the trial's dataset parameters; another: with its defaults.
    params = dataset_params(cfg.dataset) if spec.dataset == cfg.dataset.name else None
    raw = load_raw(spec.dataset, cfg.dataset.root, cfg.dataset.download, params)
    if cfg.dataset.eval == "test":  # no held-out part: the eval split is never used here
        raw = RawDataset(
            raw.train, RawSplit(raw.train.images[:1], raw.train.labels[:1]), raw.num_classes, raw.normalize
        )
    source = split_and_place(raw, cfg.dataset.eval, cfg.dataset.holdout, seed_for(cfg.seed, 0, "split"), device)
    chosen = sample_fraction(source.pool_y.shape[0], spec.source_fraction, seed_for(cfg.seed, 0, "pretrain_sample"))
    index = torch.from_numpy(chosen).to(device)
    x, y, source_index = source.pool_x[index], source.pool_y[index], source.pool_index[chosen]
    num_classes = raw.num_classes
    del source, raw  # only the chosen samples stay on the device

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(cfg.seed, 0, "pretrain_init"))
        model = build_model(cfg.model.name, cfg.model.params(), tuple(x.shape[1:]), num_classes)
    model = model.to(device)
    optimizer = make_optimizer(
        model,
        cfg.optimizer.name,
        spec.lr,
        cfg.optimizer.weight_decay,
        cfg.optimizer.momentum,
        performance.fused_optimizer,
    )
    convergence = SimpleNamespace(
        train_acc=spec.train_acc, patience=spec.patience, min_delta=spec.min_delta, max_epochs=spec.max_epochs
    )
    began = time.perf_counter()
    seed = seed_for(cfg.seed, 0, "pretrain_train")
    stats = fit(model, x, y, optimizer, spec.batch_size, convergence, seed, comm, performance=performance)
    record = PretrainRecord(
        samples=int(y.shape[0]),
        classes=num_classes,
        epochs=stats.epochs,
        steps=stats.steps,
        stop_reason=stats.stop_reason,
        train_acc=stats.train_acc,
        seconds=time.perf_counter() - began,
    )
    return Pretrained(model, source_index, record)


def with_target_head(pretrained: Classifier, fresh: Classifier) -> Classifier:
    """The pretrained model as round 1's ``prev``: its head replaced by (a copy of) the fresh
    model's when the class counts differ, kept when they agree."""
    if pretrained.head.out_features != fresh.head.out_features:
        pretrained.head = copy.deepcopy(fresh.head)  # the same slot: parameter order is unchanged
    return pretrained
