"""ASHA against the full λ×σ grid: the compute a scheduler saves and the quality it keeps.

    python -m benchmarks.asha_vs_grid [--rounds 8] [--points 6] [--seeds 2] [--out FILE.json]

On ``digits`` with ``mlp`` and margin acquisition, the same suite runs twice on Ray Tune,
in this process, with the same concurrency: the whole ``points`` × ``points`` grid of
shrink λ (0.1 … 1, evenly spaced) × perturb σ (0.001 … 0.3, log-spaced) × ``seeds``
seeds, then under ASHA (``time_attr: round``, metric ``mean_test_acc``, the mean over
seeds; each Tune trial is one point with its seeds).  Reported:

- compute: total optimizer steps (the ``steps`` column, all rows) and wall seconds;
- regret: the full grid's best mean-over-rounds test accuracy (mean over seeds) minus
  that of the point ASHA chose (its best point that ran every round), both read from
  the full grid;
- the rank correlation (Spearman) of ASHA's order of the points (how far each got, then
  its metric there) with the full grid's order, and the full-grid ranks of the points
  ASHA let run to the end.

Target: ASHA at most 40% of the full grid's steps, regret within one seed standard
deviation (the std over seeds of the best point's mean-over-rounds accuracy).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

TARGETS = {"steps_fraction": 0.40, "regret_in_seed_std": 1.0}


def axes(points: int) -> tuple[list[float], list[float]]:
    """λ evenly spaced in [0.1, 1], σ log-spaced in [0.001, 0.3], ``points`` values each."""
    shrinks = [round(float(x), 4) for x in np.linspace(0.1, 1.0, points)]
    perturbs = [round(float(x), 6) for x in np.geomspace(0.001, 0.3, points)]
    return shrinks, perturbs


def suite_text(name: str, rounds: int, points: int, seeds: int, asha: dict | None, per_round: int = 100) -> str:
    shrinks, perturbs = axes(points)
    text = f"""name: {name}
base:
  dataset: {{name: digits}}
  model: {{name: mlp}}
  acquisition: {{name: margin}}
  init: {{name: shrink_perturb}}
  rounds: {{initial: {per_round}, per_round: {per_round}, max_rounds: {rounds}}}
grid:
  init.shrink: {shrinks}
  init.perturb: {perturbs}
  seed: {list(range(seeds))}
"""
    if asha:
        text += "search: " + json.dumps({"scheduler": "asha", "metric": "mean_test_acc", "time_attr": "round", **asha})
        text += "\n"
    return text


def point_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (λ, σ): the mean over seeds of each trial's mean-over-rounds test accuracy, its
    std over seeds, the rounds run and the steps spent."""
    per_trial = frame.groupby(["trial_id", "cfg.init.shrink", "cfg.init.perturb"], observed=True).agg(
        mean_test_acc=("test_acc", "mean"), rounds=("round", "max"), steps=("steps", "sum")
    )
    return (
        per_trial.reset_index()
        .groupby(["cfg.init.shrink", "cfg.init.perturb"])
        .agg(
            score=("mean_test_acc", "mean"),
            seed_std=("mean_test_acc", "std"),
            rounds=("rounds", "max"),
            steps=("steps", "sum"),
        )
        .reset_index()
        .rename(columns={"cfg.init.shrink": "shrink", "cfg.init.perturb": "perturb"})
    )


def spearman(a: list[float], b: list[float]) -> float:
    ranks = lambda x: pd.Series(x).rank().to_numpy()  # noqa: E731 - average ranks for ties
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def run_one(text: str, out: str, max_concurrent: int | None) -> tuple[pd.DataFrame, float, dict | None]:
    import warmstart as ws

    path = f"{out}.yaml"
    with open(path, "w") as f:
        f.write(text)
    began = time.perf_counter()
    frame = ws.run_suite(path, out, max_concurrent=max_concurrent)
    seconds = time.perf_counter() - began
    if frame.attrs["failed"]:
        raise SystemExit(f"{len(frame.attrs['failed'])} trial(s) failed: {frame.attrs['failed'][0]}")
    return frame, seconds, frame.attrs.get("search")


