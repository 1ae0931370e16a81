"""A live project's step: the next round, fed by the label files that arrived, then the next query.

    step(DIR):
        read and check every label file that arrived since the last round   # a problem: one line, nothing trained
        open the trial (engine.trial.session.start_trial): the checkpoint after the last round
        redo the rounds whose rows were saved after that checkpoint (a crash between row and checkpoint)
        round r: its labels = the new files (LiveLabels); model = init strategy(model r-1, fresh model r);
                 fit; evaluate; one RoundRecord row (+ label_files) -> the store; checkpoint
        export model r for serving (model/model.pt, model.json)
        query r+1: the acquisition over the unlabelled pool with model r, seeded as the
                   simulated round r+1's selection -> queries/round-(r+1).parquet

The round itself is the trial's (engine/trial/loop.py's start_round -> train -> evaluate ->
finish_round, then resume.save_round); the label source is all that differs from a simulated
trial, whose source is the dataset's ground truth.  Labelling exactly the queried ids with the
ground truth therefore reproduces ``warmstart run``'s rows (tests/test_live.py).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.errors import ConfigError, TrialError
from engine.live.intake import Known, LabelFile, consumed_file, keep_copy, parse_entry, pending
from engine.live.project import Project
from engine.storage.store import TrialStore
from engine.trial.loop import (
    RoundResult,
    RoundStart,
    acquire,
    evaluate_model,
    finish_round,
    initial_model,
    stopwatch,
    train,
)
from engine.trial.provenance import now
from engine.trial.resume import save_round
from engine.trial.session import start_trial
from engine.trial.setup import TrialContext, TrialState, resolve_device
from strategies.acquisition import scores


class LiveLabels:
    """The label source of a live project: round r labels the pool positions its label
    files name, with their labels (written into ``context.data.pool_y``, which holds -1
    where no label is known).  ``files``: round -> the files it consumes."""

    def __init__(self, files: dict[int, list[LabelFile]]) -> None:
        self.files = files

    def select(self, context: TrialContext, state: TrialState, round_: int, outputs=None):
        """The positions round ``round_`` labels (those not labelled before), and no pool outputs."""
        labels = write_labels(context, self.files[round_])
        return np.array(sorted(p for p in labels if state.labeled[p] == 0), dtype=np.int64), None

    def columns(self, round_: int) -> dict:
        """The round's extra row columns."""
        return {"label_files": [file.entry for file in self.files[round_]]}


def write_labels(context: TrialContext, files: list[LabelFile]) -> dict[int, int]:
    """The files' labels written into ``context.data.pool_y`` (earlier labels agree: intake
    checked them); {pool position: class index}."""
    labels: dict[int, int] = {}
    for file in files:
        labels.update(file.labels)
    if labels:
        positions = torch.tensor(list(labels), dtype=torch.long, device=context.data.pool_y.device)
        values = torch.tensor(list(labels.values()), dtype=context.data.pool_y.dtype, device=positions.device)
        context.data.pool_y[positions] = values
    return labels


@dataclass
class Plan:
    """What a step will do: the rounds it redoes, each with the files its saved row names,
    and the new files of the next round (none: no new labels)."""

    redo: dict[int, list[LabelFile]]
    new: list[LabelFile]
    done: dict[int, list[LabelFile]] = field(default_factory=dict)  # rounds up to the checkpoint


def plan(project: Project, rows: dict[int, dict], checkpoint_round: int) -> Plan:
    """Read the consumed files of the saved ``rows`` and check the new ones against them."""
    known = Known.of(project)
    files, consumed = {}, {}
    for round_, row in sorted(rows.items()):
        entries = row.get("label_files") or []
        files[round_] = [consumed_file(project, entry, known) for entry in entries]
        consumed.update(parse_entry(entry) for entry in entries)
    new = pending(project, consumed, known)
    done = {r: f for r, f in files.items() if r <= checkpoint_round}
    return Plan({r: f for r, f in files.items() if r > checkpoint_round}, new, done)


@dataclass
class StepResult:
    rows: list[dict]  # the rows of the rounds this step ran, in order
    lines: list[str]  # what it did, for people
    query: str | None  # the next query's path (None: the pool is all labelled)


def step(out: str, say=None) -> StepResult:
    """One step of the live project in ``out`` (see the module's docstring).  Bad input is a
    ConfigError naming the file, before anything is trained or written."""
    say = say or (lambda line: None)
    project = Project.open(out)
    cfg = project.config()
    store = TrialStore(project.out, cfg.trial_id())
    status = store.load_status() or {}
    first = plan(project, store.read_rows()[0], status.get("round", 0))  # refusals before anything opens
    if not first.redo and not first.new and not status.get("round"):
        raise ConfigError(
            f"No labels yet in {project.path('labels')}: label the ids of {project.query_path(1)} and save them "
            "there as a Parquet or CSV file with the columns id and label."
        )
    device = resolve_device(cfg.device)
    with start_trial(cfg, project.out, data=project.data(cfg, device)) as session:
        context, state = session.context, session.state
        todo = plan(project, dict(context.expected), state.round)
        for files in todo.done.values():  # the labels of the rounds already trained
            write_labels(context, files)
        rounds = dict(todo.redo)
        if todo.new:
            rounds[max([state.round, *todo.redo]) + 1] = todo.new
        limit = cfg.rounds.max_rounds
        if limit is not None and rounds and max(rounds) > limit:
            raise ConfigError(f"The project has run its rounds.max_rounds={limit} rounds; no further round is trained.")
        if state.stopped is not None:
            raise TrialError(f"Trial {cfg.trial_id()} stopped at round {state.round}: {state.stopped}.")
        source, ran = LiveLabels(rounds), []
        for round_ in sorted(rounds):
            for file in rounds[round_]:
                keep_copy(project, file)  # before the round trains: its row will name the file
            began = time.perf_counter()
            result = live_round(context, state, source)
            result.row = save_round(session.store, context, state, result.row, result.epochs)
            ran.append(result.row)
            what = "redid" if round_ in todo.redo else "round"
            say(
                f"{what} {round_}: {len(rounds[round_])} label file(s), {result.row['n_labeled']} labelled, "
                f"test_acc {result.row['test_acc']:.4f} ({time.perf_counter() - began:.1f}s)"
            )
        if state.round == 0:
            return StepResult([], ["no new labels"], project.query_path(1))
        query = _after(project, cfg, context, state, session.store, fresh=bool(ran), say=say)
    if not ran:
        say(f"no new labels in {project.path('labels')}; round {state.round} stays the latest")
    return StepResult(ran, [], query)


