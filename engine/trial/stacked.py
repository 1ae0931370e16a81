"""The stacked compute of a round: several trials (an ensemble's members) trained,
evaluated and scored as one stacked model under vmap (engine/compute/stacked.py).

Each member is a whole trial, opened like any other (``start_trial``: its own store,
rows, checkpoint, resume after its last completed round); only the compute of a round is
shared.  The round driver (engine/trial/driver.py, ``STACKED``) runs round r of every
member that has completed r - 1 here, then saves and reports each member's row:

    outputs = one stacked scoring pass of the members' previous models   (acquisition)
    starts  = start_round(member, outputs) for each member                (labels, init)
    stats   = fit_stacked(models)       # each member stops on the one StopRule
    evals   = evaluate_round(members)   # BatchNorm per member, then one stacked evaluation
    rows    = finish_round for each member

A member that is behind (resumed from an earlier round than the others) runs its rounds
first (the driver steps the members furthest behind), so every stacked round has members at the same round:
the same labelled-set size, so the same batches per epoch.  Timings in the rows are the
stack's, shared out: a member's ``train_seconds`` is the stacked training time in
proportion to its optimizer steps (its row's ``train_timing`` says ``stacked_share``; a
round that trained with no other member says ``alone``), its ``acquire_seconds`` and
``eval_seconds`` an equal share of the stacked passes plus its own picking and BatchNorm pass.
"""

from __future__ import annotations

import json
import time

import torch

from engine.compute.data import Data
from engine.compute.stacked import DETERMINISTIC, MemberBatches, fit_stacked, member_batch, pool_outputs_stacked
from engine.compute.train import OptimizerSpec, seed_for
from engine.schema.catalogue import ACQUISITION_STRATEGIES
from engine.schema.config import Config
from engine.trial.loop import RoundResult, evaluate_round, finish_round, same_data, start_round
from engine.trial.provenance import now
from engine.trial.session import TrialSession, start_trial
from engine.trial.setup import load_data, resolve_device


def data_key(cfg: Config, device: torch.device) -> str:
    """Trials with the same key have the same data tensors (a seeded holdout split depends on the seed)."""
    seed = cfg.seed if cfg.dataset.eval == "holdout" else None
    pretrain = cfg.pretrain.to_dict() if cfg.pretrain is not None else None
    return json.dumps([str(device), cfg.dataset.to_dict(), seed, pretrain], sort_keys=True, default=str)


def start_members(cfgs: list[Config], out: str | None, label: str | None) -> list[TrialSession]:
    """Open (or resume) every trial of ``cfgs``: the members of the ensemble ``label`` (None:
    trials that run alone); trials with the same data share its tensors.  On a failure, the
    ones opened are closed."""
    loaded: dict[str, Data] = {}
    sessions: list[TrialSession] = []
    try:
        for cfg in cfgs:
            device = resolve_device(cfg.device)
            key = data_key(cfg, device)
            if key not in loaded:
                loaded[key] = load_data(cfg, device)
            sessions.append(start_trial(cfg, out, device=device, data=loaded[key], ensemble=label))
    except BaseException:
        for session in sessions:
            session.close()
        raise
    return sessions


def _score(sessions: list[TrialSession]) -> tuple[list, float]:
    """Each member's pool outputs for its next round's acquisition: one stacked pass for
    the members whose strategy needs deterministic outputs of their previous model, None
    for the rest (round 1, or needs the stack does not compute: those score alone in
    ``start_round``).  Returns the outputs and the stacked pass's seconds."""
    outputs: list = [None] * len(sessions)
    stacked = []
    for i, session in enumerate(sessions):
        needs = ACQUISITION_STRATEGIES.get(session.context.cfg.acquisition.name).extra["needs"]
        if session.state.round >= 1 and all(name in DETERMINISTIC for name in needs):
            stacked.append(i)
    if not stacked:
        return outputs, 0.0
    began = time.perf_counter()
    for group in same_data([s.context for s in sessions], stacked):
        first = sessions[group[0]].context
        needs = tuple(
            dict.fromkeys(
                name
                for i in group
                for name in ACQUISITION_STRATEGIES.get(sessions[i].context.cfg.acquisition.name).extra["needs"]
            )
        )
        device = first.data.pool_x.device
        positions = torch.stack([torch.from_numpy((sessions[i].state.labeled == 0).nonzero()[0]) for i in group])
        batch = first.performance.inference_batch_size or first.cfg.eval.batch_size
        scored = pool_outputs_stacked(
            [sessions[i].state.model for i in group],
            first.data.pool_x,
            positions.to(device),
            needs,
            member_batch(batch, len(group)),
            first.performance,
        )
        for i, pool in zip(group, scored, strict=True):
            outputs[i] = pool
    return outputs, time.perf_counter() - began


