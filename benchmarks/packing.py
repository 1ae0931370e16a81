"""Trials packed on one GPU: trial-rounds per GPU-minute at 1, 2, 4 and 8 concurrent trials.

    python -m benchmarks.packing [--device cuda] [--packs 1,2,4,8] [--rounds 6] [--out FILE.json]

A 16-trial digits/resnet18 λ×σ grid (shrink_perturb, λ in 0.2..0.8 × σ in 1e-3..1, seed 0)
runs N trials at a time, each trial in its own process (as Ray Tune runs them, each in
its own trial actor) or, with ``--mode thread``, in threads of one process.  No Ray: the
processes come from ``concurrent.futures``, started and warmed up (torch imported, CUDA
initialised, the dataset read) before the clock starts, so the figure is the GPU's
throughput, not process start-up.  One pass per pack size; each pack's wall time covers
all 16 trials, so its throughput is 16 × rounds / minutes.  ``--table FILE`` also writes
the packing table ``warmstart suite --trials-per-gpu auto`` reads (engine/suite/packing.py).

On a CPU (``--device cpu``) it is a smoke run of the same code: the numbers measure the
CPU's cores, not a GPU's packing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

SHRINKS = (0.2, 0.4, 0.6, 0.8)
PERTURBS = (0.001, 0.01, 0.1, 1.0)
TARGET_FOUR = 2.5  # a 4-trial pack: at least this many times one trial at a time


def grid(model: str, rounds: int, max_epochs: int, device: str, size: int = 16) -> list[list[str]]:
    """The trials' --set overrides: a λ×σ grid (the first ``size`` points) on digits."""
    params = "{name: resnet18, width: 16}" if model == "resnet18" else "{name: mlp, width: 16}"
    base = [
        f"device={device}",
        "dataset.name=digits",
        f"model={params}",
        f"rounds={{initial: 100, per_round: 100, max_rounds: {rounds}}}",
        f"convergence.max_epochs={max_epochs}",
        "seed=0",
    ]
    points = [(s, p) for s in SHRINKS for p in PERTURBS][:size]
    return [base + [f"init={{name: shrink_perturb, shrink: {s}, perturb: {p}}}"] for s, p in points]


def _warm(barrier, warmup: list[str], thread: bool = False) -> None:
    """A worker's set-up before the clock: imports, the CUDA context, the dataset's first
    read, cuDNN's first calls: one 1-round, 1-epoch trial of the same model."""
    import torch

    if not thread:
        torch.set_num_threads(1)  # as a Tune trial with one CPU
    run_trial(warmup)
    if barrier is not None:
        barrier.wait()


def run_trial(sets: list[str]) -> tuple[int, float]:
    """One trial in this process: (rounds done, seconds)."""
    from engine.schema.config import build
    from engine.trial.driver import Driver
    from engine.trial.session import start_trial

    began = time.perf_counter()
    cfg = build(sets=sets)
    with Driver([start_trial(cfg, None)]) as driver:
        rows = driver.run()
    return len(rows), time.perf_counter() - began


def run_pack(trials: list[list[str]], concurrent: int, mode: str) -> dict:
    """All ``trials``, ``concurrent`` at a time; the clock starts once every worker is warm."""
    warmup = [*trials[0], "rounds.max_rounds=1", "convergence.max_epochs=1"]
    if mode == "thread":
        _warm(None, warmup, thread=True)
        pool = ThreadPoolExecutor(max_workers=concurrent)
        began = time.perf_counter()
    else:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        barrier = context.Barrier(concurrent + 1)
        pool = ProcessPoolExecutor(concurrent, mp_context=context, initializer=_warm, initargs=(barrier, warmup))
        futures = [pool.submit(os.getpid) for _ in range(concurrent)]  # start every worker now
        barrier.wait()  # ... and wait until each is warm
        for f in futures:
            f.result()
        began = time.perf_counter()
    with pool:
        results = list(pool.map(run_trial, trials))
    seconds = time.perf_counter() - began
    rounds = sum(r for r, _ in results)
    return {
        "concurrent": concurrent,
        "mode": mode,
        "trials": len(trials),
        "rounds": rounds,
        "wall_seconds": seconds,
        "trial_seconds": [s for _, s in results],
        "rounds_per_gpu_minute": rounds / (seconds / 60),
    }


def measure(model: str, packs: list[int], rounds: int, max_epochs: int, device: str, mode: str, size: int) -> dict:
    trials = grid(model, rounds, max_epochs, device, size)
    runs = []
    for n in packs:
        print(f"  packing: {n} concurrent {mode}(s), {len(trials)} trials ...", file=sys.stderr, flush=True)
        runs.append(run_pack(trials, n, mode))
    one = next((r["rounds_per_gpu_minute"] for r in runs if r["concurrent"] == 1), None)
    for r in runs:
        r["speedup_over_one"] = None if one is None else r["rounds_per_gpu_minute"] / one
    four = next((r["speedup_over_one"] for r in runs if r["concurrent"] == 4), None)
    return {
        "model": model,
        "device": device,
        "rounds_per_trial": rounds,
        "max_epochs": max_epochs,
        "threads_per_trial": 1 if mode == "process" else None,
        "runs": runs,
        "target_four_over_one": TARGET_FOUR,
        "meets_target": None if four is None else four >= TARGET_FOUR,
    }


def print_table(result: dict) -> None:
    print(f"\npacking: {result['model']} on digits, {len(result['runs'][0]['trial_seconds'])} trials")
    print("  trial-rounds per GPU-minute, N trials at once (target: 4 at once >= 2.5x one at a time)")
    print(f"  {'N':>3} {'mode':<8} {'rounds':>6} {'wall s':>8} {'rounds/GPU-min':>15} {'x one':>6}")
    for r in result["runs"]:
        speedup = "-" if r["speedup_over_one"] is None else f"{r['speedup_over_one']:.2f}"
        print(
            f"  {r['concurrent']:>3} {r['mode']:<8} {r['rounds']:>6} {r['wall_seconds']:>8.1f} "
            f"{r['rounds_per_gpu_minute']:>15.1f} {speedup:>6}"
        )


def write_table(result: dict, path: str) -> None:
    from engine.suite.packing import write_table as write

    throughput = {r["concurrent"]: r["rounds_per_gpu_minute"] for r in result["runs"]}
    import torch

    about = {"device": result["device"], "torch": torch.__version__, "model": result["model"], "date": time.ctime()}
    if result["device"].startswith("cuda"):
        about["gpu"] = torch.cuda.get_device_name()
    write(Path(path), throughput, about)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda | cpu (cpu: a smoke run)")
    parser.add_argument("--model", choices=["resnet18", "mlp"], default="resnet18")
    parser.add_argument("--packs", default="1,2,4,8", help="concurrent trials to measure, comma-separated")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per trial")
    parser.add_argument("--max-epochs", type=int, default=100, help="convergence.max_epochs of each round")
    parser.add_argument("--trials", type=int, default=16, help="grid points (at most 16)")
    parser.add_argument("--mode", choices=["process", "thread"], default="process")
    parser.add_argument("--out", metavar="FILE.json")
    parser.add_argument("--table", metavar="FILE.json", help="also write the packing table for --trials-per-gpu auto")
    args = parser.parse_args(argv)
    packs = [int(p) for p in args.packs.split(",")]
    result = measure(args.model, packs, args.rounds, args.max_epochs, args.device, args.mode, args.trials)
    print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.table:
        write_table(result, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