def _after(project, cfg, context, state, store, fresh: bool, say) -> str | None:
    """The exported model and the next query, after rounds ran; else only when missing (a
    crash after the checkpoint)."""
    query = project.query_path(state.round + 1)
    unlabeled = np.flatnonzero(state.labeled == 0)
    exported = os.path.exists(project.path("model", "model.json"))
    last = unlabeled.size == 0 or (cfg.rounds.max_rounds is not None and state.round >= cfg.rounds.max_rounds)
    if not fresh and exported and (os.path.exists(query) or last):
        return None if last else query
    project.export(cfg, state.model, store.read_rows()[0][state.round])
    say(f"model of round {state.round} exported to {project.path('model')}")
    if unlabeled.size == 0:
        say("every pool id is labelled: no further query")
        return None
    if cfg.rounds.max_rounds is not None and state.round >= cfg.rounds.max_rounds:
        say(f"round {state.round} is the last (rounds.max_rounds): no further query")
        return None
    ids, scores = next_query(project, cfg, context, state)
    path = project.write_query(state.round + 1, ids, scores)
    say(f"query for round {state.round + 1}: {len(ids)} ids in {path}")
    return path


def next_query(project: Project, cfg, context: TrialContext, state: TrialState) -> tuple[np.ndarray, np.ndarray | None]:
    """The ids the acquisition strategy ranks first over the unlabelled pool with model r, seeded
    as the simulated round r+1's selection, in rank order, and the strategy's scores (None: it has none)."""
    unlabeled = np.flatnonzero(state.labeled == 0)
    k = min(context.plan.per_round, unlabeled.size)
    positions, outputs = acquire(
        cfg, state.model, context.data, state.labeled, k, state.round + 1, context.comm, context.performance
    )
    score = scores(cfg.acquisition.name, outputs, cfg.acquisition.params())
    picked = None
    if score is not None:
        picked = score.cpu().numpy()[np.searchsorted(unlabeled, positions)]
    return project.pool_ids()[positions], picked


def live_round(context: TrialContext, state: TrialState, source: LiveLabels) -> RoundResult:
    """engine.trial.loop.run_round with ``source`` as the round's labels.

    The adapter until the round driver (issue 24) takes a label source: then this is the
    driver's round with ``labels=source``."""
    round_ = state.round + 1
    context.reporter.round_started(round_, context.plan.rounds, 0)
    started_at, seconds = now(), {}
    with stopwatch(seconds, "acquire_seconds"):
        picked, outputs = source.select(context, state, round_)
        state.labeled[picked] = round_
    model = initial_model(context, state, round_)
    positions = torch.from_numpy(np.flatnonzero(state.labeled)).to(context.device)
    start = RoundStart(round_, model, positions, outputs, seconds, started_at)
    x, y = context.data.pool_x[start.positions], context.data.pool_y[start.positions]
    with stopwatch(start.seconds, "train_seconds"):
        stats = train(context, start.model, x, y, start.round, start.epochs if context.cfg.eval.epochs_table else None)
    with stopwatch(start.seconds, "eval_seconds"):
        evaluation = evaluate_model(context, start.model, x)
    del x, y
    result = finish_round(context, state, start, stats, *evaluation)
    result.row.update(source.columns(round_))
    return result


def watch(out: str, every: float = 30.0, say=print, sleep=time.sleep) -> None:
    """Steps as files arrive, every ``every`` seconds, until Ctrl-C (or SIGTERM).  Bad input is
    said once (one line, the file named) and waited out: the next step after the file is
    fixed or removed goes on."""
    if not every >= 1:
        raise ConfigError(f"--every must be at least 1 second, not {every:g}.")
    project = Project.open(out)
    say(f"watching {project.path('labels')} every {every:g}s; Ctrl-C ends it")
    problem = None
    try:
        while True:
            try:
                result = step(project.out, say=lambda line: say(line) if "no new labels" not in line else None)
                problem = None
                del result
            except ConfigError as exc:
                if "No labels yet" not in str(exc) and str(exc) != problem:
                    print(f"warmstart: error: {exc}", file=sys.stderr, flush=True)
                problem = str(exc)
            sleep(every)
    except KeyboardInterrupt:
        say("stopped watching")
