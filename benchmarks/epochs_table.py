"""What ``eval.epochs_table`` costs: the same trial with and without the per-epoch table.

    python -m benchmarks.epochs_table                      # the quickstart's trial (mnist1d, mlp), 2 rounds
    python -m benchmarks.epochs_table --dataset digits     # tiny rounds: the fixed cost per round shows most
    python -m benchmarks.epochs_table --out epochs.json

With the table on, each epoch appends the (epoch, accuracy, loss) that ``fit`` already reads
once per epoch, and a timestamp, to a list (no extra device sync), and each round writes one
small Parquet file under ``_epochs/``.  Two measurements:

- **direct** (the figure docs/results.md quotes): what the table adds, timed alone and
  repeated — the per-epoch logging call and one round's ``_epochs`` file write — against
  the CPU seconds of a round without it (the median round).  Stable on a shared machine,
  and conservative: the write is wall time (its fsync included), the round CPU time only.
- **paired**: the same trial (config, seed: the same rows, the same epochs) with and
  without the table, into fresh folders, in pairs alternating which goes first; CPU seconds
  of this process (``time.process_time``, one torch thread), the median over pairs of
  on / off − 1.  Noisier: a cross-check of the direct figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import timeit

import torch

from engine.schema.config import build
from engine.storage.store import TrialStore
from engine.trial.driver import Driver
from engine.trial.loop import epoch_logger
from engine.trial.session import start_trial

BASE = {
    "mnist1d": {
        "dataset": {"name": "mnist1d", "size": 10000, "eval": "test"},
        "model": {"name": "mlp", "activation": "relu", "width": 100, "depth": 2},
        "rounds": {"initial": 1000, "per_round": 1000, "max_rounds": 2},
        "convergence": {"train_acc": 0.99, "max_epochs": 150},
    },
    "digits": {
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "width": 32, "depth": 2},
        "rounds": {"initial": 100, "per_round": 100, "max_rounds": 2},
        "convergence": {"train_acc": 0.9, "max_epochs": 50},
    },
}


def run(dataset: str, table: bool, seed: int) -> tuple[float, list[dict]]:
    """CPU seconds of the trial's rounds (each ``step``: acquire, train, evaluate, write), and its rows."""
    cfg = build({**BASE[dataset], "device": "cpu", "seed": seed, "init": {"name": "warm"},
                 "eval": {"epochs_table": table}})  # fmt: skip
    with tempfile.TemporaryDirectory() as out, Driver([start_trial(cfg, out)]) as driver:
        seconds, rows = 0.0, []
        while not driver.done:
            began = time.process_time()
            rows.append(driver.step()[0][1].row)
            seconds += time.process_time() - began
    return seconds, rows


def measure_direct(epochs: float, round_seconds: float, repeats: int = 30) -> dict:
    """The table's own work, timed alone: the logging call per epoch, one round's file write."""
    log: list = []
    on_epoch = epoch_logger(log, lambda epoch, acc, loss: None)
    calls = 100_000
    per_epoch = min(timeit.repeat(lambda: on_epoch(1, 0.5, 0.7), number=calls, repeat=5)) / calls
    n = max(1, round(epochs))
    rows = [
        {"trial_id": "t", "round": 1, "epoch": e, "train_loss": 0.5, "train_acc": 0.9, "seconds": 0.01 * e}
        for e in range(1, n + 1)
    ]
    with tempfile.TemporaryDirectory() as out:
        store = TrialStore(out, "t")
        writes = []
        for _ in range(repeats):
            began = time.perf_counter()  # wall: the write's fsync and rename wait on the disk
            store.write_epochs(1, rows)
            writes.append(time.perf_counter() - began)
    write = statistics.median(writes)
    return {
        "log_seconds_per_epoch": per_epoch,
        "write_seconds_per_round": write,
        "direct_overhead": (per_epoch * epochs + write) / round_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(BASE), default="mnist1d")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run(args.dataset, False, 0)  # warm-up: the dataset's first load, kernels
    ratios, extra_ms, epochs, off_rounds = [], [], 0, []
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        timed = {table: run(args.dataset, table, pair) for table in order}
        (off, rows_off), (on, rows_on) = timed[False], timed[True]
        assert [r["epochs"] for r in rows_off] == [r["epochs"] for r in rows_on]  # the same work
        ratios.append(on / off - 1)
        extra_ms.append(1000 * (on - off) / len(rows_on))
        epochs = sum(r["epochs"] for r in rows_on) / len(rows_on)
        off_rounds.append(off / len(rows_off))
        print(f"pair {pair + 1}: off {off:.3f} s, on {on:.3f} s, {100 * ratios[-1]:+.2f}%", flush=True)
    direct = measure_direct(epochs, statistics.median(off_rounds))
    result = {
        "dataset": args.dataset,
        "pairs": args.pairs,
        "epochs_per_round": epochs,
        "round_cpu_seconds_median": statistics.median(off_rounds),
        **direct,
        "paired_overhead_median": statistics.median(ratios),
        "paired_extra_ms_per_round_median": statistics.median(extra_ms),
    }
    print(
        f"{args.dataset}: eval.epochs_table costs {100 * result['direct_overhead']:.2f}% of a round (direct: "
        f"{1e6 * direct['log_seconds_per_epoch']:.1f} µs per epoch × {epochs:.0f} epochs + "
        f"{1000 * direct['write_seconds_per_round']:.1f} ms to write the round's file, against "
        f"{result['round_cpu_seconds_median']:.3f} s of a round); paired: "
        f"{100 * result['paired_overhead_median']:+.2f}% (median of {args.pairs} pairs)"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
