"""Resume and integrity: a trial's state saved after every round and loaded again, and
the rows in the store checked against what this process recomputes.

A completed round's row is written first, then the checkpoint and the status; resume
trusts the rows, not only the checkpoint: a missing row recomputes the trial from round 1
(every round is a function of the seed), and each surviving row must reproduce: bit for
bit when the row says it was computed on the same kind of machine as this process (CPU or
GPU model, ATen CPU capability, torch build), its floats within FLOAT_TOLERANCE when it was
computed on another (docs/guarantees.md#determinism).  A recomputed round whose saved row
reproduces keeps that row: it is not written again."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from engine.errors import ConfigError, TrialError
from engine.schema.config import Config
from engine.schema.records import NOT_CHECKED, PRETRAIN_COLUMNS, RECORD_COLUMNS, PretrainRecord
from engine.storage.store import TrialStore
from engine.trial.setup import TrialContext, TrialState, fresh_model

# NOT_CHECKED (engine.schema.records, the columns of role timing or context) is left out of
# the integrity check: time measurements, and the suite a trial ran in (not part of its
# identity: the same trial may run alone, then in a suite).

# How far a float may move when the same round is computed in another order: on another
# CPU (ATen's AVX2 and AVX-512 kernels, and the BLAS's, reduce in other orders) or torch
# build, or stacked in an ensemble.  Such a float32 training run differs in its last bits
# (measured: at most 1.3e-7 relative over tests/trial/test_rows_fixed.py's 3 rounds, AVX2 vs
# AVX-512 and two CPU models); 1e-4 leaves room for that to grow over longer trials, and is
# far below what an analysis reads (one test sample of 10,000 is 1e-4 of accuracy).
FLOAT_TOLERANCE = {"rel_tol": 1e-4, "abs_tol": 1e-6}
# The columns that say which kind of machine computed a row: rows of the same kind must
# agree bit for bit (engine/trial/provenance.py).
MACHINE_COLUMNS = ("device_name", "cpu_isa", "threads", "torch_version")
# How a recomputed row must reproduce its saved one, as the notes say it (verify_row).
_AS = " (bit for bit when made on this kind of machine; floats within the tolerance from another or an ensemble)"


def load_state(store: TrialStore | None, context: TrialContext) -> TrialState | None:
    """The state saved after the last completed round, or None."""
    checkpoint = store.load_checkpoint() if store is not None else None
    if checkpoint is None:
        return None
    model = fresh_model(context.cfg, context.data, checkpoint["round"], context.device)
    model.load_state_dict(checkpoint["model"])
    record = PretrainRecord.from_columns(checkpoint.get("pretrain") or {})
    # A trial stopped by a divergence stays stopped, unless it is now asked to go on.
    stopped = checkpoint.get("stopped") if context.cfg.convergence.on_diverge == "stop" else None
    return TrialState(checkpoint["round"], checkpoint["labeled"], model, record, stopped)


def check_code(store: TrialStore, cfg: Config) -> None:
    """Refuse (ConfigError, before anything is written) to continue a trial whose rows were
    made by another version of a plugin it runs: its rounds would mix two versions of the
    code."""
    now = cfg.plugin_code()
    try:
        rows, _ = store.read_rows()
    except OSError:  # an out that is a file, or unreadable: store.probe() says so next
        return
    for round_, row in sorted(rows.items()):
        changed = _changed_plugin(row.get("plugins"), now)
        if changed is not None:
            key, before, after = changed
            raise ConfigError(
                f"Plugin {key} changed since trial {store.trial_id} ran round {round_} in {store.out}: "
                f"sha256 {before} then, {after} now, {ONE_VERSION}; restore that code, or run the new one into "
                "another out or under another trial_id."
            )


def check_code_unchanged(context: TrialContext, next_round: int) -> None:
    """Refuse (ConfigError) to run the next round of a trial whose plugin code changed in this
    process since the trial started (a notebook cell edited and run again between two rounds
    of a ``ws.Trial``): the builders are looked up each round, so that round would run the new
    code under the old hash in its row."""
    changed = _changed_plugin(context.columns["plugins"], context.cfg.plugin_code())
    if changed is not None:
        key, before, after = changed
        raise ConfigError(
            f"Plugin {key} changed while trial {context.columns['trial_id']} ran, before its round {next_round}: "
            f"sha256 {before} then, {after} now, {ONE_VERSION}; restore that code to go on, or run the new one into "
            "another out or under another trial_id."
        )


ONE_VERSION = "and one trial must not mix two versions of its code"


def _changed_plugin(recorded: str | None, now: dict) -> tuple[str, str, str] | None:
    """(plugin, hash then, hash now) of the first plugin whose code differs between a row's
    ``plugins`` JSON and ``now`` ('(not used)' where one side lacks it); None when none does."""
    then = json.loads(recorded) if recorded else {}
    for key in sorted(set(then) | set(now)):
        if then.get(key) != now.get(key):
            return key, then.get(key, "(not used)"), now.get(key, "(not used)")
    return None


@dataclass(frozen=True)
class Resumed:
    """What resuming found in the store: the state to go on from (None: from round 1), the
    saved rows of the rounds this process recomputes (each new row must reproduce its twin
    before it replaces it, engine.trial.resume.NOT_CHECKED aside), and what was recovered
    from (one line each)."""

    state: TrialState | None
    expected: Mapping[int, dict]
    notes: tuple[str, ...]


def check_rows(store: TrialStore, context: TrialContext, state: TrialState | None) -> Resumed:
    """Resume trusts the rows and the status, not only the checkpoint: when a completed
    round's row is missing, unreadable or holds another (trial, round) than its name says, or
    when the status is damaged or disagrees with the checkpoint (what ``warmstart check``
    flags), the trial is recomputed from round 1 (every round is a function of the seed), and
    every row that survives is checked on the way (verify_row: bit for bit on this kind of
    machine, within FLOAT_TOLERANCE from another)."""
    rows, bad = store.read_rows()
    notes = list(store.notes)
    for round_, why in bad.items():
        notes.append(f"note: the row file of round {round_} of trial {store.trial_id} {why}: recomputed")
    state = _trusted_state(store, state, rows, notes)
    restart = state.round if state is not None else 0
    _note_other_machines(context, store.trial_id, [row for n, row in rows.items() if n > restart], notes)
    return Resumed(state, MappingProxyType(rows), tuple(notes))


def _trusted_state(store: TrialStore, state: TrialState | None, rows: dict, notes: list[str]) -> TrialState | None:
    """``state``, or None (recompute from round 1) when a row or the status says it cannot be trusted."""
    completed = state.round if state is not None else 0
    lost = sorted(set(range(1, completed + 1)) - set(rows))
    if lost:
        notes.append(
            f"note: the rows of round(s) {_rounds(lost)} are missing or unreadable: trial {store.trial_id} is "
            f"recomputed from round 1, and its {len(rows)} surviving row(s) must reproduce{_AS}"
        )
        return None
    if state is None:
        if rows:
            notes.append(
                f"note: no intact checkpoint for trial {store.trial_id}: recomputed from round 1, and its "
                f"{len(rows)} saved row(s) must reproduce{_AS}"
            )
        return None
    status, damaged = store.read_status()
    said = status["round"] if status is not None else 0
    # A status one round ahead of the checkpoint is a corrupt newest checkpoint passed over
    # (noted above; two generations are kept): that round runs again and is checked.  Behind
    # it, further ahead (what `warmstart check` flags), or damaged, the status was not written
    # as the commit order writes it: nothing after round 1 is trusted.
    if damaged or not state.round <= said <= state.round + 1:
        why = f"is damaged ({damaged})" if damaged else f"says round {said}, the checkpoint round {state.round}"
        notes.append(
            f"note: the status of trial {store.trial_id} {why}: recomputed from round 1, and its {len(rows)} "
            f"saved row(s) must reproduce{_AS}"
        )
        return None
    return state


def _note_other_machines(context: TrialContext, trial_id: str, recomputed: list[dict], notes: list[str]) -> None:
    """A note naming both machines when saved rows this process recomputes were computed on
    another kind of machine: they are checked within FLOAT_TOLERANCE, not bit for bit."""
    others = sorted({machine(row) for row in recomputed if other_machine(row, context.columns)})
    if others:
        notes.append(
            f"note: trial {trial_id}: saved row(s) computed on {'; '.join(others)} are recomputed on "
            f"{machine(context.columns)}: their floats are checked to {FLOAT_TOLERANCE['rel_tol']:g} relative, "
            "not bit for bit, and the saved rows are kept"
        )


def machine(row: dict) -> str:
    """The kind of machine a row (or this process's columns) says computed it."""
    threads = f", {row['threads']} thread(s)" if row.get("threads") is not None else ""
    return f"{row.get('device_name')} ({row.get('cpu_isa')}{threads}, torch {row.get('torch_version')})"


def other_machine(saved: dict, here: dict) -> bool:
    """The saved row says it was computed on another kind of machine than ``here``.  A row
    written before these columns existed says nothing: it is taken as this machine's; a
    column added later (``threads``) is compared only where the row has it."""
    known = [c for c in MACHINE_COLUMNS if saved.get(c) is not None]
    return any(saved[c] != here.get(c) for c in known)


def _rounds(rounds: list[int]) -> str:
    return ", ".join(map(str, rounds))


def verify_row(row: dict, expected: Mapping[int, dict]) -> dict | None:
    """The saved row of a recomputed round, once checked against it (None when the round
    has no saved row); raise when the two differ: bit for bit on the same kind of machine,
    floats within FLOAT_TOLERANCE when the saved row was computed on another or in an
    ensemble; counts, names and picks always exactly."""
    saved = expected.get(row["round"])
    if saved is None:
        return None
    # A stacked model (engine/trial/stacked.py) sums in another order than the trial alone
    # or another ensemble: its floats agree to float tolerance, not bit for bit.
    stacked = row.get("ensemble") is not None or saved.get("ensemble") is not None
    elsewhere = other_machine(saved, row)
    column = first_difference(row, saved, tolerant=stacked or elsewhere)
    if column is None:
        return saved
    what = f"round {row['round']} of trial {row['trial_id']} does not reproduce its saved row"
    change = f"{column} was {saved.get(column)!r}, now {row.get(column)!r}"
    if elsewhere:
        raise TrialError(
            f"Integrity check failed: {what} ({change}), beyond the tolerance between machines: it was computed on "
            f"{machine(saved)}, this is {machine(row)}; resume it on the first kind of machine, or check that the "
            "code and config are the same. Nothing was overwritten."
        )
    raise TrialError(
        f"Integrity check failed: {what} ({change}); the saved results were not made by this code "
        "and config on this kind of machine. Nothing was overwritten."
    )


def first_difference(row: dict, saved: dict, tolerant: bool = False) -> str | None:
    """The first compared column where ``row`` differs from ``saved``, or None.  Exact (NaN
    equals NaN), floats within FLOAT_TOLERANCE when ``tolerant``."""
    for column in RECORD_COLUMNS:
        if column in NOT_CHECKED or column not in saved:  # not in a row an older warmstart wrote
            continue
        new, old = row.get(column), saved.get(column)
        same = new == old
        if isinstance(new, float) and isinstance(old, float):
            same = same or (math.isnan(new) and math.isnan(old))
            same = same or (tolerant and math.isclose(new, old, **FLOAT_TOLERANCE))
        if not same:
            return column
    return None


def save_round(
    store: TrialStore | None,
    context: TrialContext,
    state: TrialState,
    row: dict,
    epochs: list = (),
    expected: Mapping[int, dict] = MappingProxyType({}),
) -> dict:
    """Persist a completed round (rank 0): its per-epoch rows (eval.epochs_table), the row,
    then the checkpoint and status; returns the round's row as stored.  A crash between them
    re-runs this round on resume; its row, saved and now reproduced, is kept as it is, not
    written again (an object written once, with the times of the run that made it), and so
    are its per-epoch rows, written before it."""
    saved = verify_row(row, expected)  # every rank: a mismatch stops them all at the same round
    if store is None or context.comm.rank != 0:
        return saved or row
    if saved is None:
        if epochs and context.cfg.eval.epochs_table:
            columns = ("epoch", "train_acc", "train_loss", "seconds")
            per_epoch = [
                {"trial_id": row["trial_id"], "round": row["round"], **dict(zip(columns, e, strict=True))}
                for e in epochs
            ]
            store.write_epochs(row["round"], per_epoch)
        store.write_row(row)
    weights = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
    pretrained = {c: row[c] for c in PRETRAIN_COLUMNS}
    checkpoint = {"round": state.round, "labeled": state.labeled.copy(), "model": weights, "pretrain": pretrained}
    store.save_checkpoint({**checkpoint, "stopped": state.stopped})
    status = {"round": state.round, "rounds": context.labels.last_round(context.plan), "test_acc": row["test_acc"]}
    store.save_status({**status, "stopped": state.stopped} if state.stopped else status)
    return saved or row
