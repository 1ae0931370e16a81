"""Ensembles (issue 20): a suite's trials stacked into one vmapped model, against the same
trials one by one.

    python -m benchmarks.ensemble [--sections suite in_process profile scoring] [--seeds 0] [--rounds 4]
                                  [--repeats 1] [--out FILE]
    python -m benchmarks.ensemble --gpu [--smoke] [--out DIR]

CPU (default: suite, in_process, scoring; ``profile`` when named), each arm on the same
trials and seeds:

suite      ``mnist1d_sp_sweep`` cut to ``--seeds`` and ``--rounds`` (default: seed 0, 4 rounds:
           11 trials), run by ``run_suite`` (Ray Tune, one CPU per Tune trial) with
           ``performance.ensemble`` false and true, the arms interleaved (off, on, on, off, ...
           with ``--repeats``): wall seconds, their ratio, and member optimizer steps per
           second (a stacked step of M members counts M steps: equal work on both sides).
in_process the mlp and cnn1d: the same members run one by one (``start_trial``) and as one
           the round driver's ``STACKED`` backend, in this process, one thread, interleaved: the compute alone, no Tune.
profile    the cut sweep's trials as one stacked ensemble in this process (one thread, results
           written to a temporary folder, as in a Tune trial): cProfile's shares of the run
           (opening the members, training and its forward/backward/optimizer, evaluation,
           scoring, saving rows and checkpoints) and how full the stack stays (member epochs
           over stack epochs x members: below 1 when fast members have converged and left).
scoring    the stacked margin-scoring pass (``pool_outputs_stacked``) against a bare
           vmapped forward over the same gathered inputs (target: >= 0.9).

``--gpu``: the stacked training step of resnet18 (width 16, CIFAR-sized random data) and
the mlp at 8, 32 and 128 members against one trial (the engine's ``fit`` with the GPU's
``auto`` options: bf16, CUDA graphs), images per second; a few seconds per configuration.
Writes ``DIR/ensemble.json`` (``$OUT`` by default); run by ``benchmarks/gpu_check.sh``.
Machine load (``os.getloadavg``) is recorded next to every CPU figure, and the CPU sections
end with their figures as the markdown tables of benchmarks/README.md ("Ensembles").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

SWEEP = "mnist1d_sp_sweep"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- CPU: the suite, both arms ------------------------------------------------------------


def suite_arm(ensemble: bool, seeds: list[int], rounds: int, out: str) -> dict:
    """One run of the cut sweep; wall seconds and member steps."""
    import pandas as pd

    from engine.suite.options import SuiteOptions, check_suite
    from engine.suite.suite_file import load_suite
    from engine.suite.tune import run_suite

    sets = [f"performance.ensemble={str(ensemble).lower()}", f"rounds.max_rounds={rounds}"]
    suite = load_suite(SWEEP, sets=sets)
    suite = replace(suite, trials=tuple(t for t in suite.trials if t.config.seed in seeds))
    began_load = load()
    began = time.perf_counter()
    failed = run_suite(check_suite(suite, SuiteOptions.build(SWEEP, out)), stream=open(os.devnull, "w"))
    wall = time.perf_counter() - began
    if failed:
        raise RuntimeError(f"{len(failed)} trial(s) failed: {failed[0][1]}")
    table = pd.read_parquet(out)
    return {
        "ensemble": ensemble,
        "trials": len(suite.trials),
        "ensembles": int(table["ensemble"].nunique()),
        "rows": len(table),
        "wall_seconds": round(wall, 2),
        "member_steps": int(table["steps"].sum()),
        "steps_per_second": round(table["steps"].sum() / wall, 1),
        "final_test_acc": round(float(table[table["round"] == table["round"].max()]["test_acc"].mean()), 4),
        "load_before": began_load,
        "load_after": load(),
    }


def suite_section(seeds: list[int], rounds: int, repeats: int) -> dict:
    from engine.trial.distributed import init_ray

    init_ray(None)
    arms: dict[bool, list[dict]] = {False: [], True: []}
    order = [arm for r in range(repeats) for arm in ((False, True) if r % 2 == 0 else (True, False))]  # ABBA
    with tempfile.TemporaryDirectory() as tmp:
        for i, ensemble in enumerate(order):
            arm = suite_arm(ensemble, seeds, rounds, f"{tmp}/{i}")
            arms[ensemble].append(arm)
            print(json.dumps(arm), flush=True)
    off = statistics.median(a["wall_seconds"] for a in arms[False])
    on = statistics.median(a["wall_seconds"] for a in arms[True])
    return {
        "suite": SWEEP,
        "seeds": seeds,
        "rounds": rounds,
        "runs": arms[False] + arms[True],
        "speedup": round(off / on, 2),
        "steps_per_second_off": statistics.median(a["steps_per_second"] for a in arms[False]),
        "steps_per_second_on": statistics.median(a["steps_per_second"] for a in arms[True]),
    }


# --- CPU: the compute alone, in this process ------------------------------------------------


def in_process(model: dict, members: int, rounds: int, repeats: int) -> dict:
    from engine.schema.config import build
    from engine.trial.driver import STACKED, Driver
    from engine.trial.session import start_trial
    from engine.trial.stacked import start_members

    base = {
        "dataset": {"name": "mnist1d", "size": 10000, "eval": "test"},
        "model": model,
        "device": "cpu",
        "rounds": {"initial": 1000, "per_round": 1000, "max_rounds": rounds},
        "convergence": {"train_acc": 0.99, "max_epochs": 150},
    }
    inits = [{"name": "random"}, {"name": "warm"}] + [
        {"name": "shrink_perturb", "shrink": shrink, "perturb": perturb}
        for shrink in (0.3, 0.6, 0.8)
        for perturb in (0.001, 0.01, 0.1)
    ]
    cfgs = [build({**base, "init": inits[i % len(inits)], "seed": i // len(inits)}) for i in range(members)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"alone": [], "stacked": []}
    steps = {}
    try:
        for r in range(repeats):
            for arm in ("alone", "stacked") if r % 2 == 0 else ("stacked", "alone"):
                began = time.perf_counter()
                if arm == "alone":
                    rows = [row for cfg in cfgs for row in Driver([start_trial(cfg, None)]).run()]
                else:
                    rows = Driver(start_members(cfgs, None, "bench"), STACKED).run()
                times[arm].append(time.perf_counter() - began)
                steps[arm] = sum(row["steps"] for row in rows)
    finally:
        torch.set_num_threads(threads)
    alone, stacked = statistics.median(times["alone"]), statistics.median(times["stacked"])
    result = {
        "model": model["name"],
        "members": members,
        "rounds": rounds,
        "alone_seconds": [round(t, 2) for t in times["alone"]],
        "stacked_seconds": [round(t, 2) for t in times["stacked"]],
        "speedup": round(alone / stacked, 2),
        "steps_per_second_alone": round(steps["alone"] / alone, 1),
        "steps_per_second_stacked": round(steps["stacked"] / stacked, 1),
        "load": load(),
    }
    print(json.dumps(result), flush=True)
    return result


def scoring_section(members: int, pool: int, repeats: int, device: torch.device) -> dict:
    """Stacked margin scoring against a bare vmapped forward of the same gathered inputs."""
    from torch.func import functional_call, vmap

    from engine.compute.models import build_model
    from engine.compute.stacked import Stack, member_batch, pool_outputs_stacked

    shape = (40,)
    models = [build_model("mlp", {"width": 100, "depth": 2, "activation": "relu"}, shape, 10) for _ in range(members)]
    models = [m.to(device) for m in models]
    x = torch.randn(pool, *shape, device=device)
    positions = torch.stack([torch.randperm(pool, device=device)[: pool * 2 // 3] for _ in range(members)])
    batch = member_batch(1024, members)  # as the engine scores

    def scored():
        pool_outputs_stacked(models, x, positions, ("probs",), batch)

    stack = Stack(models).train(False)

    def bare():
        def one(p, b, xb):
            return functional_call(stack.base, (p, b), (xb,))

        with torch.inference_mode():
            for start in range(0, positions.shape[1], batch):
                vmap(one)(stack.params, stack.buffers, x[positions[:, start : start + batch]])

    def timed(fn) -> float:
        fn()
        best = []
        for _ in range(repeats):
            began = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best.append(time.perf_counter() - began)
        return min(best)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # interleaved: bare, scored, bare, scored
        bare_s, scored_s = min(timed(bare), timed(bare)), min(timed(scored), timed(scored))
    finally:
        torch.set_num_threads(threads)
    result = {
        "members": members,
        "pool": pool,
        "bare_seconds": round(bare_s, 4),
        "scoring_seconds": round(scored_s, 4),
        "scoring_over_bare": round(bare_s / scored_s, 3),
        "target": 0.9,
        "load": load(),
    }
    print(json.dumps(result), flush=True)
    return result


# --- CPU: where a stacked ensemble's time goes ---------------------------------------------

# (share, function name, file suffix): cumulative seconds of these functions under cProfile
PHASES = [
    ("open members (data, stores)", "start_members", "engine/trial/stacked.py"),
    ("train (fit_stacked)", "fit_stacked", "engine/compute/stacked.py"),
    ("train: forward", "forward", "engine/compute/stacked.py"),
    ("train: backward", "backward", "torch/_tensor.py"),
    ("train: optimizer step", "step", "torch/optim/adam.py"),
    ("train: loss", "cross_entropy", "torch/nn/functional.py"),
    ("train: first use of torch._dynamo (import)", "<module>", "torch/_dynamo/__init__.py"),
    ("evaluate (evaluate_round)", "evaluate_round", "engine/trial/loop.py"),
    ("score the pool (stacked)", "_score", "engine/trial/stacked.py"),
    ("select and init (start_round)", "start_round", "engine/trial/loop.py"),
    ("save rows, checkpoints, status", "save_round", "engine/trial/resume.py"),
    ("save: first use of pandas (import)", "<module>", "pandas/__init__.py"),
]


def profile_section(seeds: list[int], rounds: int) -> dict:
    """One stacked ensemble of the cut sweep's trials, in this process, one thread, under cProfile."""
    import cProfile
    import pstats

    from engine.suite.suite_file import load_suite
    from engine.trial.driver import STACKED, Driver
    from engine.trial.stacked import start_members

    suite = load_suite(SWEEP, sets=["performance.ensemble=true", f"rounds.max_rounds={rounds}"])
    cfgs = [t.config for t in suite.trials if t.config.seed in seeds]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    profiler = cProfile.Profile()
    began_load = load()
    try:
        with tempfile.TemporaryDirectory() as out:
            began = time.perf_counter()
            profiler.enable()
            rows = Driver(start_members(cfgs, out, "profile"), STACKED).run()
            profiler.disable()
            wall = time.perf_counter() - began
    finally:
        torch.set_num_threads(threads)
    stats = pstats.Stats(profiler).stats
    cumulative: dict[tuple[str, str], float] = {}
    for (file, _, name), (_, _, _, cum, _) in stats.items():
        for _, fn, suffix in PHASES:
            if name == fn and file.replace("\\", "/").endswith(suffix):
                cumulative[(fn, suffix)] = max(cumulative.get((fn, suffix), 0.0), cum)
    shares = [
        {"part": part, "seconds": round(seconds, 2), "share": round(seconds / wall, 3)}
        for part, fn, suffix in PHASES
        for seconds in [cumulative.get((fn, suffix), 0.0)]
    ]
    return {
        "members": len(cfgs),
        "rounds": rounds,
        "wall_seconds": round(wall, 2),
        "shares": shares,
        "stack_fill": stack_fill(rows),
        "load_before": began_load,
        "load_after": load(),
    }


