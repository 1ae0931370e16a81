"""``warmstart check DIR``: is a results folder complete and intact?

For every trial under DIR (its ``_warmstart/<trial>/`` folder and its row files) it
checks that:

- every round up to the last completed one has exactly one readable row, whose
  ``trial_id`` and ``round`` match its file name;
- the status and the newest checkpoint agree on the last completed round, and the
  checkpoint's checksum holds (a corrupt newest one with an intact previous generation
  is a note: a resume recovers from it);
- no temporary file of an interrupted write is left, and nobody holds the trial's lock
  (a note: a run may be in progress); on an object store, nobody holds its lease.

A problem is what a resume would have to recompute or could not explain; the exit status
is 1 when there is any.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from engine.errors import ConfigError
from engine.schema.config import RESERVED_TRIAL_IDS, Config, TrialId
from engine.storage.folders import row_files, row_key
from engine.storage.object_store import object_store_reason, reach
from engine.storage.store import META, TrialStore, filesystem
from engine.storage.uri import normalise


@dataclass
class TrialCheck:
    trial_id: str
    rounds: int = 0  # readable rows
    planned: int | None = None  # from the status
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        state = "ok" if not self.problems else "PROBLEM"
        planned = f"/{self.planned}" if self.planned is not None else ""
        text = f"{state:<8}{self.trial_id}: {self.rounds}{planned} rounds"
        return "\n".join(
            [text] + [f"          - {p}" for p in self.problems] + [f"          . {n}" for n in self.notes]
        )


def trial_ids(out: str) -> list[str]:
    """Every trial with metadata or rows under ``out`` (its own rows: ``folders.row_files``)."""
    try:
        reach(out)
        fs, files = row_files(out)
    except FileNotFoundError:
        raise ConfigError(f"No results at {out}: the path does not exist.") from None
    except OSError as exc:  # an object store that does not answer, a missing bucket, refused credentials
        raise ConfigError(f"Cannot read results at {out}: {object_store_reason(exc, out)}.") from None
    ids = {key[0] for key in map(row_key, files) if key is not None}
    base = filesystem(out)[1]
    try:
        meta = fs.get_file_info(pafs.FileSelector(f"{base}/{META}"))
        ids |= {os.path.basename(i.path) for i in meta if i.type == pafs.FileType.Directory}
    except FileNotFoundError:
        pass
    return sorted(i for i in ids if i.lower() not in RESERVED_TRIAL_IDS)  # Tune's and Ray Train's own folders


def _config_problems(store: TrialStore) -> list[str]:
    """What a resume would refuse in the trial's saved config: damaged (the resume's own line),
    not a warmstart config, or the config of another trial."""
    try:
        saved = store.saved_config()
    except ConfigError as exc:
        return [str(exc)]
    if saved is None:
        return []
    try:
        cfg = Config(saved)
        derived = cfg.trial_id()
        # A derived id's readable part only: its digest also holds the overrides registered in
        # the process that ran it, which this one may not have loaded.
        readable = f"{cfg.dataset.name}-{cfg.model.name}-{cfg.init.name}-{cfg.acquisition.name}-s{cfg.seed}-"
    except (KeyError, TypeError, AttributeError) as exc:
        return [f"its config.yaml is not a warmstart config ({type(exc).__name__} {exc}): a resume refuses it"]
    ours = store.trial_id == derived if saved.get("trial_id") else store.trial_id.startswith(readable)
    if not ours:
        return [f"its config.yaml is the config of trial {derived!r}: a resume refuses it"]
    return []


def check_trial(out: str, trial_id: str) -> TrialCheck:
    store = TrialStore(out, trial_id)
    result = TrialCheck(trial_id)
    if not TrialId().check(trial_id):  # written before trial ids were checked
        result.problems.append(
            "its id is not a valid trial id (a leading '_' or '.', or a reserved name): load, report and "
            "pandas skip its rows"
        )
    result.problems += _config_problems(store)
    rows, unreadable = store.read_rows()
    result.rounds = len(rows)
    for round_, why in unreadable.items():
        result.problems.append(f"the row file of round {round_} {why}")
    status, damaged = store.read_status()
    if damaged:
        result.problems.append(f"the status (status.json) {damaged}: a resume recomputes the trial")
    checkpoint = store.load_checkpoint()
    if store.notes:
        intact = checkpoint is not None
        (result.notes if intact else result.problems).extend(n.removeprefix("note: ") for n in store.notes)
    done = status["round"] if status else 0
    if status is not None:
        result.planned = status.get("rounds")
        if status.get("stopped"):
            result.notes.append(f"stopped early: {status['stopped']}")
    if checkpoint is not None and status is not None and checkpoint["round"] != done:
        (result.notes if checkpoint["round"] == done - 1 else result.problems).append(
            f"the status says round {done}, the newest intact checkpoint is of round {checkpoint['round']}"
        )
    if status is None and rows and not damaged:
        result.problems.append("rows without a status: the trial's metadata is missing")
    missing = [r for r in range(1, max([done, *rows]) + 1) if r not in rows]
    if missing:
        result.problems.append(f"no readable row for round(s) {', '.join(map(str, missing))}")
    if not store.local:
        lease = store.lease_holder()
        if lease is not None:
            result.notes.append(
                f"a run holds the trial's lease ({lease[:160]}): it may be in progress, or "
                "it was lost, and then the next run takes the trial over"
            )
        return result
    leftovers = [n for n in os.listdir(store.base) if n.startswith(".tmp-")] if os.path.isdir(store.base) else []
    if leftovers:
        result.notes.append(f"{len(leftovers)} temporary file(s) of interrupted writes under {out}")
    lock = f"{store.meta}/lock"
    if os.path.exists(lock):
        with open(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            except OSError:
                result.notes.append("a process holds the trial's lock: a run may be in progress")
    return result


def check(out: str) -> list[TrialCheck]:
    out = normalise(out, "results path")
    ids = trial_ids(out)
    if not ids:
        raise ConfigError(f"No warmstart trials under {out}.")
    return [check_trial(out, trial_id) for trial_id in ids]
