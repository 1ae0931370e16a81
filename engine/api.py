"""The Python API, for notebooks and scripts (``import warmstart``).

    import warmstart as ws
    df = ws.run_trial({"init": "warm", "rounds": {"max_rounds": 3}})     # one trial, rows in memory
    for r in ws.Trial({"acquisition": "margin"}):                       # round by round
        print(r.round, r.row["test_acc"], r.picked[:5], r.outputs.probs.shape)
    df = ws.run_suite("quickstart", "results/quickstart")                # a suite on Ray Tune
    df = ws.load("results/a", "results/b")                              # several folders, one table

Every function validates exactly as the CLI does and raises ``ConfigError`` (one line
naming the key) before anything is written; none calls ``sys.exit``.
"""

from __future__ import annotations

import copy
import io
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

import engine.compute.builtins  # noqa: F401  (every registry loads its built-ins on first use)
from engine.errors import ConfigError
from engine.schema.catalogue import list_datasets, list_models, list_strategies
from engine.schema.config import Config, build
from engine.schema.records import arrow_schema, with_short_names
from engine.schema.registry import PluginChanged
from engine.storage.folders import check_results_folder
from engine.suite import tune
from engine.suite.options import SuiteOptions, set_up_suite
from engine.suite.search import read_record
from engine.trial import runner
from engine.trial.driver import Driver
from engine.trial.progress import ConsoleReporter
from engine.trial.session import start_trial

__all__ = [
    "Config",
    "ConfigError",
    "Live",
    "PluginChanged",
    "Trial",
    "TrialRound",
    "list_datasets",
    "list_models",
    "list_strategies",
    "load",
    "report",
    "run_suite",
    "run_trial",
]


def _frame(rows: list[dict]):
    """Rows as a DataFrame with the Parquet schema's types and the short names (as ``load`` would give them)."""
    import pandas as pd
    import pyarrow as pa

    if not rows:
        return with_short_names(pd.DataFrame(columns=arrow_schema().names))
    return with_short_names(pa.Table.from_pylist(rows, schema=arrow_schema()).to_pandas())


def run_trial(
    config: Config | dict | str | None = None,
    out: str | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
    sets: list[str] = (),
    plugins: list[str] = (),
    progress: bool = False,
    shared_fs: bool = False,
):
    """Run (or continue) one trial; its rows as a pandas DataFrame, one per round.

    Args:
        config: a mapping of config keys (``{"init": "warm", "rounds": {"max_rounds": 3}}``),
            a YAML file's path, or a ``Config``; keys not given keep their defaults.
        out: a results folder or URI; the trial resumes there after its last completed
            round.  None keeps the rows in memory.
        workers: run on Ray Train with this many data-parallel workers.
        address: join this Ray cluster (``"auto"``, ``"HOST:PORT"``) instead of a local one.
        sets: ``"dotted.key=value"`` overrides, as ``--set`` on the CLI.
        plugins: modules or ``.py`` files that register strategies, datasets or models.
        progress: print the trial's header and a line per round, as ``warmstart run``.
        shared_fs: a local ``out`` is mounted at the same path on every node of the cluster
            at ``address`` (otherwise refused there when the cluster has several nodes).

    Raises:
        ConfigError: invalid input, before anything runs.
    """
    reporter = ConsoleReporter(sys.stdout) if progress else None
    rows = runner.run_trial(
        config,
        out,
        workers=workers,
        address=address,
        reporter=reporter,
        sets=sets,
        plugins=plugins,
        shared_fs=shared_fs,
    )
    return _frame(rows)


@dataclass
class TrialRound:
    """One round of a ``Trial``.

    Attributes:
        round: the round number, from 1.
        row: the round's result row (the columns of the Parquet table).
        picked: dataset indices (of the training split) this round added, sorted.
        outputs: the pool outputs the acquisition strategy scored (``PoolOutputs``: the
            fields its ``needs`` declared, e.g. ``probs`` [N, C] over the unlabeled pool
            in pool order); None in round 1, whose set is random.
    """

    round: int
    row: dict
    picked: np.ndarray
    outputs: Any
    _trial: Trial

    def model(self):
        """A CPU copy of the model this round trained.  Only while it is the trial's latest
        round: the next round may train the same model object further (warm start)."""
        if self._trial.round != self.round:
            raise RuntimeError(
                f"round {self.round}'s model is gone: the trial is at round {self._trial.round}; "
                "call .model() before advancing the trial"
            )
        return self._trial.model()