def _member_batches(sessions: list[TrialSession], starts: list) -> MemberBatches:
    """The members' labelled sets as rows of one pool tensor (their pools concatenated when
    they differ), and their shuffle seeds."""
    pools: dict[int, int] = {}  # id(data) -> offset in the concatenation
    xs, ys, offset = [], [], 0
    for session in sessions:
        data = session.context.data
        if id(data) not in pools:
            pools[id(data)] = offset
            xs.append(data.pool_x)
            ys.append(data.pool_y)
            offset += data.pool_y.shape[0]
    x = xs[0] if len(xs) == 1 else torch.cat(xs)
    y = ys[0] if len(ys) == 1 else torch.cat(ys)
    positions = torch.stack(
        [start.positions + pools[id(s.context.data)] for s, start in zip(sessions, starts, strict=True)]
    )
    seeds = [seed_for(s.context.cfg.seed, start.round, "train") for s, start in zip(sessions, starts, strict=True)]
    return MemberBatches(x, y, positions, seeds)


def run_stacked_round(sessions: list[TrialSession], fail=None) -> list[RoundResult]:
    """One round of every member in ``sessions`` (all at the same completed round).
    ``fail(position, error)``: a member whose acquisition or init strategy raises is
    handed to it and left out of the round (None: the error propagates)."""
    started_at = now()  # the stacked round's start, scoring included: every member's started_at
    outputs, score_seconds = _score(sessions)
    starts, kept = [], []
    for position, (session, pool) in enumerate(zip(sessions, outputs, strict=True)):
        try:
            starts.append(start_round(session.context, session.state, pool))
            kept.append(session)
        except Exception as error:
            if fail is None:
                raise
            fail(position, error)
    sessions = kept
    if not sessions:
        return []
    for start in starts:
        start.seconds["acquire_seconds"] += score_seconds / len(sessions)
        start.started_at = started_at
    sizes = {int(start.positions.shape[0]) for start in starts}
    if len(sizes) > 1:
        raise ValueError(f"an ensemble's members must label as many samples per round; got {sorted(sizes)}")

    first = sessions[0].context
    cfg = first.cfg
    spec = OptimizerSpec(cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum)

    began = time.perf_counter()

    def on_epoch(member: int, epoch: int, acc: float, loss: float) -> None:
        if sessions[member].context.cfg.eval.epochs_table:  # seconds: the stacked training's, shared by all
            starts[member].epochs.append((epoch, acc, loss, time.perf_counter() - began))
        sessions[member].context.reporter.epoch(starts[member].round, epoch, acc, loss)

    stats = fit_stacked(
        [start.model for start in starts],
        _member_batches(sessions, starts),
        spec,
        cfg.batch_size,
        [s.context.cfg.convergence for s in sessions],
        first.performance,
        on_epoch,
    )
    train_seconds = time.perf_counter() - began
    total_steps = max(sum(s.steps for s in stats), 1)
    for start, st in zip(starts, stats, strict=True):
        start.seconds["train_seconds"] = train_seconds * st.steps / total_steps
        # A round trained with others is a share of their time, not a measurement of its own.
        start.train_timing = "stacked_share" if len(starts) > 1 else "alone"
    evaluations = evaluate_round([s.context for s in sessions], starts)
    return [
        finish_round(s.context, s.state, start, st, *evaluation)
        for s, start, st, evaluation in zip(sessions, starts, stats, evaluations, strict=True)
    ]
