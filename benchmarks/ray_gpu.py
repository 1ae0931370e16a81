"""The product through Ray on a GPU (issue 27): a Ray Train trial and a packed Ray Tune suite.

    python -m benchmarks.ray_gpu [--smoke] [--out DIR] [--only run|suite]

Run by ``benchmarks/gpu_check.sh`` after the wheels are installed.  Nothing is downloaded:
the data are CIFAR-shaped arrays generated here (10 classes, uint8 3x32x32, each class a
random colour pattern plus noise, so a model learns them), read through the ``files``
dataset (docs/own-data.md).  Every run is its own ``python -m engine`` process, as a user
types it (``warmstart`` = ``python -m engine``).  Sections, each also in ``DIR/ray.json``
(rewritten after each):

run     one trial (resnet18 width 16, 1,000 + 1,000 per round, 3 rounds, random acquisition)
        with ``warmstart run --workers 1 --gpus-per-worker 1`` against the same trial
        in-process (``warmstart run``); the rows must agree as tests/trial/test_distributed.py
        asks of a Ray Train trial against in-process: the same columns, rounds and labelled
        counts, identical picks, test accuracy within 0.03 and epochs within 3 per round.
        Also recorded: the seconds of each and whether the rows are identical.
suite   8 such trials (seeds 0-7) by ``warmstart suite --trials-per-gpu 1`` and then ``4``
        (each into its own folder): trial-rounds per minute (the driver's own "finished in"
        seconds, Ray's start included), and every (trial, round) written exactly once.
        Target: 4 trials per GPU >= 2.5x the trial-rounds per minute of 1.

``--smoke`` runs the same code on a CPU at toy sizes (2 rounds, 2 trials, ``--workers 1``
without GPUs, ``--max-concurrent 1`` and ``2`` in place of ``--trials-per-gpu``, which
needs GPUs); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"four_per_gpu_over_one": 2.5, "test_acc_difference": 0.03, "epochs_difference": 3}


def make_data(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """CIFAR-shaped uint8 images: class c is pattern c (fixed random) blended with noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(10, 3, 32, 32))
    for name, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, size=n)
        x = 0.6 * patterns[y] + 0.4 * rng.integers(0, 256, size=(n, 3, 32, 32))
        np.savez(folder / f"{name}.npz", x=x.astype(np.uint8), y=y.astype(np.int64))


def trial_config(folder: Path, smoke: bool, device: str) -> str:
    initial, rounds, epochs = (60, 2, 2) if smoke else (1000, 3, 15)
    width = 4 if smoke else 16
    return textwrap.dedent(f"""\
        device: {device}
        dataset: {{name: files, train: {folder / "train.npz"}, test: {folder / "test.npz"}, eval: test}}
        model: {{name: resnet18, width: {width}}}
        init: {{name: shrink_perturb, shrink: 0.6, perturb: 0.01}}
        acquisition: {{name: random}}
        rounds: {{initial: {initial}, per_round: {initial}, max_rounds: {rounds}}}
        convergence: {{max_epochs: {epochs}}}
        """)


