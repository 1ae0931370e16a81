"""The same suite on one worker node and on more, with results on an S3 bucket or a local folder.

    python -m benchmarks.cluster_scaling [--dataset digits|mnist1d] [--trials 8] [--rounds 4]
        [--initial 100] [--per-round 50] [--nodes 1,2] [--cpus-per-node 1] [--store both|local]
        [--saves 20] [--out FILE.json]

A real multi-node Ray cluster on this machine (benchmarks/local_cluster.py: a head with no
CPUs, worker nodes of ``--cpus-per-node`` CPUs each) and, with ``--store both`` (the
default), a real S3-compatible server (moto).  The same suite of ``--trials`` trials runs
once per node count of ``--nodes`` (nodes are added between runs), each by its own
`warmstart suite` driver into a fresh prefix (every trial reruns):

- ``--store both``: every node count with results on the bucket, then the largest once
  more with results in a local folder (``--shared-fs``: one machine, one disk);
- ``--store local``: every node count with results in a local folder (no S3 server, so no
  moto: what the GPU machine of benchmarks/gpu_check.sh can run).

It reports each run's suite seconds (the driver's own "finished in", which includes joining
the cluster and Ray Tune's start), trials per hour, and seconds per round (suite seconds ×
worker nodes / rounds: the time one node spends per round, overheads included), and each
node count's trials per hour over the first's.  Then, with the bucket, without Ray, what
saving one round costs on each store: a real row, checkpoint and status of the local run
written ``--saves`` times through TrialStore (lease checks included on the bucket), as
seconds per round, and that difference as a share of that run's seconds per round.  Aims
(issue 19): two nodes >= 1.8x the trials per hour of one, four >= 3.2x; the bucket <= 10%
more per round than the local folder.
"""

from __future__ import annotations

import argparse
import contextlib
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
AIMS = {2: 1.8, 4: 3.2}  # n worker nodes against one: trials per hour (issue 19)


