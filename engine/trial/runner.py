"""Starting a trial: the one path that the CLI, a Tune trial, a Ray Train worker and the
Python API all take.

    run_trial(config, out)          # validate, then in-process or on Ray Train; the rows
      └─ start_trial(cfg, out)      # in one process: device, data, store, state
           └─ Driver([session])     # engine/trial/driver.py: its rounds, saved and reported

``start_trial`` and ``TrialSession`` live in engine/trial/session.py: a Ray Train worker calls
``start_trial`` with its own ``comm`` and device; everything else goes through ``run_trial``.
``RayTrainGroups``: several trials, each on its own Ray Train worker group, as the round
driver's ``lockstep`` steps them (a suite's grid point on Ray Train, engine/suite/points.py).
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading

import torch

from engine.errors import ConfigError
from engine.schema.config import Config, build
from engine.storage.folders import check_results_folder
from engine.storage.store import TrialStore
from engine.trial.distributed import check_resources, check_shared_out, init_ray, run_trial_on_ray
from engine.trial.driver import Driver
from engine.trial.session import TrialInfo, open_store, start_trial
from engine.trial.setup import Reporter, Silent, load_data, plan_rounds


def run_trial(
    config,
    out: str | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
    reporter: Reporter | None = None,
    sets=(),
    plugins=(),
    shared_fs: bool = False,
) -> list[dict]:
    """Run (or continue) one trial to its last round; every row of the trial, in round order.

    ``config``: a mapping, a YAML file's path or a Config.  ``out=None`` keeps the rows in
    memory (on Ray Train, in a temporary folder on this machine).  ``workers`` runs it on
    Ray Train with that many data-parallel workers (``scaling.workers``); ``address`` joins
    a running Ray cluster (and then runs there, one worker unless ``workers`` says more);
    a local ``out`` on a cluster of several nodes is refused unless ``shared_fs`` says it is
    mounted on every node.  Invalid input raises ``ConfigError`` before anything is written."""
    sets = list(sets)
    if workers is not None:
        sets.append(f"scaling.workers={workers}")
    if address and workers is None and not any(s.startswith("scaling.workers=") for s in sets):
        sets.append("scaling.workers=1")  # joining a cluster means running there
    cfg = build(config, sets, plugins)
    if out is not None:  # its form, that it can be written, and its boundary: before anything starts
        out = check_results_folder(out, cfg.trial_id(), trial=True)
    reporter = reporter or Silent()
    if cfg.scaling.workers is None:
        with Driver([start_trial(cfg, out, reporter=reporter)]) as driver:
            session = driver.sessions[0]
            reporter.trial_started(session.info(out))
            driver.run()
            return session.store.rows() if session.store is not None else session.rows
    if out is None and address:
        raise ConfigError("A trial on a Ray cluster needs an out that every node can reach (a shared path or URI).")
    with tempfile.TemporaryDirectory(prefix="warmstart-") if out is None else contextlib.nullcontext(out) as location:
        return _run_on_ray(cfg, location, address, reporter, shared_fs or out is None)


def _run_on_ray(cfg: Config, out: str, address: str | None, reporter: Reporter, shared_fs: bool) -> list[dict]:
    # The driver reads the data only to check the plan; every worker loads its own copy.
    data = load_data(cfg, torch.device("cpu"))
    plan = plan_rounds(cfg, data.pool_y.shape[0])  # refused round counts: before anything is written
    n_eval = int(data.eval_y.shape[0])
    del data
    init_ray(address)  # an unreachable address, or a request the cluster cannot meet: before anything is written
    check_shared_out(out, address, shared_fs)
    check_resources(cfg.scaling.workers, cfg.scaling.gpus_per_worker, address, cfg.scaling.resource_timeout)
    store = open_store(cfg, out)  # this driver holds the trial's lock for its workers
    try:
        status = store.load_status() or {}
        rows, _ = store.read_rows()
        # Complete only when every completed round's row is readable; the workers recompute otherwise.
        last = status.get("round", 0)
        completed = last if all(r in rows for r in range(1, last + 1)) else 0
        where = f"Ray Train with {cfg.scaling.workers} worker(s)"
        info = TrialInfo(
            cfg.trial_id(), cfg, plan.n_pool, n_eval, plan.rounds, plan.initial, plan.per_round, completed, where, out,
            tuple(store.notes),
        )  # fmt: skip
        reporter.trial_started(info)
        if completed < plan.rounds:
            relay = None if isinstance(reporter, Silent) else reporter
            location = out if "://" in out else os.path.abspath(out)
            run_trial_on_ray(cfg, location, address, relay, lease=store.lease)
        return store.rows()
    finally:
        store.unlock()


class RayTrainGroups:
    """Trials each run by its own Ray Train worker group (``run_trial``, from a thread of
    this process), as ``engine.trial.driver.lockstep`` steps them: their rows come back
    through their reporters into a queue, so that the thread stepping them (a Tune
    trainable's own thread, which must be the one reporting to Tune) receives them.  A
    trial that fails raises at once.  ``start=False``: only the rows already saved."""

    def __init__(self, cfgs: list[Config], out: str, start: bool = True) -> None:
        self.cfgs, self.out = cfgs, out
        self.failed: dict[int, BaseException] = {}  # never filled: a failure raises in advance()
        self.arrived: queue.Queue = queue.Queue()
        self.finished = set() if start else set(range(len(cfgs)))
        if start:
            for i in range(len(cfgs)):
                threading.Thread(target=self._run, args=(i,), daemon=True).start()

    def _run(self, i: int) -> None:
        try:
            run_trial(self.cfgs[i], self.out, reporter=_Rows(self.arrived, i))
            self.arrived.put((i, None, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the stepping thread
            self.arrived.put((i, None, exc))

    def _saved(self, i: int) -> dict[int, dict]:
        return {row["round"]: row for row in TrialStore(self.out, self.cfgs[i].trial_id()).rows()}

    def completed(self) -> list[dict[int, dict]]:
        return [self._saved(i) for i in range(len(self.cfgs))]

    def running(self, i: int) -> bool:
        return i not in self.finished

    def advance(self) -> list[tuple[int, dict]]:
        i, row, error = self.arrived.get()
        if error is not None:
            raise error
        if row is not None:
            return [(i, row)]
        self.finished.add(i)  # its run ended: every row it made is in the store
        return [(i, row) for _, row in sorted(self._saved(i).items())]

    def finish(self) -> None:
        pass


class _Rows(Silent):
    """A reporter that hands a trial's rows to a queue, tagged with the trial's index."""

    def __init__(self, rows: queue.Queue, index: int) -> None:
        self.rows, self.index = rows, index

    def round_done(self, row: dict) -> None:
        self.rows.put((self.index, row, None))