def engine(args: list[str], log_name: str) -> tuple[float, str]:
    """``python -m engine ARGS`` from the source tree; (wall seconds, its output).  The output
    is echoed line by line as it comes, so gpu_check.log keeps it even if the run is cut."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # + the installed wheels
    env = {**os.environ, "PYTHONPATH": path}
    print(f"$ warmstart {' '.join(args)}   # {log_name}", flush=True)
    began = time.perf_counter()
    lines = []
    with subprocess.Popen(
        [sys.executable, "-m", "engine", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        for line in process.stdout:
            lines.append(line)
            print(f"  {line}", end="", flush=True)
    seconds = time.perf_counter() - began
    print(f"  ({log_name}: {seconds:.1f} s, exit {process.returncode})", flush=True)
    if process.returncode != 0:
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        raise RuntimeError(f"{log_name}: exit {process.returncode}: {last}")
    return seconds, "".join(lines)


def compare(local, ray) -> dict:
    """Ray Train rows against in-process rows, by tests/trial/test_distributed.py's criteria."""
    local = local.sort_values("round").reset_index(drop=True)
    ray = ray.sort_values("round").reset_index(drop=True)
    same_rounds = ray["round"].tolist() == local["round"].tolist()
    acc = (ray["test_acc"] - local["test_acc"]).abs().max() if same_rounds else None
    epochs = (ray["epochs"] - local["epochs"]).abs().max() if same_rounds else None
    checks = {
        "same_columns": list(ray.columns) == list(local.columns),
        "same_rounds": same_rounds,
        "same_n_labeled": same_rounds and ray["n_labeled"].tolist() == local["n_labeled"].tolist(),
        "same_picks": same_rounds and [list(a) for a in ray["acquired"]] == [list(a) for a in local["acquired"]],
        "test_acc_within": acc is not None and acc <= TARGETS["test_acc_difference"],
        "epochs_within": epochs is not None and epochs <= TARGETS["epochs_difference"],
    }
    return {
        "rounds": ray["round"].tolist(),
        "n_labeled": ray["n_labeled"].tolist(),
        "test_acc_local": local["test_acc"].tolist(),
        "test_acc_ray": ray["test_acc"].tolist(),
        "epochs_local": local["epochs"].tolist(),
        "epochs_ray": ray["epochs"].tolist(),
        "max_test_acc_difference": None if acc is None else float(acc),
        "max_epochs_difference": None if epochs is None else int(epochs),
        "devices": sorted(set(ray["device"]) | set(local["device"])),
        "world_sizes": {"local": sorted(set(local["world_size"])), "ray": sorted(set(ray["world_size"]))},
        "performance_ray": ray["performance"].iloc[0],
        "identical_rows": bool(
            same_rounds
            and ray["test_acc"].tolist() == local["test_acc"].tolist()
            and ray["epochs"].tolist() == local["epochs"].tolist()
        ),
        "checks": checks,
        "ok": all(checks.values()),
        "criteria": "tests/trial/test_distributed.py: same columns, rounds, n_labeled and picks; "
        f"|test_acc difference| <= {TARGETS['test_acc_difference']}, |epochs difference| <= {TARGETS['epochs_difference']}",
    }


def run_section(work: Path, smoke: bool, device: str) -> dict:
    import pandas as pd

    config = work / "trial.yaml"
    gpus = "0" if smoke else "1"
    local_s, _ = engine(["run", "--config", str(config), "--out", str(work / "run_local"), "--quiet"], "in-process")
    ray_args = ["run", "--config", str(config), "--out", str(work / "run_ray"), "--quiet"]
    ray_s, _ = engine([*ray_args, "--workers", "1", "--gpus-per-worker", gpus], "Ray Train, 1 worker")
    result = compare(pd.read_parquet(work / "run_local"), pd.read_parquet(work / "run_ray"))
    result.update({"in_process_seconds": local_s, "ray_train_seconds": ray_s, "gpus_per_worker": float(gpus)})
    return result


def every_round_once(rows, trials: int, rounds: int) -> dict:
    """Each of ``trials`` trials has rounds 1..rounds, each exactly once."""
    per_trial = rows.groupby("trial_id")["round"].apply(sorted)
    duplicates = int(rows.duplicated(["trial_id", "round"]).sum())
    complete = len(per_trial) == trials and all(r == list(range(1, rounds + 1)) for r in per_trial)
    return {"trials": int(len(per_trial)), "rows": int(len(rows)), "duplicates": duplicates, "ok": complete}


