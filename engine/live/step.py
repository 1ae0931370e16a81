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

The round itself is the round driver's (engine/trial/driver.py: loop.run_round, then
resume.save_round); the label source (``LiveLabels``, the trial's ``labels``) is all that
differs from a simulated trial, whose source is the dataset's ground truth.  Labelling exactly the queried ids with the
ground truth therefore reproduces ``warmstart run``'s rows (tests/live/test_live.py).
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
from engine.live.project import MODEL, QUERIES, Project
from engine.storage.store import TrialBusy, TrialStore
from engine.trial.driver import Driver
from engine.trial.loop import acquire
from engine.trial.session import start_trial
from engine.trial.setup import RoundPlan, TrialContext, TrialState, resolve_device
from strategies.acquisition import scores


class LiveLabels:
    """The label source of a live project (engine/trial/setup.py ``LabelSource``): round r
    labels the pool positions its files name, with their labels (written into
    ``context.data.pool_y``, which holds -1 where no label is known), and its row lists the
    files (``label_files``).  ``files``: round -> the files it consumes, set once the step
    has decided, under the trial's lock, what to run.  Rounds go on as long as labels
    arrive, up to ``rounds.max_rounds``."""

    def __init__(self, max_rounds: int | None) -> None:
        self.files: dict[int, list[LabelFile]] = {}
        self.max_rounds = max_rounds

    def select(self, context: TrialContext, state: TrialState, round_: int, outputs=None):
        """The positions round ``round_`` labels (those not labelled before), and no pool outputs."""
        labels = write_labels(context, self.files[round_])
        return np.array(sorted(p for p in labels if state.labeled[p] == 0), dtype=np.int64), None

    def columns(self, round_: int) -> dict:
        return {"label_files": [file.entry for file in self.files[round_]]}

    def last_round(self, plan: RoundPlan) -> int | None:
        return self.max_rounds


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
class RoundFiles:
    """What a step will do: every round's files (saved rounds, from their rows' label_files;
    new rounds, from the files that arrived: one round per batch, then one for the label
    files), and the rounds to run in order (saved after the checkpoint: redone; then new)."""

    files: dict[int, list[LabelFile]]
    run: list[int]
    redo: set[int] = field(default_factory=set)

    def batches(self, through: int) -> list[LabelFile]:
        """The batch files of rounds up to ``through``, in round order: the samples after the pool."""
        return [f for r in sorted(self.files) if r <= through for f in self.files[r] if f.batch]


def round_files(project: Project, rows: dict[int, dict], checkpoint_round: int) -> RoundFiles:
    """Read the consumed files of the saved ``rows`` and check the new ones against them."""
    known = Known.of(project)
    files, consumed = {}, {}
    for round_, row in sorted(rows.items()):
        entries = row.get("label_files") or []
        files[round_] = [consumed_file(project, entry, known) for entry in entries]
        consumed.update(parse_entry(entry) for entry in entries)
    redo = [r for r in sorted(files) if r > checkpoint_round]
    new, next_round = pending(project, consumed, known), max([checkpoint_round, *files]) + 1
    run = list(redo)
    for batch in [f for f in new if f.batch]:
        files[next_round], next_round = [batch], next_round + 1
        run.append(next_round - 1)
    labels = [f for f in new if not f.batch]
    if labels:
        files[next_round] = labels
        run.append(next_round)
    return RoundFiles(files, run, set(redo))


@dataclass
class StepResult:
    rows: list[dict]  # the rows of the rounds this step ran, in order
    query: str | None  # the next query's path (None: none, the last round was a batch or the pool is labelled)


def step(out: str, say=None) -> StepResult:
    """One step of the live project in ``out`` (see the module's docstring): every round the
    files that arrived make, one trial session each (a batch grows the pool).  Bad input is a
    ConfigError naming the file, before anything is trained or written."""
    say = say or (lambda line: None)
    project = Project.open(out)
    cfg = project.config()
    store = TrialStore(project.out, project.trial_id)
    completed = (store.load_status() or {}).get("round", 0)
    rows = store.read_rows()[0]
    todo = round_files(project, rows, completed)  # refusals before anything opens
    if not todo.run and not completed:
        raise ConfigError(
            f"No labels yet in {project.path('labels')}: label the ids of {project.query_path(1)} and save them "
            "there as a Parquet or CSV file with the columns id and label."
        )
    limit = cfg.rounds.max_rounds
    if limit is not None and todo.run and max(todo.run) > limit:
        raise ConfigError(
            f"The project has run its rounds.max_rounds={limit} rounds; the files that arrived would make round "
            f"{max(todo.run)}: no round is trained."
        )
    latest, query = rows.get(completed), project.query_path(completed + 1)
    if not todo.run and latest is not None and project.exists(MODEL, "model.json"):
        if _last(cfg, latest) or project.exists(
            QUERIES, os.path.basename(query)
        ):  # nothing to run, nothing missing: nothing written
            say(f"no new labels in {project.path('labels')}; round {completed} stays the latest")
            return StepResult([], None if _last(cfg, latest) else query)
    return _run(project, cfg, todo, say)


def _run(project: Project, cfg, todo: RoundFiles, say) -> StepResult:
    """The rounds to run, each in a trial session of its own (its data: the pool and the
    batches up to it), saved; then the exported model and the next query.  What to run is
    decided again under each session's lock (the checkpoint it resumes from decides which
    saved rounds are redone); a session opened with other data than its round needs is
    opened again."""
    device, ran, query = resolve_device(cfg.device), [], None
    batches = todo.batches(todo.run[0] if todo.run else max(todo.files, default=0))
    source = LiveLabels(cfg.rounds.max_rounds)
    while True:
        with start_trial(cfg, project.out, data=project.data(cfg, device, batches), labels=source) as session:
            context, state = session.context, session.state
            mine = round_files(project, dict(session.expected), state.round)
            source.files = mine.files
            needed = mine.batches(mine.run[0] if mine.run else state.round)
            if [b.sha256 for b in needed] != [b.sha256 for b in batches]:
                batches = needed
                continue
            _resume_labels(context, state, mine)
            if state.stopped is not None:
                raise TrialError(f"Trial {cfg.trial_id()} stopped at round {state.round}: {state.stopped}.")
            if not mine.run and state.round == 0:
                raise ConfigError(f"No labels yet in {project.path('labels')}: nothing to train.")
            if mine.run and mine.run[0] != state.round + 1:
                raise TrialError(
                    f"The live project {project.out} has the row of round {mine.run[0]} but not of round "
                    f"{state.round + 1}, after its checkpoint; restore that row, or remove the rows after it."
                )
            if mine.run:
                row = _one_round(project, session, mine, say)
                ran.append(row)
            else:
                row = session.store.read_rows()[0][state.round]
            if len(mine.run) <= 1:
                query = _after(project, cfg, context, state, row, say)
                break
            batches = mine.batches(mine.run[1])
    if not ran:
        say(f"no new labels in {project.path('labels')}; round {state.round} stays the latest")
    return StepResult(ran, query)


def _one_round(project: Project, session, todo: RoundFiles, say) -> dict:
    """Round ``state.round + 1`` with its files, by the round driver (trained, saved, reported); its row."""
    round_ = session.state.round + 1
    files = todo.files[round_]
    for file in files:
        keep_copy(project, file)  # before the round trains: its row will name the file
    began = time.perf_counter()
    ((_, result),) = Driver([session]).step()
    row = result.row
    kind = "batch file" if files[0].batch else "label file(s)"
    say(
        f"{'redid round' if round_ in todo.redo else 'round'} {round_}: {len(files)} {kind}, "
        f"{row['n_labeled']} labelled, test_acc {row['test_acc']:.4f} ({time.perf_counter() - began:.1f}s)"
    )
    return row


def _resume_labels(context: TrialContext, state: TrialState, todo: RoundFiles) -> None:
    """The labels of the rounds already trained into the data, and the labelled state as long
    as the pool is now (a batch since the checkpoint made it longer)."""
    for round_ in range(1, state.round + 1):
        write_labels(context, todo.files.get(round_, []))
    grown = context.data.pool_y.shape[0] - state.labeled.shape[0]
    if grown > 0:
        state.labeled = np.concatenate([state.labeled, np.zeros(grown, dtype=state.labeled.dtype)])


def _last(cfg, row: dict) -> bool:
    """No query after ``row``'s round: it was a batch (online mode), the last of rounds.max_rounds,
    or every pool id is labelled."""
    online = any(entry.startswith("batches/") for entry in row["label_files"] or [])
    limit = cfg.rounds.max_rounds
    return online or (limit is not None and row["round"] >= limit) or row["n_labeled"] >= row["n_pool"]


def _after(project: Project, cfg, context: TrialContext, state: TrialState, row: dict, say) -> str | None:
    """The exported model of the latest round, and the next query (none after a batch, after
    rounds.max_rounds, or once every pool id is labelled)."""
    project.export(cfg, state.model, row)
    say(f"model of round {state.round} exported to {project.path('model')}")
    if _last(cfg, row):  # online mode: the data brings its labels; or nothing left to ask
        say(f"no query after round {state.round}")
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
            except (ConfigError, TrialBusy) as exc:  # a bad file, or a step run by hand meanwhile: wait
                if "No labels yet" not in str(exc) and str(exc) != problem:
                    print(f"warmstart: error: {exc}", file=sys.stderr, flush=True)
                problem = str(exc)
            sleep(every)
    except KeyboardInterrupt:
        say("stopped watching")
