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

    def __init__(self, stream: TextIO = sys.stdout, every: float = 30.0, prefix: str = "") -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every
        self.prefix = prefix
        self.rounds = 0
        self._last = 0.0
        self._started = 0.0
        self._live = False

    def header(self) -> None:
        print(self.prefix + HEADER, file=self.stream, flush=True)

    def round_started(self, round_: int, rounds: int, n_labeled: int) -> None:
        self.rounds = rounds
        self._started = self._last = time.perf_counter()

    def epoch(self, round_: int, epoch: int, train_acc: float, train_loss: float) -> None:
        now = time.perf_counter()
        text = f"{self.prefix}  round {round_}/{self.rounds}: epoch {epoch}, train_acc {train_acc:.4f}, loss {train_loss:.4f}, {now - self._started:.0f}s"
        if self.tty:
            print("\r" + text + "\x1b[K", end="", file=self.stream, flush=True)
            self._live = True
        elif now - self._last >= self.every:
            print(text, file=self.stream, flush=True)
            self._last = now

    def round_done(self, row: dict) -> None:
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