def suite_section(work: Path, smoke: bool, packs: list[int]) -> dict:
    import pandas as pd

    trials, rounds = (2, 2) if smoke else (8, 3)
    base = textwrap.indent((work / "trial.yaml").read_text(), "  ")
    suite = work / "suite.yaml"
    suite.write_text(f"name: packed\nbase:\n{base}grid:\n  seed: {list(range(trials))}\n")
    runs = []
    for n in packs:
        out = work / f"suite_{n}"
        flag = ["--max-concurrent", str(n)] if smoke else ["--trials-per-gpu", str(n)]
        sets = [] if smoke else ["--set", "scaling.gpus_per_worker=1"]
        wall, stdout = engine(["suite", str(suite), "--out", str(out), *flag, *sets], f"{n} at once")
        finished = re.search(r"finished in (\d+)s", stdout)
        seconds = float(finished.group(1)) if finished else wall
        rows = pd.read_parquet(out)
        runs.append(
            {
                "at_once": n,
                "flag": flag[0],
                "suite_seconds": seconds,
                "wall_seconds": wall,
                "trial_rounds": len(rows),
                "trial_rounds_per_minute": len(rows) / (seconds / 60),
                "every_round_once": every_round_once(rows, trials, rounds),
            }
        )
    one = next((r["trial_rounds_per_minute"] for r in runs if r["at_once"] == 1), None)
    for r in runs:
        r["over_one"] = None if one is None else r["trial_rounds_per_minute"] / one
    four = next((r["over_one"] for r in runs if r["at_once"] == 4), None)
    return {
        "trials": trials,
        "rounds": rounds,
        "runs": runs,
        "four_over_one": four,
        "target_four_over_one": TARGETS["four_per_gpu_over_one"],
        "meets_target": None if four is None else four >= TARGETS["four_per_gpu_over_one"],
    }


def print_report(report: dict) -> None:
    print(f"\nthe product through Ray ({report['device']}{', smoke run' if report['smoke'] else ''})")
    run = report.get("run")
    if run:
        print(
            f"  warmstart run --workers 1 --gpus-per-worker {run['gpus_per_worker']:g}: {run['ray_train_seconds']:.1f} s, "
            f"in-process {run['in_process_seconds']:.1f} s; rows equal under test_distributed's criteria: "
            f"{'yes' if run['ok'] else 'NO ' + str(run['checks'])} (max |test_acc diff| {run['max_test_acc_difference']}, "
            f"max |epochs diff| {run['max_epochs_difference']}, identical: {run['identical_rows']})"
        )
    suite = report.get("suite")
    if suite:
        print(f"  suite of {suite['trials']} trials x {suite['rounds']} rounds: trial-rounds per minute")
        for r in suite["runs"]:
            over = "-" if r["over_one"] is None else f"{r['over_one']:.2f}x"
            once = "every (trial, round) once" if r["every_round_once"]["ok"] else f"NOT ONCE {r['every_round_once']}"
            print(
                f"    {r['flag']} {r['at_once']}: {r['suite_seconds']:.0f} s, {r['trial_rounds_per_minute']:.1f}/min, "
                f"{over} one; {once}"
            )
        if suite["four_over_one"] is not None:
            met = "ok" if suite["meets_target"] else "MISSED"
            print(
                f"    4 at once / 1: {suite['four_over_one']:.2f}x (target >= {suite['target_four_over_one']}x: {met})"
            )
    for name, error in report["errors"].items():
        print(f"  FAILED {name}: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on a CPU: checks the code, not the speed")
    parser.add_argument("--out", metavar="DIR", default=os.environ.get("OUT") or "gpu_check_out")
    parser.add_argument("--work", metavar="DIR", help="where data and results go, kept (default: a temporary folder)")
    parser.add_argument("--only", choices=["run", "suite"], help="one section")
    parser.add_argument("--packs", default="1,4", help="trials per GPU to measure (smoke: --max-concurrent)")
    args = parser.parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device: this section needs one (--smoke runs its code on a CPU)", file=sys.stderr)
        return 2
    device = "cpu" if args.smoke else "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="ray_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return measure(args, device, work, out)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def measure(args, device: str, work: Path, out: Path) -> int:
    import torch

    make_data(work, *((300, 100) if args.smoke else (8000, 2000)))
    (work / "trial.yaml").write_text(trial_config(work, args.smoke, device))
    report = {
        "smoke": args.smoke,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": (work / "trial.yaml").read_text(),
        "targets": TARGETS,
        "errors": {},
    }
    sections = {
        "run": lambda: run_section(work, args.smoke, device),
        "suite": lambda: suite_section(work, args.smoke, [int(p) for p in args.packs.split(",")]),
    }
    for name, section in sections.items():
        if args.only and name != args.only:
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        try:
            report[name] = section()
        except Exception as exc:  # one failed section must not cost the other
            report["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
        (out / "ray.json").write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