def stack_fill(rows: list[dict]) -> dict:
    """Per round, member epochs over (the longest member's epochs x members), weighted by
    batches per epoch: 1.0 when every member trains as long as the slowest."""
    by_round: dict[int, list[dict]] = {}
    for row in rows:
        by_round.setdefault(row["round"], []).append(row)
    fill, work, full = {}, 0.0, 0.0
    for round_, members in sorted(by_round.items()):
        epochs = [row["epochs"] for row in members]
        fill[round_] = round(sum(epochs) / (max(epochs) * len(epochs)), 3)
        size = members[0]["n_labeled"]  # samples per epoch: batches per epoch in proportion
        work += sum(epochs) * size
        full += max(epochs) * len(epochs) * size
    return {"by_round": fill, "overall": round(work / full, 3)}


# --- GPU --------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_case(name: str, params: dict, shape: tuple, members: int, n: int, epochs: int, device) -> dict:
    """Images per second of ``members`` stacked trials and of one trial (engine ``fit``, auto
    options) on ``n`` samples each for ``epochs`` epochs (after one warm-up epoch)."""
    from engine.compute.models import build_model
    from engine.compute.stacked import MemberBatches, fit_stacked
    from engine.compute.train import OptimizerSpec, StepRunner, fit, resolve_performance
    from engine.schema.config import DEFAULTS

    conv = name != "mlp"
    performance = resolve_performance(DEFAULTS["performance"], device, conv, 1024)
    spec = OptimizerSpec("adam", 1e-3)
    pool = max(n * 2, 1024)
    x = torch.randn(pool, *shape, device=device)
    y = torch.randint(0, 10, (pool,), device=device)
    never = SimpleNamespace(train_acc=2.0, patience=None, min_delta=0.0, max_epochs=epochs)
    warm = SimpleNamespace(**{**vars(never), "max_epochs": 1})

    def models(count: int):
        return [build_model(name, params, shape, 10).to(device) for _ in range(count)]

    # one trial: the engine's own step (CUDA graphs under auto)
    runner = StepRunner(spec, performance)
    one = models(1)[0]
    xs, ys = x[:n], y[:n]
    fit(one, xs, ys, None, 128, warm, 0, runner=runner)
    sync(device)
    began = time.perf_counter()
    fit(one, xs, ys, None, 128, never, 1, runner=runner)
    sync(device)
    alone = n * epochs / (time.perf_counter() - began)

    stacked_perf = performance  # autocast and fused Adam as the trial; the stack runs eagerly
    positions = torch.stack([torch.randperm(pool, device=device)[:n].sort().values for _ in range(members)])
    batches = MemberBatches(x, y, positions, list(range(members)))
    fit_stacked(models(members), batches, spec, 128, [warm] * members, stacked_perf)
    sync(device)
    ensemble = models(members)
    began = time.perf_counter()
    fit_stacked(ensemble, batches, spec, 128, [never] * members, stacked_perf)
    sync(device)
    stacked = members * n * epochs / (time.perf_counter() - began)
    result = {
        "model": name,
        "members": members,
        "images_per_s_one_trial": round(alone),
        "images_per_s_stacked": round(stacked),
        "stacked_over_one": round(stacked / alone, 2),
    }
    print(json.dumps(result), flush=True)
    return result


