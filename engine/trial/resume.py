"""Resume and integrity: a trial's state saved after every round and loaded again, and
the rows in the store checked against what this process recomputes.

A completed round's row is written first, then the checkpoint and the status; resume
trusts the rows, not only the checkpoint: a missing row recomputes the trial from round 1
(every round is a function of the seed), and each surviving row must reproduce bit for bit."""

from __future__ import annotations

import json
import math

from engine.errors import ConfigError, TrialError
from engine.schema.config import Config
from engine.schema.records import NOT_CHECKED, PRETRAIN_COLUMNS, RECORD_COLUMNS, PretrainRecord
from engine.storage.store import TrialStore
from engine.trial.setup import TrialContext, TrialState, fresh_model

# NOT_CHECKED (engine.schema.records, the columns of role timing or context) is left out of
# the integrity check: time measurements, and the suite a trial ran in (not part of its
# identity: the same trial may run alone, then in a suite).


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
    code.  Rows written before rows recorded their plugins are not checked (a note says so)."""
    now = cfg.plugin_code()
    try:
        rows, _ = store.read_rows()
    except OSError:  # an out that is a file, or unreadable: store.probe() says so next
        return
    unchecked = [r for r, row in rows.items() if "plugins" not in row]
    for round_, row in sorted(rows.items()):
        if round_ in unchecked:
            continue
        then = json.loads(row["plugins"]) if row["plugins"] else {}
        for key in sorted(set(then) | set(now)):
            if then.get(key) != now.get(key):
                raise ConfigError(
                    f"Plugin {key} changed since trial {store.trial_id} ran round {round_} in {store.out}: "
                    f"sha256 {then.get(key, '(not used)')} then, {now.get(key, '(not used)')} now, and one trial "
                    "must not mix two versions of its code; restore that code, or run the new one into another out "
                    "or under another trial_id."
                )
    if unchecked and now:
        store.notes.append(
            f"note: the rows of round(s) {_rounds(unchecked)} of trial {store.trial_id} do not record their plugins' "
            "code (written by an older warmstart): the plugins were not checked against them"
        )


def check_rows(store: TrialStore, context: TrialContext, state: TrialState | None) -> TrialState | None:
    """Resume trusts the rows, not only the checkpoint: when a completed round's row is
    missing or unreadable, the trial is recomputed from round 1 (every round is a function
    of the seed), and every row that survives is checked bit for bit on the way."""
    rows, unreadable = store.read_rows()
    completed = state.round if state is not None else 0
    lost = sorted(set(range(1, completed + 1)) - set(rows))
    context.expected.update(rows)
    context.notes.extend(store.notes)
    if unreadable:
        context.notes.append(f"note: the rows of round(s) {_rounds(unreadable)} cannot be read: recomputed")
    if lost:
        context.notes.append(
            f"note: the rows of round(s) {_rounds(lost)} are missing or unreadable: trial {store.trial_id} is "
            f"recomputed from round 1, and its {len(rows)} surviving row(s) must reproduce bit for bit"
        )
        return None
    if state is None and rows:
        context.notes.append(
            f"note: no intact checkpoint for trial {store.trial_id}: recomputed from round 1, and its "
            f"{len(rows)} saved row(s) must reproduce bit for bit"
        )
    return state


def _rounds(rounds: list[int]) -> str:
    return ", ".join(map(str, rounds))


def verify_row(context: TrialContext, row: dict) -> None:
    """Raise when a recomputed round differs from the row saved for it."""
    saved = context.expected.get(row["round"])
    if saved is None:
        return
    # A stacked model (engine/trial/ensemble.py) sums in another order than the trial alone
    # or another ensemble: its floats agree to float tolerance, not bit for bit.
    stacked = row.get("ensemble") is not None or saved.get("ensemble") is not None
    for column in RECORD_COLUMNS:
        if column in NOT_CHECKED or column not in saved:  # not in a row an older warmstart wrote
            continue
        new, old = row.get(column), saved.get(column)
        same = new == old or (isinstance(new, float) and isinstance(old, float) and math.isnan(new) and math.isnan(old))
        if stacked and isinstance(new, float) and isinstance(old, float):
            same = same or math.isclose(new, old, rel_tol=1e-4, abs_tol=1e-6)
        if not same:
            raise TrialError(
                f"Integrity check failed: round {row['round']} of trial {row['trial_id']} does not reproduce its "
                f"saved row ({column} was {old!r}, now {new!r}); the saved results were not made by this code "
                "and config on this kind of machine. Nothing was overwritten."
            )


def save_round(
    store: TrialStore | None, context: TrialContext, state: TrialState, row: dict, epochs: list = ()
) -> None:
    """Persist a completed round (rank 0): its per-epoch rows (eval.epochs_table), the row,
    then the checkpoint and status.  A crash between them re-runs this round on resume,
    which rewrites the same files instead of adding any."""
    verify_row(context, row)  # every rank: a mismatch stops them all at the same round
    if store is None or context.comm.rank != 0:
        return
    if epochs and context.cfg.eval.epochs_table:
        columns = ("epoch", "train_acc", "train_loss", "seconds")
        per_epoch = [
            {"trial_id": row["trial_id"], "round": row["round"], **dict(zip(columns, e, strict=True))} for e in epochs
        ]
        store.write_epochs(row["round"], per_epoch)
    store.write_row(row)
    weights = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
    pretrained = {c: row[c] for c in PRETRAIN_COLUMNS}
    checkpoint = {"round": state.round, "labeled": state.labeled.copy(), "model": weights, "pretrain": pretrained}
    store.save_checkpoint({**checkpoint, "stopped": state.stopped})
    status = {"round": state.round, "rounds": context.plan.rounds, "test_acc": row["test_acc"]}
    store.save_status({**status, "stopped": state.stopped} if state.stopped else status)