def compare(full: pd.DataFrame, asha: pd.DataFrame, rounds: int) -> dict:
    """Regret, rank correlation and the survivors' full-grid ranks (the module docstring)."""
    grid, tried = point_scores(full), point_scores(asha)
    grid = grid.sort_values("score", ascending=False).reset_index(drop=True)
    grid["full_rank"] = np.arange(1, len(grid) + 1)
    merged = tried.merge(grid, on=["shrink", "perturb"], suffixes=("_asha", ""))
    survivors = merged[merged["rounds_asha"] >= rounds]
    chosen = survivors.sort_values("score_asha", ascending=False).iloc[0]
    best = grid.iloc[0]
    # ASHA's order: further is better, then its metric at the last round it ran.
    asha_order = merged["rounds_asha"] * 10 + merged["score_asha"]
    return {
        "full_best": {"shrink": best["shrink"], "perturb": best["perturb"], "score": best["score"]},
        "asha_chosen": {
            "shrink": chosen["shrink"],
            "perturb": chosen["perturb"],
            "score_in_full_grid": chosen["score"],
            "full_rank": int(chosen["full_rank"]),
        },
        "regret": float(best["score"] - chosen["score"]),
        "seed_std": float(best["seed_std"]),
        "spearman_all_points": spearman(list(asha_order), list(merged["score"])),
        "survivors_full_ranks": sorted(int(r) for r in survivors["full_rank"]),
        "points_by_rounds_reached": {int(k): int(v) for k, v in merged["rounds_asha"].value_counts().items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--points", type=int, default=6, help="values per axis (points x points grid)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--results", metavar="DIR", help="keep the results here (default: a temporary folder)")
    parser.add_argument("--out", metavar="FILE.json")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    asha = {"grace_period": args.grace_period, "reduction_factor": args.reduction_factor}
    with tempfile.TemporaryDirectory() as tmp:
        where = args.results or tmp
        os.makedirs(where, exist_ok=True)
        full_text = suite_text("asha_vs_grid_full", args.rounds, args.points, args.seeds, None, args.per_round)
        asha_text = suite_text("asha_vs_grid_asha", args.rounds, args.points, args.seeds, asha, args.per_round)
        full, full_seconds, _ = run_one(full_text, f"{where}/full", args.max_concurrent)
        asha_frame, asha_seconds, record = run_one(asha_text, f"{where}/asha", args.max_concurrent)
    result = {
        "command": "python -m benchmarks.asha_vs_grid " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_cores": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "settings": {**vars(args), "max_t": args.rounds},
        "full": {"steps": int(full["steps"].sum()), "seconds": full_seconds, "rows": len(full)},
        "asha": {"steps": int(asha_frame["steps"].sum()), "seconds": asha_seconds, "rows": len(asha_frame)},
        **compare(full, asha_frame, args.rounds),
    }
    result["steps_fraction"] = result["asha"]["steps"] / result["full"]["steps"]
    result["seconds_fraction"] = asha_seconds / full_seconds
    result["meets_target"] = bool(
        result["steps_fraction"] <= TARGETS["steps_fraction"]
        and result["regret"] <= TARGETS["regret_in_seed_std"] * result["seed_std"]
    )
    result["stopped_by"] = sorted({p.get("stopped_by") or "" for p in (record or {}).get("points", {}).values()})
    print_table(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=float)
    return 0


def print_table(r: dict) -> None:
    out = io.StringIO()
    s = r["settings"]
    print(f"date          {r['date']}; {r['cpu_cores']} cores", file=out)
    print(f"load average  start {r['load_average_start']}, end {r['load_average_end']}", file=out)
    print(
        f"suite         digits, mlp, margin; {s['points']}x{s['points']} λ×σ x {s['seeds']} seeds, "
        f"{s['rounds']} rounds of {s['per_round']}; ASHA grace {s['grace_period']}, "
        f"reduction {s['reduction_factor']}; {s['max_concurrent']} trials at once",
        file=out,
    )
    print(f"{'run':<10} {'optimizer steps':>16} {'wall s':>8} {'rows':>6}", file=out)
    for name in ("full", "asha"):
        print(f"{name:<10} {r[name]['steps']:>16} {r[name]['seconds']:>8.1f} {r[name]['rows']:>6}", file=out)
    chosen, best = r["asha_chosen"], r["full_best"]
    print(
        f"ASHA / full: steps {r['steps_fraction']:.1%} (target <= {TARGETS['steps_fraction']:.0%}), "
        f"wall {r['seconds_fraction']:.1%}",
        file=out,
    )
    print(
        f"full grid best  λ={best['shrink']} σ={best['perturb']}: mean-over-rounds test_acc {best['score']:.4f} "
        f"(seed std {r['seed_std']:.4f})",
        file=out,
    )
    print(
        f"ASHA's choice   λ={chosen['shrink']} σ={chosen['perturb']}: {chosen['score_in_full_grid']:.4f} in the "
        f"full grid (its rank {chosen['full_rank']}); regret {r['regret']:.4f}",
        file=out,
    )
    print(
        f"Spearman (ASHA's order vs the full grid's, all points) {r['spearman_all_points']:.3f}; "
        f"survivors' full-grid ranks {r['survivors_full_ranks']}; points by rounds reached "
        f"{r['points_by_rounds_reached']}",
        file=out,
    )
    print(f"verdict       {'meets the target' if r['meets_target'] else 'MISSES the target'}", file=out)
    print(out.getvalue(), end="")


if __name__ == "__main__":
    raise SystemExit(main())