def gpu_section(out: Path, smoke: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not smoke:
        raise SystemExit("--gpu needs a CUDA device (or --smoke for the same code at toy sizes on a CPU)")
    sizes = (2, 3) if smoke else (8, 32, 128)
    n, epochs = (128, 1) if smoke else (512, 2)
    side = 8 if smoke else 32  # CIFAR-sized on a GPU
    cases = [
        ("mlp", {"width": 100, "depth": 3, "activation": "tanh"}, (3, side, side)),
        ("resnet18", {"width": 16}, (3, side, side)),
    ]
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "smoke": smoke, "cases": []}
    out.mkdir(parents=True, exist_ok=True)
    for name, params, shape in cases:
        for members in sizes:
            try:
                report["cases"].append(gpu_case(name, params, shape, members, n, epochs, device))
            except Exception as exc:  # out of memory, or a kernel the GPU lacks: the other cases still run
                line = (str(exc).splitlines() or [""])[0][:200]
                report["cases"].append({"model": name, "members": members, "error": f"{type(exc).__name__}: {line}"})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            (out / "ensemble.json").write_text(json.dumps(report, indent=1))
    print_gpu(report)
    return report


def print_gpu(report: dict) -> None:
    print(f"\nensembles on {report['device']}: images/s, stacked members against one trial (engine fit, auto)")
    print(f"{'model':10} {'members':>7} {'one trial':>10} {'stacked':>10} {'ratio':>6}")
    for c in report["cases"]:
        if "images_per_s_stacked" in c:
            print(
                f"{c['model']:10} {c['members']:>7} {c['images_per_s_one_trial']:>10} "
                f"{c['images_per_s_stacked']:>10} {c['stacked_over_one']:>6}"
            )
        else:
            print(f"{c['model']:10} {c['members']:>7} {c.get('error') or c.get('skipped')}")


