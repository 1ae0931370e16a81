"""Which of a suite's trials train together as one ensemble (``performance.ensemble``).

Trials can share kernels when everything but their seed, init strategy, acquisition and
convergence rule is the same: dataset, model, optimizer, batch size, round sizes,
evaluation, device and the other performance options (``kernel_key``).  Under ``auto``
such a group becomes ensembles where the measured rule (``FASTER``) says stacking is
faster for that model on that device; ``true`` stacks every stackable group; ``false``
never.  A group is split into ensembles of at most ``performance.ensemble_size``
members, and into at least as many as run at once (``max_concurrent``, else this
machine's CPUs), so that stacking never leaves a CPU idle; an ensemble is one Tune
trial (engine/suite/points.py runs its members through engine/trial/stacked.py).

A trial that cannot be stacked runs alone, with a line saying why: a model plugin
registered without ``stackable=True``, pretraining, or Ray Train (``scaling.workers``).
Ensembles need a plain grid: a scheduler or a sampling searcher judges each point by its
own reports, so there ``auto`` runs trials alone and ``true`` is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from engine.errors import ConfigError
from engine.schema.catalogue import MODELS
from engine.schema.config import Config

# Measured (benchmarks/ensemble.py; figures in benchmarks/README.md, "Ensembles"): the fewest
# members at which stacking was faster than the trials one by one, per (model, device); None:
# never measured faster.  CPU: the mlp's cut mnist1d_sp_sweep 2.18x and 1.38x faster stacked on
# the 2-core CPU (load 8 and 11-18), its compute alone 2.36x; cnn1d's compute 1.24x in one run
# of 4 members, too little to turn on.  H200 (bf16, auto options; images/s against one trial):
# mlp 0.87x at 8 members, 2.28x at 32, 5.73x at 128; resnet18 (width 16) 0.72x at 8, 1.50x at
# 32, 1.59x at 128.  A pair not listed is left alone under `auto`.
FASTER: dict[tuple[str, str], int | None] = {
    ("mlp", "cpu"): 2,
    ("logreg", "cpu"): 2,
    ("cnn1d", "cpu"): None,  # vmapped convolutions are grouped convolutions: slower on a CPU
    ("resnet18", "cpu"): None,
    ("mlp", "cuda"): 32,
    ("resnet18", "cuda"): 32,
}


@dataclass(frozen=True)
class Grouping:
    units: list[list[int]]  # trial indices per Tune trial
    labels: list[str | None]  # each unit's ensemble label ('<id>/<members>'), None for a trial alone
    notes: list[str] = field(default_factory=list)  # one line per trial that runs alone, and why


def device_of(cfg: Config) -> str:
    """The device type a trial will train on (``auto``: a GPU when its Tune trial gets one)."""
    if cfg.device != "auto":
        return cfg.device.split(":")[0]
    return "cuda" if cfg.scaling.gpus_per_worker > 0 else "cpu"


def why_alone(cfg: Config) -> str | None:
    """Why this trial cannot be stacked with others; None when it can."""
    if cfg.scaling.workers is not None:
        return "it runs on Ray Train (scaling.workers)"
    if cfg.pretrain is not None:
        return "it pretrains a source model first"
    if not MODELS.get(cfg.model.name).extra.get("stackable"):
        return (
            f"its model {cfg.model.name!r} is registered without stackable=True "
            "(a plugin whose module may not run under torch.func.vmap)"
        )
    return None


def kernel_key(cfg: Config) -> str:
    """Trials with the same key can be trained in one stacked model."""
    data = cfg.to_dict()
    performance = {k: v for k, v in data["performance"].items() if k not in ("ensemble", "ensemble_size")}
    shared = {key: data[key] for key in ("dataset", "model", "optimizer", "batch_size", "rounds", "eval")}
    return json.dumps([shared, performance, device_of(cfg), cfg.scaling.gpus_per_worker], sort_keys=True)


def ensemble_units(trials: list, name: str, per_point: bool, max_concurrent: int | None = None) -> Grouping:
    """The suite's Tune trials with its stackable trials grouped into ensembles
    (``trials``: the suite's ``TrialSpec``s; ``per_point``: a scheduler or searcher runs it)."""
    alone = [[i] for i in range(len(trials))]
    settings = [t.config.performance.ensemble for t in trials]
    if per_point:
        if any(s is True for s in settings):
            raise ConfigError(
                "The 'performance.ensemble' parameter is true, but this suite has a scheduler or a searcher, which "
                "judges each point by its own reports; ensembles need a plain grid. Set it to auto or false."
            )
        return Grouping(alone, [None] * len(alone))
    groups: dict[str, list[int]] = {}
    notes = []
    for i, trial in enumerate(trials):
        setting = settings[i]
        if setting is False:
            continue
        reason = why_alone(trial.config)
        if reason is not None:
            notes.append(f"trial {trial.trial_id} runs alone: {reason}")
            continue
        cfg = trial.config
        if setting == "auto" and FASTER.get((cfg.model.name, device_of(cfg))) is None:
            continue
        groups.setdefault(kernel_key(cfg), []).append(i)
    slots = max_concurrent or os.cpu_count() or 1
    units, labels, grouped = [], [], set()
    for members in groups.values():
        cfg = trials[members[0]].config
        size = cfg.performance.ensemble_size
        # under auto, no ensemble smaller than the measured break-even (FASTER)
        fewest = max(2, FASTER.get((cfg.model.name, device_of(cfg))) or 2) if settings[members[0]] == "auto" else 2
        count = max(math.ceil(len(members) / size), min(slots, len(members) // fewest), 1)
        for chunk in _split(members, count):
            if len(chunk) < fewest:
                continue
            ids = sorted(trials[i].trial_id for i in chunk)
            digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:8]
            units.append(chunk)
            labels.append(f"{name}-e{digest}/{len(chunk)}")
            grouped.update(chunk)
    for i in range(len(trials)):
        if i not in grouped:
            units.append([i])
            labels.append(None)
    return Grouping(units, labels, notes)


def _split(members: list[int], count: int) -> list[list[int]]:
    """``members`` in ``count`` consecutive chunks whose sizes differ by at most one."""
    bounds = [len(members) * k // count for k in range(count + 1)]
    return [members[bounds[k] : bounds[k + 1]] for k in range(count)]