class Trial:
    """One trial, round by round: an iterator of ``TrialRound``.

        trial = Trial({"init": "warm", "acquisition": "margin"}, out="results/mine")
        first = next(trial)                     # round 1
        first.model()                           # inspect it (a CPU copy)
        for r in trial:                         # the remaining rounds
            if r.row["test_acc"] > 0.95:
                break                           # stop; next(trial) continues later
        trial.frame()                           # the rows so far, as a DataFrame

    With ``out``, every round is saved as it completes, and a new ``Trial`` with the
    same config and ``out`` (in another process, days later) resumes after the last
    completed round.  While a Trial with ``out`` has rounds left, it holds the trial's
    lock: another process opening the same trial is refused (``TrialBusy``); a newer
    Trial in the same process takes the trial over.  A Trial runs in this process (no Ray): for data-parallel trials
    use ``run_trial(..., workers=N)``.
    """

    def __init__(
        self,
        config: Config | dict | str | None = None,
        out: str | None = None,
        *,
        sets: list[str] = (),
        plugins: list[str] = (),
        device: str | None = None,
    ) -> None:
        sets = list(sets) + ([f"device={device}"] if device else [])
        cfg = build(config, sets, plugins)
        if cfg.scaling.workers is not None:
            raise ConfigError(
                "A Trial runs in this process; 'scaling.workers' needs Ray Train: use run_trial(config, workers=N)."
            )
        if out is not None:  # its form, that it can be written, and its boundary: before anything starts
            out = check_results_folder(out, cfg.trial_id(), trial=True)
        self._session = start_trial(cfg, out)
        self._driver = Driver([self._session])  # the round driver, for this one trial
        self.out = out

    @property
    def config(self) -> Config:
        return self._session.context.cfg

    @property
    def trial_id(self) -> str:
        return self.config.trial_id()

    @property
    def round(self) -> int:
        """The last completed round (0 before round 1)."""
        return self._session.state.round

    @property
    def rounds(self) -> int:
        """How many rounds the trial has in all."""
        return self._session.context.plan.rounds

    @property
    def done(self) -> bool:
        return self._session.done

    @property
    def labeled(self) -> np.ndarray:
        """Dataset indices (training split) labeled so far, sorted."""
        state, data = self._session.state, self._session.context.data
        return np.sort(data.pool_index[state.labeled > 0])

    def __iter__(self) -> Trial:
        return self

    def __next__(self) -> TrialRound:
        if self.done:
            self.close()
            raise StopIteration
        ((_, result),) = self._driver.step()
        if self.done:
            self.close()  # nothing left to run: another process may open the trial now
        return TrialRound(result.row["round"], result.row, result.picked, result.outputs, self)

    def close(self) -> None:
        """Release the trial's lock under ``out`` (also on garbage collection and at exit);
        the trial can then be resumed by another ``Trial`` or process."""
        self._session.close()

    def __enter__(self) -> Trial:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()

    def model(self):
        """A CPU copy of the latest round's model (None before round 1)."""
        model = self._session.state.model
        return None if model is None else copy.deepcopy(model).cpu()

    def run(self):
        """Every remaining round; the whole trial's rows as a DataFrame."""
        for _ in self:
            pass
        return self.frame()

    def frame(self):
        """The trial's rows so far: from ``out`` when given (earlier runs included), else this object's."""
        store = self._session.store
        return _frame(store.rows() if store is not None else self._session.rows)

    def __repr__(self) -> str:
        return f"Trial({self.trial_id!r}, round {self.round}/{self.rounds})"


