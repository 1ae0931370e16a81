"""The same suite on one worker node and on two, with results on an S3 bucket or a local folder.

    python -m benchmarks.cluster_scaling [--dataset digits|mnist1d] [--trials 8] [--rounds 4]
        [--initial 100] [--per-round 50] [--saves 20] [--out FILE.json]

A real multi-node Ray cluster on this machine (benchmarks/local_cluster.py: a head with no
CPUs, worker nodes of one CPU each) and a real S3-compatible server (moto).  Three runs of
one suite of ``--trials`` trials, each by its own `warmstart suite` driver:

1. one worker node, results on the bucket;
2. a second worker node added, results on the bucket (a fresh prefix: every trial reruns);
3. the same two nodes, results in a local folder (``--shared-fs``: one machine, one disk).

It reports each run's suite seconds (the driver's own "finished in", which includes joining
the cluster and Ray Tune's start), trials per hour, and seconds per round (suite seconds ×
worker nodes / rounds: the time one CPU spends per round, overheads included).  Then,
without Ray, what saving one round costs on each store: a real row, checkpoint and status
of run 3 written ``--saves`` times through TrialStore (lease checks included on the
bucket), as seconds per round, and that difference as a share of run 3's seconds per
round.  Aims
(issue 19): two nodes >= 1.8x the trials per hour of one; the bucket <= 10% more per round
than the local folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time

from benchmarks.local_cluster import LocalCluster, s3_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def suite_file(folder: str, dataset: str, trials: int, rounds: int, initial: int, per_round: int) -> str:
    path = os.path.join(folder, "scaling.yaml")
    with open(path, "w") as f:
        f.write(
            textwrap.dedent(f"""
            name: scaling
            base:
              dataset: {{name: {dataset}}}
              init: {{name: warm}}
              rounds: {{initial: {initial}, per_round: {per_round}, max_rounds: {rounds}}}
            grid:
              seed: {list(range(trials))}
            """)
        )
    return path


def run_suite(suite: str, address: str, out: str, env: dict, shared_fs: bool = False) -> float:
    """One `warmstart suite` driver; its own 'finished in' seconds."""
    args = [sys.executable, "-m", "engine", "suite", suite, "--address", address, "--out", out]
    done = subprocess.run(
        args + (["--shared-fs"] if shared_fs else []), env=env, capture_output=True, text=True, cwd=REPO
    )
    if done.returncode != 0:
        raise SystemExit(f"the suite failed ({out}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return float(re.search(r"finished in (\d+)s", done.stdout).group(1))


def save_seconds(source: str, out: str, saves: int) -> float:
    """Seconds to save one round (row, checkpoint, status) under ``out``, mean of ``saves``."""
    from engine.storage.check import trial_ids
    from engine.storage.store import TrialStore

    trial_id = trial_ids(source)[0]
    row, checkpoint = TrialStore(source, trial_id).rows()[0], TrialStore(source, trial_id).load_checkpoint()
    store = TrialStore(out, trial_id)
    store.lock()
    began = time.perf_counter()
    for round_ in range(1, saves + 1):
        store.write_row({**row, "round": round_})
        store.save_checkpoint({**checkpoint, "round": round_})
        store.save_status({"round": round_, "rounds": saves})
    seconds = (time.perf_counter() - began) / saves
    store.unlock()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dataset", default="digits", help="digits (default) or mnist1d (longer rounds)")
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--saves", type=int, default=20, help="rounds saved per store to time a save")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    rounds = args.trials * args.rounds
    with tempfile.TemporaryDirectory() as folder, s3_server("scaling") as s3:
        suite = suite_file(folder, args.dataset, args.trials, args.rounds, args.initial, args.per_round)
        env = {**os.environ, **s3.env, "PYTHONPATH": REPO}
        cluster = LocalCluster(worker_nodes=1, cpus_per_node=1)
        try:
            runs = [("1 node, bucket", 1, run_suite(suite, cluster.address, s3.uri("one"), env))]
            cluster.workers.append(cluster.add_worker())
            runs.append(("2 nodes, bucket", 2, run_suite(suite, cluster.address, s3.uri("two"), env)))
            local = os.path.join(folder, "local")
            runs.append(("2 nodes, local folder", 2, run_suite(suite, cluster.address, local, env, shared_fs=True)))
        finally:
            cluster.shutdown()
        os.environ.update(s3.env)  # this process saves to the bucket as a driver would
        saves = {
            "bucket": save_seconds(local, s3.uri("saves"), args.saves),
            "local folder": save_seconds(local, os.path.join(folder, "saves"), args.saves),
        }
    print(
        f"{args.trials} trials x {args.rounds} rounds ({args.dataset}, mlp, warm start, {args.initial} + "
        f"{args.per_round} per round), one CPU per node"
    )
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print("| run | suite seconds | trials/hour | seconds per round per node |")
    print("| --- | --- | --- | --- |")
    results = []
    for name, nodes, seconds in runs:
        per_hour, per_round = args.trials / seconds * 3600, seconds * nodes / rounds
        results.append({"run": name, "nodes": nodes, "seconds": seconds, "trials_per_hour": per_hour})
        print(f"| {name} | {seconds:.0f} | {per_hour:.0f} | {per_round:.2f} |")
    scaling = runs[0][2] / runs[1][2]
    bucket_cost = runs[1][2] / runs[2][2] - 1
    per_round = runs[2][2] * 2 / rounds
    save_cost = (saves["bucket"] - saves["local folder"]) / per_round
    print(f"two nodes / one node, trials per hour: {scaling:.2f}x (aim >= 1.8x)")
    print(f"bucket vs local folder, suite time per round: {bucket_cost:+.1%} (aim <= +10%)")
    print(
        f"saving a round: bucket {saves['bucket'] * 1000:.1f} ms, local folder {saves['local folder'] * 1000:.1f} ms; "
        f"the difference is {save_cost:+.1%} of a round ({per_round:.2f} s)"
    )
    if args.out:
        record = {"runs": results, "scaling": scaling, "bucket_cost": bucket_cost, "saves": saves, "time": time.time()}
        with open(args.out, "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main()
