"""Several trials run as one ensemble: their rounds in lockstep, trained, evaluated and
scored as one stacked model (engine/compute/ensemble.py).

Each member is a whole trial, opened like any other (``start_trial``: its own store,
rows, checkpoint, resume after its last completed round); only the compute of a round is
shared.  A round of the ensemble is round r of every member that has completed r - 1:

    outputs = one stacked scoring pass of the members' previous models   (acquisition)
    starts  = start_round(member, outputs) for each member                (labels, init)
    stats   = fit_stacked(models)       # each member stops on its own rule
    evals   = precise_bn per member, then one stacked evaluation
    rows    = finish_round + save_round for each member

A member that is behind (resumed from an earlier round than the others) runs its rounds
first, with the others waiting, so every stacked round has members at the same round:
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
from engine.compute.ensemble import (
    DETERMINISTIC,
    MemberBatches,
    evaluate_stacked,
    fit_stacked,
    member_batch,
    pool_outputs_stacked,
)
from engine.compute.train import OptimizerSpec, precise_bn, seed_for
from engine.errors import TrialError
from engine.schema.catalogue import ACQUISITION_STRATEGIES
from engine.schema.config import Config
from engine.trial.loop import RoundResult, RoundStart, evaluate_model, finish_round, start_round
from engine.trial.provenance import now
from engine.trial.resume import save_round
from engine.trial.session import TrialSession, start_trial
from engine.trial.setup import load_data, resolve_device


def data_key(cfg: Config, device: torch.device) -> str:
    """Trials with the same key have the same data tensors (a seeded holdout split depends on the seed)."""
    seed = cfg.seed if cfg.dataset.eval == "holdout" else None
    pretrain = cfg.pretrain.to_dict() if cfg.pretrain is not None else None
    return json.dumps([str(device), cfg.dataset.to_dict(), seed, pretrain], sort_keys=True, default=str)


class Ensemble:
    """Trials (``TrialSession``s) whose rounds run stacked; ``label`` fills their ``ensemble`` column."""

    def __init__(self, sessions: list[TrialSession], label: str) -> None:
        self.sessions, self.label = sessions, label
        self.failed: dict[int, BaseException] = {}  # member index -> why it stopped (the others go on)
        for session in sessions:
            session.context.columns["ensemble"] = label

    @classmethod
    def start(cls, cfgs: list[Config], out: str | None, label: str) -> Ensemble:
        """Open (or resume) every member; members with the same data share its tensors."""
        loaded: dict[str, Data] = {}
        sessions: list[TrialSession] = []
        try:
            for cfg in cfgs:
                device = resolve_device(cfg.device)
                key = data_key(cfg, device)
                if key not in loaded:
                    loaded[key] = load_data(cfg, device)
                sessions.append(start_trial(cfg, out, device=device, data=loaded[key]))
        except BaseException:
            for session in sessions:
                session.close()
            raise
        return cls(sessions, label)

    def close(self) -> None:
        for session in self.sessions:
            session.close()

    def __enter__(self) -> Ensemble:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def running(self, i: int) -> bool:
        return i not in self.failed and not self.sessions[i].done

    @property
    def done(self) -> bool:
        return not any(self.running(i) for i in range(len(self.sessions)))

    def step(self) -> list[tuple[int, RoundResult]]:
        """The next round of the members furthest behind, stacked, saved and reported:
        (member index, its round's result) for each.  A member whose strategy fails leaves
        the ensemble (``failed``) and the others go on; ``raise_failures`` reports it."""
        behind = min(s.state.round for i, s in enumerate(self.sessions) if self.running(i))
        members = [i for i, s in enumerate(self.sessions) if self.running(i) and s.state.round == behind]
        results = run_stacked_round([self.sessions[i] for i in members], self._fail_member(members))
        members = [i for i in members if i not in self.failed]
        for i, result in zip(members, results, strict=True):
            session = self.sessions[i]
            result.row = save_round(session.store, session.context, session.state, result.row, result.epochs)
            session.context.reporter.round_done(result.row)
            session.rows.append(result.row)
        return list(zip(members, results, strict=True))

    def _fail_member(self, members: list[int]):
        def fail(position: int, error: BaseException) -> None:
            self.failed[members[position]] = error

        return fail

    def raise_failures(self) -> None:
        """A failed member's error, naming its trial (after the others have finished)."""
        if self.failed:
            i, error = next(iter(self.failed.items()))
            trial_id = self.sessions[i].context.columns["trial_id"]
            others = f" ({len(self.failed) - 1} more member(s) failed)" if len(self.failed) > 1 else ""
            message = f"trial {trial_id}: {error}{others}"
            try:
                named = type(error)(message)
            except Exception:  # an exception class that takes other arguments
                named = TrialError(message)
            raise named from error

    def run(self) -> list[dict]:
        while not self.done:
            self.step()
        self.raise_failures()
        return [row for session in self.sessions for row in session.rows]


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
    for group in _same_data(sessions, stacked):
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


def _same_data(sessions: list[TrialSession], members: list[int]) -> list[list[int]]:
    """``members`` grouped by the data tensors they share."""
    groups: dict[int, list[int]] = {}
    for i in members:
        groups.setdefault(id(sessions[i].context.data), []).append(i)
    return list(groups.values())


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
    evaluations = _evaluate(sessions, starts)
    return [
        finish_round(s.context, s.state, start, st, *evaluation)
        for s, start, st, evaluation in zip(sessions, starts, stats, evaluations, strict=True)
    ]


def _evaluate(sessions: list[TrialSession], starts: list[RoundStart]) -> list[tuple[bool, float, float]]:
    """Each member's (BatchNorm re-estimated, test accuracy, test loss): the re-estimation
    on its own labelled set, then one stacked evaluation per shared evaluation split.
    Sets each start's ``eval_seconds``."""
    evaluations: list = [None] * len(sessions)
    for group in _same_data(sessions, list(range(len(sessions)))):
        first = sessions[group[0]].context
        if len(group) == 1:
            start, began = starts[group[0]], time.perf_counter()
            evaluations[group[0]] = evaluate_model(first, start.model, first.data.pool_x[start.positions])
            start.seconds["eval_seconds"] = time.perf_counter() - began
            continue
        bn, began = {}, time.perf_counter()
        for i in group:
            context, start = sessions[i].context, starts[i]
            x = context.data.pool_x[start.positions]
            bn[i] = bool(
                context.cfg.eval.precise_bn
                and precise_bn(start.model, x, context.cfg.batch_size, context.comm, context.performance)
            )
        batch = first.performance.inference_batch_size or first.cfg.eval.batch_size
        results = evaluate_stacked(
            [starts[i].model for i in group],
            first.data.eval_x,
            first.data.eval_y,
            member_batch(batch, len(group)),
            first.performance,
        )
        seconds = (time.perf_counter() - began) / len(group)
        for i, (acc, loss) in zip(group, results, strict=True):
            evaluations[i] = (bn[i], acc, loss)
            starts[i].seconds["eval_seconds"] = seconds
    return evaluations
