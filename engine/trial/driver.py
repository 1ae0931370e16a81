"""The round driver: the one place where trials advance round by round.

    Driver(sessions, compute)        # trial sessions (engine/trial/session.py), one backend
      .step()                        # the next round of the trials furthest behind:
                                     #   compute.round(...)    alone, or stacked under vmap
                                     #   save_round(...)       row, then checkpoint (resume.py)
                                     #   reporter.round_done   the one progress channel
      .run()                         # every remaining round
    lockstep(trials, rounds)         # round r of every trial, then r + 1: rows already
                                     # saved replayed first, a trial stopped early carried

Whatever computes a round — ``ALONE`` (each trial by itself, in this process or as one
rank of a Ray Train worker group with its ``comm``), ``STACKED`` (an ensemble's members as
one model under vmap, engine/trial/stacked.py) — the driver saves, reports and stops the
same way.  A suite's Ray Train trials (one worker group per trial, each running its own
``Driver`` inside the group, engine/trial/distributed.py) are stepped through the same
``lockstep`` by engine/trial/runner.py's ``RayTrainGroups``.  Where a round's labels come
from is part of each trial's input (``start_trial(labels=...)``, engine/trial/setup.py
``LabelSource``), not another loop.

Progress has one channel: the trial's ``Reporter`` (engine/trial/setup.py).  In this
process it is called directly; from a Ray Train worker group, rank 0's reports travel to
the driver's reporter through a Ray queue (engine/trial/progress.py); a suite turns the
rows ``lockstep`` yields into ``tune.report`` calls (engine/suite/points.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Protocol

from engine.errors import TrialError
from engine.trial.loop import RoundResult, run_round
from engine.trial.resume import check_code_unchanged, save_round
from engine.trial.session import TrialSession
from engine.trial.stacked import run_stacked_round

Fail = Callable[[int, BaseException], None]  # (position in the round's sessions, the error)


class Compute(Protocol):
    """How one round of several trial sessions (all at the same completed round) is
    computed.  ``fail``: where a member's strategy error goes (it leaves the round and the
    others go on); None: the error propagates."""

    isolates_failures: bool  # a member that fails leaves, the others finish, then its error is raised

    def round(self, sessions: list[TrialSession], fail: Fail | None) -> list[RoundResult]: ...


class Alone:
    """Each trial computes its own round (``engine.trial.loop.run_round``), one after another."""

    isolates_failures = False

    def round(self, sessions: list[TrialSession], fail: Fail | None) -> list[RoundResult]:
        return [run_round(session.context, session.state) for session in sessions]


class Stacked:
    """The trials' round as one stacked model (engine/trial/stacked.py)."""

    isolates_failures = True

    def round(self, sessions: list[TrialSession], fail: Fail | None) -> list[RoundResult]:
        return run_stacked_round(sessions, fail)


ALONE, STACKED = Alone(), Stacked()


