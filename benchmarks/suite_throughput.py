"""A suite on Ray Tune against the same trials one after another in-process.

    python -m benchmarks.suite_throughput [--suite quickstart] [--set KEY=VALUE ...] [--out FILE.json]

Both runs happen in this one process, in-process first: every trial of the suite
through ``start_trial`` (the `warmstart run` path), then the whole suite through
``run_suite`` on a fresh local Ray instance (the `warmstart suite` path, `ray.init`
included).  Throughput ratio = sequential seconds / suite seconds: above 1, packing
trials onto the machine's CPUs beats running them one by one.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time

from benchmarks.ray_overhead import machine
from engine.suite.suite_file import load_suite
from engine.trial.driver import Driver
from engine.trial.session import start_trial


def sequential(suite, out: str) -> float:
    began = time.perf_counter()
    for trial in suite.trials:
        with Driver([start_trial(trial.config, out)]) as driver:
            driver.run()
    return time.perf_counter() - began


def on_tune(suite, out: str) -> tuple[float, list]:
    from engine.suite.options import SuiteOptions, check_suite
    from engine.suite.tune import run_suite

    began = time.perf_counter()
    failed = run_suite(check_suite(suite, SuiteOptions.build(suite.name, out)), stream=io.StringIO())
    return time.perf_counter() - began, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="quickstart")
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    parser.add_argument("--out", metavar="FILE.json")
    args = parser.parse_args()

    suite = load_suite(args.suite, sets=args.sets)
    with tempfile.TemporaryDirectory() as tmp:
        seconds_sequential = sequential(suite, f"{tmp}/sequential")
        seconds_tune, failed = on_tune(suite, f"{tmp}/tune")
    if failed:
        raise SystemExit(f"{len(failed)} trial(s) failed on Tune: {failed[0]}")
    ratio = seconds_sequential / seconds_tune
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d')}")
    print(f"suite {suite.name}: {len(suite.trials)} trials")
    print(f"  one after another, in-process   {seconds_sequential:8.1f} s")
    print(f"  warmstart suite (Ray Tune)      {seconds_tune:8.1f} s  (ray.init included)")
    print(f"  throughput ratio (sequential / suite)  {ratio:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "machine": machine(),
                    "suite": suite.name,
                    "trials": len(suite.trials),
                    "sequential_seconds": seconds_sequential,
                    "suite_seconds": seconds_tune,
                    "throughput_ratio": ratio,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