class Live:
    """A live project (docs/live.md): rounds whose labels arrive as files.

        live = Live.init("pool.parquet", "eval.parquet", "project", {"acquisition": "margin"})
        query = live.query()                          # the ids to label: id, rank, score
        live.teach(query.assign(label=my_labels))     # a label file in project/labels/
        rows = live.step()                            # the next round; its row(s)
        live.rows()                                   # every round so far
        live.model().predict(frame)                   # the exported model, for serving

    ``step`` is ``warmstart live step``: bad input is a ``ConfigError`` naming the file, before
    anything trains."""

    def __init__(self, out: str) -> None:
        from engine.live.project import Project

        self._project = Project.open(out)
        self.out = self._project.out

    @classmethod
    def init(
        cls,
        pool,
        eval,  # the evaluation set (the CLI's --eval)
        out: str,
        config: Config | dict | str | None = None,
        *,
        sets: list[str] = (),
        plugins: list[str] = (),
    ) -> Live:
        """Make a live project in ``out`` from ``pool`` and ``eval`` (Parquet paths or DataFrames),
        as ``warmstart live init``; the config as ``run_trial``'s."""
        from engine.live.project import init

        return cls(init(pool, eval, out, config, sets, plugins).out)

    @property
    def round(self) -> int:
        """The last completed round (0 before round 1)."""
        return self._project.completed()

    def query(self):
        """The current query (the ids the next round asks labels for) as a DataFrame with the
        columns id, rank and score, in rank order; empty when there is none."""
        import pandas as pd

        from engine.live.project import QUERIES

        payload = self._project.read(QUERIES, f"round-{self.round + 1:04d}.parquet")
        if payload is None:
            return pd.DataFrame({"id": [], "rank": [], "score": []})
        return pd.read_parquet(io.BytesIO(payload))

    def teach(self, frame, name: str | None = None) -> str:
        """Write ``frame``'s ``id`` and ``label`` columns as a label file in ``labels/`` (named
        ``name``, default ``teach-<UTC time>.parquet``); its path.  The next step checks it."""
        import datetime

        from engine.live.project import LABELS, parquet_bytes

        missing = [c for c in ("id", "label") if c not in frame.columns]
        if missing:
            raise ConfigError(f"teach() needs the columns id and label; the frame has no {' or '.join(missing)}.")
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
        return self._project.write(
            LABELS, name or f"teach-{stamp}.parquet", payload=parquet_bytes(frame[["id", "label"]])
        )

    def step(self, progress: bool = False):
        """The next round(s) from the label files that arrived; their rows (empty: no new labels)."""
        from engine.live.step import step

        result = step(self.out, say=(lambda line: print(line, flush=True)) if progress else None)
        return _frame(result.rows)

    def rows(self):
        """Every round's row so far, as ``load`` reads them (empty before round 1)."""
        return load(self.out) if self.round else _frame([])

    def model(self):
        """The latest round's exported model (``predict(frame)``, ``probabilities(frame)``, ``meta``)."""
        from engine.live.project import Served

        return Served(self._project)

    def __repr__(self) -> str:
        return f"Live({self.out!r}, round {self.round})"


def run_suite(
    suite: str,
    out: str | None = None,
    *,
    resume: bool = False,
    address: str | None = None,
    max_concurrent: int | None = None,
    sets: list[str] = (),
    plugins: list[str] = (),
    progress: bool = False,
    trackers: list[str] = (),
    shared_fs: bool = False,
):
    """Run a suite (a YAML file's path, or a shipped suite's name) on Ray Tune; the whole
    table under ``out`` (default ``results/<suite name>``) as a DataFrame.

    ``resume=True`` continues the suite under ``out``, also grown by new seeds, grid
    values or rounds (only what is missing runs).  ``trackers``: as ``--tracker``
    (``"tensorboard"``, ``"mlflow"``, ``"mlflow=URI"``, ``"wandb=PROJECT"``).  Trials
    that failed are listed in ``frame.attrs["failed"]`` as (trial_id, error, traceback
    file), with a warning; their completed rounds are in the table, and ``resume=True``
    retries them.  Under a search (the suite's ``search:``) ``frame.attrs["search"]``
    holds what it did: each point, where it stopped, and ``stopped_by``.  ``out`` may be
    an object store (``s3://bucket/prefix``, endpoint and credentials from the AWS_*
    variables); a local ``out`` on a Ray cluster of several nodes is refused unless
    ``shared_fs=True`` says it is mounted on every node.
    """
    options = SuiteOptions.build(
        suite,
        out,
        resume=resume,
        address=address,
        max_concurrent=max_concurrent,
        sets=sets,
        plugins=plugins,
        trackers=trackers,
        shared_fs=shared_fs,
    )
    setup = set_up_suite(options)
    loaded, out = setup.suite, setup.out
    failed = tune.run_suite(setup, stream=sys.stdout if progress else io.StringIO())
    frame = load(out)
    frame.attrs["failed"] = failed
    frame.attrs["search"] = read_record(out) if loaded.search.per_point else None
    if failed:
        warnings.warn(
            f"{len(failed)} trial(s) of suite {loaded.name!r} failed: {failed[0][0]}: {failed[0][1]}", stacklevel=2
        )
    return frame


def load(*paths: str):
    """The results tables under one or more folders or URIs, as one DataFrame (names as
    categoricals, counts as integers, short names such as ``init`` for ``cfg.init.name``); see
    ``engine.analysis.results.load``."""
    from engine.analysis import results

    return results.load(*paths)


def report(*paths: str, out: str | None = None) -> list[str]:
    """Write the figures and tables of ``warmstart report`` for one or more results folders;
    returns the report's path first, then its notes."""
    from engine.analysis.report import write_report

    if not paths:
        raise ConfigError("report() needs at least one results path.")
    return write_report(paths[0] if len(paths) == 1 else list(paths), out)