def print_cpu(report: dict) -> None:
    """The CPU sections' figures as benchmarks/README.md's tables."""
    if "suite" in report:
        suite = report["suite"]
        print(
            f"\n{suite['suite']} cut to seeds {suite['seeds']}, {suite['rounds']} rounds, on Ray Tune ({report['cpus']} CPUs)"
        )
        print("| run | arm | wall s | member steps/s | final test acc (mean) | load average before → after |")
        print("| --- | --- | ---: | ---: | ---: | --- |")
        runs = {False: 0, True: 0}
        for arm in suite["runs"]:
            runs[arm["ensemble"]] += 1
            name = f"on ({arm['ensembles']} ensembles)" if arm["ensemble"] else "off (trials alone)"
            print(
                f"| {runs[arm['ensemble']]} | {name} | {arm['wall_seconds']} | {arm['steps_per_second']} | "
                f"{arm['final_test_acc']} | {arm['load_before'][0]} → {arm['load_after'][0]} |"
            )
        print(f"stacked / alone, median wall: {suite['speedup']}x (aim >= 2.5x on a quiet machine)")
    if "in_process" in report:
        print("\n| model | members | alone s | stacked s | speedup | member steps/s alone → stacked | load |")
        print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
        for r in report["in_process"]:
            print(
                f"| {r['model']} | {r['members']} | {statistics.median(r['alone_seconds'])} | "
                f"{statistics.median(r['stacked_seconds'])} | {r['speedup']}x | "
                f"{r['steps_per_second_alone']} → {r['steps_per_second_stacked']} | {r['load'][0]} |"
            )
    if "profile" in report:
        p = report["profile"]
        print(
            f"\none stacked ensemble of {p['members']} members, {p['rounds']} rounds, in process: {p['wall_seconds']} s"
        )
        print("| part | seconds | share |")
        print("| --- | ---: | ---: |")
        for part in p["shares"]:
            print(f"| {part['part']} | {part['seconds']} | {part['share']:.1%} |")
        fill = p["stack_fill"]
        print(f"stack fill (member epochs / stack epochs x members): {fill['overall']} (by round {fill['by_round']})")
        print(f"load {p['load_before']} → {p['load_after']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each arm, interleaved")
    parser.add_argument("--sections", nargs="+", default=["suite", "in_process", "scoring"])
    parser.add_argument("--gpu", action="store_true", help="the GPU section only (benchmarks/gpu_check.sh)")
    parser.add_argument("--smoke", action="store_true", help="with --gpu: toy sizes, any machine")
    parser.add_argument("--out", default=None, help="a JSON file (CPU) or a folder (--gpu; default $OUT)")
    args = parser.parse_args(argv)
    if args.gpu:
        gpu_section(Path(args.out or os.environ.get("OUT") or "gpu_check_out"), args.smoke)
        return 0
    report = {"command": " ".join(["python -m benchmarks.ensemble", *(argv or sys.argv[1:])]), "cpus": os.cpu_count()}
    if "in_process" in args.sections:
        report["in_process"] = [
            in_process({"name": "mlp", "activation": "relu", "width": 100, "depth": 2}, 11, 1, args.repeats),
            in_process({"name": "cnn1d"}, 4, 1, args.repeats),
        ]
    if "profile" in args.sections:
        report["profile"] = profile_section(args.seeds, args.rounds)
        print(json.dumps(report["profile"]), flush=True)
    if "scoring" in args.sections:
        report["scoring"] = scoring_section(11, 8000, 5, torch.device("cpu"))
    if "suite" in args.sections:
        report["suite"] = suite_section(args.seeds, args.rounds, args.repeats)
        print(json.dumps({k: v for k, v in report["suite"].items() if k != "runs"}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print_cpu(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