class Driver:
    """Trial sessions advanced round by round on one compute backend; it owns saving,
    reporting and the stop rule (a trial is done after its last round, or when a round
    diverged under ``convergence.on_diverge: stop``)."""

    def __init__(self, sessions: list[TrialSession], compute: Compute = ALONE) -> None:
        self.sessions, self.compute = sessions, compute
        self.failed: dict[int, BaseException] = {}  # session index -> why it left (the others go on)

    def close(self) -> None:
        """Release every trial's lock."""
        for session in self.sessions:
            session.close()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def running(self, i: int) -> bool:
        return i not in self.failed and not self.sessions[i].done

    @property
    def done(self) -> bool:
        return not any(self.running(i) for i in range(len(self.sessions)))

    def step(self) -> list[tuple[int, RoundResult]]:
        """The next round of the trials furthest behind (a resumed trial catches up first),
        computed, saved and reported: (session index, its round's result) for each."""
        if self.done:
            raise StopIteration("every trial is complete")
        behind = min(s.state.round for i, s in enumerate(self.sessions) if self.running(i))
        members = [i for i, s in enumerate(self.sessions) if self.running(i) and s.state.round == behind]
        for i in members:  # a plugin redefined in this process since the trial started
            check_code_unchanged(self.sessions[i].context, behind + 1)
        fail = self._fail(members) if self.compute.isolates_failures else None
        results = self.compute.round([self.sessions[i] for i in members], fail)
        members = [i for i in members if i not in self.failed]
        for i, result in zip(members, results, strict=True):
            session = self.sessions[i]
            # A recomputed round whose saved row reproduces keeps that row.
            result.row = save_round(
                session.store, session.context, session.state, result.row, result.epochs, session.expected
            )
            session.context.reporter.round_done(result.row)
            session.rows.append(result.row)
        return list(zip(members, results, strict=True))

    def _fail(self, members: list[int]) -> Fail:
        def fail(position: int, error: BaseException) -> None:
            self.failed[members[position]] = error

        return fail

    def run(self) -> list[dict]:
        """Every remaining round (then a failed member's error); the rows this driver made."""
        while not self.done:
            self.step()
        self.raise_failures()
        return [row for session in self.sessions for row in session.rows]

    def raise_failures(self) -> None:
        """A failed member's error, naming its trial (after the others have finished)."""
        if not self.failed:
            return
        i, error = next(iter(self.failed.items()))
        trial_id = self.sessions[i].context.columns["trial_id"]
        others = f" ({len(self.failed) - 1} more member(s) failed)" if len(self.failed) > 1 else ""
        message = f"trial {trial_id}: {error}{others}"
        try:
            named = type(error)(message)
        except Exception:  # an exception class that takes other arguments
            named = TrialError(message)
        raise named from error

    # --- as lockstep's trials --------------------------------------------------------

    def completed(self) -> list[dict[int, dict]]:
        """Before the first step: each trial's saved rows of the rounds it has completed, by
        round, as its session read them when it opened (``TrialSession.expected``): not the
        rows after them that it recomputes (a trial recomputed from round 1 keeps its later
        rows to check)."""
        return [{r: row for r, row in s.expected.items() if r <= s.state.round} for s in self.sessions]

    def advance(self) -> list[tuple[int, dict]]:
        return [(i, result.row) for i, result in self.step()]

    def finish(self) -> None:
        self.run()


class Trials(Protocol):
    """What ``lockstep`` steps: a ``Driver``, or trials computed elsewhere whose rows come
    back (engine/trial/runner.py ``RayTrainGroups``)."""

    failed: dict[int, BaseException]

    def completed(self) -> list[dict[int, dict]]: ...  # each trial's saved rows, by round
    def running(self, i: int) -> bool: ...
    def advance(self) -> list[tuple[int, dict]]: ...  # (trial index, row) of rounds just completed
    def finish(self) -> None: ...  # the others to their end, then a failure's error


def lockstep(trials: Trials, rounds: int | None = None, stop_after: int | None = None) -> Iterator[list[dict]]:
    """Yield, round by round, every trial's row of that round: first the rounds already
    saved (a resumed trial reports its history again, so a scheduler sees it whole), then
    new ones, round r of every trial before round r + 1, up to ``stop_after`` or ``rounds``
    (None: until every trial has ended).  A trial that stopped early (a divergence) carries
    its last row forward.  A failed trial ends the yielding at the first round it lacks;
    the others then finish and its error is raised."""
    rows = trials.completed()
    last = stop_after or rounds
    for round_ in itertools.count(1):
        if last is not None and round_ > last:
            break
        while any(round_ not in done and trials.running(i) for i, done in enumerate(rows)):
            for i, row in trials.advance():
                rows[i][row["round"]] = row
        if any(round_ not in rows[i] for i in trials.failed) or not all(rows):
            break
        if not any(round_ in done for done in rows):
            break  # every trial ended before this round
        for done in rows:
            if round_ not in done:  # stopped early: its last round carries forward
                done[round_] = done[max(done)]
        yield [done[round_] for done in rows]
    if trials.failed:
        trials.finish()
