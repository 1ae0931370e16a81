"""Console progress for a trial: a line per round, and a live indicator while a round trains."""

from __future__ import annotations

import sys
import time
from typing import TextIO

HEADER = f"{'round':>9} {'labeled':>8} {'epochs':>6} {'stop':>10} {'train_acc':>9} {'test_acc':>8} {'seconds':>8}"


class ConsoleReporter:
    """Prints one line per finished round.  During training, a terminal gets a line that
    updates in place every epoch; a log file (no terminal) gets a line at most every
    ``every`` seconds, so long rounds still show they are alive."""

    def __init__(self, stream: TextIO = sys.stdout, every: float = 30.0, prefix: str = "", quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet  # the trial's announcement only: no per-round lines
        self.ran = False  # whether the announced trial had rounds left to run
        self.tty = stream.isatty()
        self.every = every
        self.prefix = prefix
        self.rounds = 0
        self._round = 0
        self._last = 0.0
        self._started = 0.0
        self._live = False

    def header(self) -> None:
        print(self.prefix + HEADER, file=self.stream, flush=True)

    def trial_started(self, info) -> None:
        """What the trial is, whether it resumes, then the table header."""
        cfg = info.cfg
        print(
            f"trial {info.trial_id}: {cfg.dataset.name} ({info.n_pool} pool, {info.n_eval} {cfg.dataset.eval}), "
            f"{cfg.model.name}, init {cfg.init.name}, acquisition {cfg.acquisition.name}, "
            f"{info.rounds} rounds of {info.per_round} after {info.initial}, on {info.where}",
            file=self.stream,
        )
        for note in info.notes:
            print(note, file=sys.stderr, flush=True)
        self.rounds = info.rounds
        self.ran = info.completed < info.rounds
        if not self.ran:
            print(f"already complete: {info.rounds} rounds in {info.out}", file=self.stream, flush=True)
            return
        if info.completed:
            print(f"resuming after round {info.completed} (found in {info.out})", file=self.stream)
        if not self.quiet:
            self.header()

    def round_started(self, round_: int, rounds: int, n_labeled: int) -> None:
        self.rounds = rounds
        if self.quiet:
            return
        self._round, self._started = round_, time.perf_counter()
        self._last = self._started

    def epoch(self, round_: int, epoch: int, train_acc: float, train_loss: float) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        if round_ != self._round:  # progress relayed from elsewhere: the round began about now
            self._round, self._started, self._last = round_, now, now
        text = f"{self.prefix}  round {round_}/{self.rounds}: epoch {epoch}, train_acc {train_acc:.4f}, loss {train_loss:.4f}, {now - self._started:.0f}s"
        if self.tty:
            print("\r" + text + "\x1b[K", end="", file=self.stream, flush=True)
            self._live = True
        elif now - self._last >= self.every:
            print(text, file=self.stream, flush=True)
            self._last = now

    def round_done(self, row: dict) -> None:
        if self.quiet:
            return
        if self._live:
            print("\r\x1b[K", end="", file=self.stream)
            self._live = False
        seconds = row["train_seconds"] + row["acquire_seconds"] + row.get("eval_seconds", 0.0)
        print(
            f"{self.prefix}{row['round']:>4}/{self.rounds:<4} {row['n_labeled']:>8} {row['epochs']:>6} "
            f"{row['stop_reason']:>10} {row['train_acc']:>9.4f} {row['test_acc']:>8.4f} {seconds:>8.2f}",
            file=self.stream,
            flush=True,
        )


class Relay:
    """The reporter of the process that trains where nobody watches its console (a Ray
    Train worker group's rank 0): it sends the trial's progress, as reporter calls, to the
    process that watches it through a queue (a ``ray.util.queue.Queue``, whose ``put`` does
    not wait): every round start and end, and an epoch at most every ``every`` seconds."""

    def __init__(self, channel, every: float = 2.0) -> None:
        self.channel = channel
        self.every = every
        self._last = 0.0

    def trial_started(self, info) -> None:
        pass

    def round_started(self, round_: int, rounds: int, n_labeled: int) -> None:
        self._last = time.perf_counter()
        self.channel.put(("round_started", (round_, rounds, n_labeled)))

    def epoch(self, round_: int, epoch: int, train_acc: float, train_loss: float) -> None:
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            self.channel.put(("epoch", (round_, epoch, train_acc, train_loss)))

    def round_done(self, row: dict) -> None:
        self.channel.put(("round_done", (row,)))


def deliver(channel, reporter, done, wait: float = 0.5) -> None:
    """Hand what a ``Relay`` sends through ``channel`` to ``reporter``, until ``done`` (an
    Event) is set and the channel is empty.  A round reported twice (a worker group that
    restarted recomputes the round it was in, and keeps its saved row) is handed on once."""
    from ray.util.queue import Empty

    seen: set[int] = set()
    while True:
        try:
            kind, args = channel.get(timeout=wait)
        except Empty:
            if done.is_set():
                return
            continue
        if kind == "round_done":
            if args[0]["round"] in seen:
                continue
            seen.add(args[0]["round"])
        getattr(reporter, kind)(*args)
