"""The same suite on one worker node and on two, with results on an S3 bucket or a local folder.

    python -m benchmarks.cluster_scaling [--trials 8] [--rounds 4] [--per-round 50] [--out FILE.json]

A real multi-node Ray cluster on this machine (benchmarks/local_cluster.py: a head with no
CPUs, worker nodes of one CPU each) and a real S3-compatible server (moto).  Three runs of
one suite of ``--trials`` digits trials, each by its own `warmstart suite` driver:

1. one worker node, results on the bucket;
2. a second worker node added, results on the bucket (a fresh prefix: every trial reruns);
3. the same two nodes, results in a local folder (``--shared-fs``: one machine, one disk).

It reports each run's suite seconds (the driver's own "finished in", which includes joining
the cluster and Ray Tune's start), trials per hour, and seconds per round (suite seconds ×
worker nodes / rounds: the time one CPU spends per round, overheads included).  Aims
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


def suite_file(folder: str, trials: int, rounds: int, per_round: int) -> str:
    path = os.path.join(folder, "scaling.yaml")
    with open(path, "w") as f:
        f.write(
            textwrap.dedent(f"""
            name: scaling
            base:
              dataset: {{name: digits}}
              init: {{name: warm}}
              rounds: {{initial: 100, per_round: {per_round}, max_rounds: {rounds}}}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    rounds = args.trials * args.rounds
    with tempfile.TemporaryDirectory() as folder, s3_server("scaling") as s3:
        suite = suite_file(folder, args.trials, args.rounds, args.per_round)
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
    print(f"{args.trials} trials x {args.rounds} rounds (digits, 100 + {args.per_round} per round), one CPU per node")
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
    print(f"two nodes / one node, trials per hour: {scaling:.2f}x (aim >= 1.8x)")
    print(f"bucket vs local folder, time per round: {bucket_cost:+.1%} (aim <= +10%)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"runs": results, "scaling": scaling, "bucket_cost": bucket_cost, "time": time.time()}, f)


if __name__ == "__main__":
    main()
