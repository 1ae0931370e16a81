"""What Ray costs a trial, and what data parallelism buys per epoch.

    python -m benchmarks.ray_overhead [--rounds 6] [--epochs 2] [--out FILE.json]

(a) The same small trial (digits, mlp, ``--rounds`` rounds) in-process and as a Ray
    Train run with one worker, in one process, one after the other:
    - start-up: Ray Train's whole-trial wall time minus the in-process one, split into
      ``ray.init`` and the rest (worker group start, data loading in the worker);
    - per-round overhead: the time between the first and last round's rows landing,
      Ray minus in-process, divided by the rounds in between (should be near zero: the
      worker group lives for the whole trial).
(b) Seconds per training epoch of resnet18 (width 16) on CIFAR-sized random tensors
    with 2 Ray Train workers against 1 (gloo on CPU, one thread per worker, as Ray
    gives each worker one CPU), and in-process with all threads for reference.

Every figure goes to the JSON file; the table says the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

from benchmarks.round_vs_plain import machine as machine_info
from engine.schema.config import build
from engine.trial.distributed import init_ray, run_trial_on_ray
from engine.trial.driver import Driver
from engine.trial.session import start_trial
from engine.trial.setup import resolve_device


def machine() -> str:
    """The machine in one line (the details come from round_vs_plain's probe)."""
    info = machine_info([torch.device("cpu")])
    return f"{info['cpu_model']}, {info['cpu_cores']} cores, torch {info['torch']}"


def row_times(out: str, trial_id: str) -> list[float]:
    """When each round's row landed (file modification times), in round order."""
    files = sorted(p for p in os.listdir(out) if p.startswith(trial_id) and p.endswith(".parquet"))
    return [os.path.getmtime(os.path.join(out, p)) for p in files]


def trial_overhead(rounds: int) -> dict:
    sets = [f"rounds.max_rounds={rounds}", "rounds.initial=100", "rounds.per_round=100"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build(None, sets)
        began = time.perf_counter()
        with Driver([start_trial(cfg, f"{tmp}/local", device=resolve_device("cpu"))]) as driver:
            driver.run()
        local_total = time.perf_counter() - began
        local_times = row_times(f"{tmp}/local", cfg.trial_id())

        began = time.perf_counter()
        init_ray(None)
        ray_init = time.perf_counter() - began
        ray_cfg = build(None, [*sets, "scaling.workers=1"])
        began = time.perf_counter()
        run_trial_on_ray(ray_cfg, f"{tmp}/ray")
        ray_total = time.perf_counter() - began
        ray_times = row_times(f"{tmp}/ray", ray_cfg.trial_id())

    local_span = local_times[-1] - local_times[0]
    ray_span = ray_times[-1] - ray_times[0]
    return {
        "rounds": rounds,
        "in_process_seconds": local_total,
        "ray_init_seconds": ray_init,
        "ray_trial_seconds": ray_total,
        "startup_seconds": ray_init + ray_total - local_total - (ray_span - local_span),
        "per_round_overhead_seconds": (ray_span - local_span) / (rounds - 1),
        "in_process_round_seconds": local_span / (rounds - 1),
    }


def _epoch_worker(config: dict) -> None:
    import torch.distributed as dist

    from engine.trial.distributed import TorchComm

    result = _time_epochs(TorchComm(torch.device("cpu")), config["n"], config["epochs"])
    if dist.get_rank() == 0:
        with open(config["path"], "w") as f:
            json.dump(result, f)


def _time_epochs(comm, n: int, epochs: int) -> dict:
    from engine.compute.models import resnet18
    from engine.compute.train import fit

    torch.manual_seed(0)
    model = resnet18((3, 32, 32), 10, width=16)
    x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    warmup = SimpleNamespace(train_acc=1.0, patience=None, min_delta=0.0, max_epochs=1)
    fit(model, x, y, optimizer, 128, warmup, seed=0, comm=comm)  # first-epoch allocations
    timed = SimpleNamespace(train_acc=1.0, patience=None, min_delta=0.0, max_epochs=epochs)
    began = time.perf_counter()
    stats = fit(model, x, y, optimizer, 128, timed, seed=1, comm=comm)
    return {"seconds_per_epoch": (time.perf_counter() - began) / stats.epochs, "threads": torch.get_num_threads()}


def epoch_scaling(n: int, epochs: int) -> dict:
    import ray.cloudpickle
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from engine.compute.train import LOCAL

    if __name__ != "__main__":  # imported: workers cannot import benchmarks/, ship the code
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    results = {"in_process_all_threads": _time_epochs(LOCAL, n, epochs)}
    init_ray(None)
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            path = f"{tmp}/w{workers}.json"
            config = {"n": n, "epochs": epochs, "path": path}
            TorchTrainer(
                _epoch_worker, train_loop_config=config, scaling_config=ScalingConfig(num_workers=workers)
            ).fit()
            with open(path) as f:
                results[f"ray_{workers}_workers"] = json.load(f)
    one, two = results["ray_1_workers"]["seconds_per_epoch"], results["ray_2_workers"]["seconds_per_epoch"]
    results["speedup_2_over_1"] = one / two
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--samples", type=int, default=2048, help="CIFAR-sized samples for (b)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", metavar="FILE.json")
    args = parser.parse_args()

    overhead = trial_overhead(args.rounds)
    scaling = epoch_scaling(args.samples, args.epochs)
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d')}")
    print(f"(a) one small trial, {args.rounds} rounds (digits, mlp), Ray Train 1 worker vs in-process")
    print(f"    in-process trial            {overhead['in_process_seconds']:8.2f} s")
    print(f"    ray.init                    {overhead['ray_init_seconds']:8.2f} s")
    print(f"    Ray Train trial             {overhead['ray_trial_seconds']:8.2f} s")
    print(f"    fixed start-up cost         {overhead['startup_seconds']:8.2f} s")
    print(
        f"    per-round overhead          {overhead['per_round_overhead_seconds']:8.3f} s"
        f"  (in-process round: {overhead['in_process_round_seconds']:.3f} s)"
    )
    print(f"(b) resnet18 width 16, {args.samples} samples of 3x32x32, batch 128: seconds per epoch")
    for name in ("in_process_all_threads", "ray_1_workers", "ray_2_workers"):
        r = scaling[name]
        print(f"    {name:<26} {r['seconds_per_epoch']:8.2f} s  ({r['threads']} threads per process)")
    print(f"    speed-up, 2 workers over 1  {scaling['speedup_2_over_1']:8.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine(), "trial_overhead": overhead, "epoch_scaling": scaling}, f, indent=2)


if __name__ == "__main__":
    main()