def suite_file(folder: str, dataset: str, trials: int, rounds: int, initial: int, per_round: int) -> str:
    path = os.path.join(folder, "scaling.yaml")
    with open(path, "w") as f:
        f.write(
            textwrap.dedent(f"""
            name: scaling
            base:
              device: cpu  # a CPU benchmark, also on a machine with a GPU
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dataset", default="digits", help="digits (default) or mnist1d (longer rounds)")
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument(
        "--nodes", default="1,2", help="worker node counts to run the suite on, ascending (default 1,2)"
    )
    parser.add_argument("--cpus-per-node", type=int, default=1, help="CPUs of each worker node (default 1)")
    parser.add_argument(
        "--store",
        choices=["both", "local"],
        default="both",
        help="both (default): every run on the bucket, one more on a local folder at the most nodes, and the "
        "save timing; local: every run on a local folder, no S3 server (no moto needed)",
    )
    parser.add_argument("--saves", type=int, default=20, help="rounds saved per store to time a save")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    nodes = sorted({int(n) for n in args.nodes.split(",")})
    bucket = args.store == "both"
    about = {
        "trials": args.trials,
        "rounds": args.rounds,
        "dataset": args.dataset,
        "cpus_per_node": args.cpus_per_node,
        "cpus": os.cpu_count(),
        "aims": AIMS,
    }
    runs, saves = [], None
    prepare_dataset(args.dataset)  # generated once before the clock, not by the first run's trials
    with tempfile.TemporaryDirectory() as folder, s3_server("scaling") if bucket else contextlib.nullcontext() as s3:
        suite = suite_file(folder, args.dataset, args.trials, args.rounds, args.initial, args.per_round)
        # the source tree first, then whatever else is on the path (the GPU machine: the installed wheels)
        path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, **(s3.env if bucket else {}), "PYTHONPATH": path}
        cluster = LocalCluster(worker_nodes=nodes[0], cpus_per_node=args.cpus_per_node)
        try:
            for n in nodes:
                while len(cluster.workers) < n:
                    cluster.workers.append(cluster.add_worker())
                if bucket:
                    seconds = run_suite(suite, cluster.address, s3.uri(f"nodes{n}"), env)
                    runs.append((f"{n} node{'s' * (n > 1)}, bucket", n, "bucket", seconds))
                else:
                    out = os.path.join(folder, f"nodes{n}")
                    seconds = run_suite(suite, cluster.address, out, env, shared_fs=True)
                    runs.append((f"{n} node{'s' * (n > 1)}, local folder", n, "local", seconds))
                summarize(about, runs, len(nodes), None, args.out, quiet=True)  # a run cut short keeps these
            if bucket:
                local = os.path.join(folder, "local")
                seconds = run_suite(suite, cluster.address, local, env, shared_fs=True)
                runs.append((f"{nodes[-1]} nodes, local folder", nodes[-1], "local", seconds))
        finally:
            cluster.shutdown()
        if bucket:
            os.environ.update(s3.env)  # this process saves to the bucket as a driver would
            saves = {
                "bucket": save_seconds(local, s3.uri("saves"), args.saves),
                "local folder": save_seconds(local, os.path.join(folder, "saves"), args.saves),
            }
    print(
        f"{args.trials} trials x {args.rounds} rounds ({args.dataset}, mlp, warm start, {args.initial} + "
        f"{args.per_round} per round), {args.cpus_per_node} CPU(s) per node"
    )
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    summarize(about, runs, len(nodes), saves, args.out)


def prepare_dataset(name: str) -> None:
    """Read (for mnist1d: generate and cache) the dataset once in this process."""
    import torch

    from engine.schema.config import build
    from engine.trial.setup import load_data

    load_data(build(sets=[f"dataset.name={name}"]), torch.device("cpu"))


def summarize(about: dict, runs: list, scaled: int, saves: dict | None, out: str | None, quiet: bool = False) -> None:
    """The table, each node count's trials per hour over the first's against its aim, the
    bucket's cost; the same as JSON in ``out``.  ``runs[:scaled]``: one run per node count."""
    rounds = about["trials"] * about["rounds"]
    say = (lambda *a: None) if quiet else print
    say("| run | suite seconds | trials/hour | seconds per round per node |")
    say("| --- | --- | --- | --- |")
    results = []
    for name, n, store, seconds in runs:
        per_hour, per_round = about["trials"] / seconds * 3600, seconds * n / rounds
        results.append({"run": name, "nodes": n, "store": store, "seconds": seconds, "trials_per_hour": per_hour})
        say(f"| {name} | {seconds:.0f} | {per_hour:.0f} | {per_round:.2f} |")
    first = runs[0]
    scaling, meets = {}, {}
    for _name, n, _store, seconds in runs[1:scaled]:
        scaling[n] = first[3] / seconds
        aim = AIMS.get(n) if first[1] == 1 else None
        if aim:
            meets[n] = scaling[n] >= aim
        verdict = f" (aim >= {aim}x: {'met' if meets[n] else 'MISSED'})" if aim else ""
        say(f"{n} nodes / {first[1]} node{'s' * (first[1] > 1)}, trials per hour: {scaling[n]:.2f}x{verdict}")
    record = {**about, "runs": results, "scaling": scaling, "meets_aims": meets, "time": time.time()}
    if saves is not None:
        bucket_cost = runs[scaled - 1][3] / runs[-1][3] - 1
        per_round = runs[-1][3] * runs[-1][1] / rounds
        save_cost = (saves["bucket"] - saves["local folder"]) / per_round
        say(f"bucket vs local folder, suite time per round: {bucket_cost:+.1%} (aim <= +10%)")
        say(
            f"saving a round: bucket {saves['bucket'] * 1000:.1f} ms, local folder {saves['local folder'] * 1000:.1f} "
            f"ms; the difference is {save_cost:+.1%} of a round ({per_round:.2f} s)"
        )
        record.update({"bucket_cost": bucket_cost, "bucket_aim": 0.10, "saves": saves})
    if out:
        with open(out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
