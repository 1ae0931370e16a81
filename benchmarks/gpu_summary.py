"""The GPU check's figures against their targets, in one table (issue 27).

    python -m benchmarks.gpu_summary --out DIR [--section NAME:EXIT:SECONDS:LIMIT ...]

Run by ``benchmarks/gpu_check.sh`` after every section: reads what the sections wrote
under DIR (``gpu_check.json``, ``ray.json``, ``cluster.json``), writes ``DIR/summary.json``
(each section's exit status, seconds and time limit; each figure with its target and
whether it was met) and prints the table.  A section that did not run or was cut short
shows as such; its figures are simply absent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def figures(out: Path) -> list[dict]:
    rows = []

    def add(section: str, figure: str, value, target: str | None, met) -> None:
        rows.append({"section": section, "figure": figure, "value": value, "target": target, "met": met})

    table = _read(out / "gpu_check.json")
    if table:
        targets = table.get("targets", {})
        for case in table.get("steps", []):
            runs = case["runs"]
            for name, r in runs.items():
                add("table", f"steps {case['case']} {name} images/s", round(r["images_per_s"]), None, None)
            ratio = case.get("engine_over_bare_graphed")
            if ratio is not None:
                limit = targets.get("engine_over_bare_graphed", 1.1)
                add(
                    "table",
                    f"steps {case['case']} engine graphed / bare graphed ms",
                    ratio,
                    f"<= {limit}",
                    ratio <= limit,
                )
            graphed = [runs[k]["images_per_s"] for k in ("engine auto", "engine graphs") if k in runs]
            if case["model"] == "resnet18" and graphed:
                floor = targets.get("resnet18_images_per_s", 40_000)
                add(
                    "table",
                    f"steps {case['case']} best engine images/s",
                    round(max(graphed)),
                    f">= {floor}",
                    max(graphed) >= floor,
                )
            speedup = case.get("graphs_over_eager_steps_per_s")
            if case["model"] == "mlp" and speedup is not None:
                floor = targets.get("mlp_graph_over_eager", 3.0)
                add("table", "steps mlp engine graphed / eager steps/s", speedup, f">= {floor}", speedup >= floor)
        for r in table.get("same") or []:
            add(
                "table",
                f"same {r['options']}: graphed = eager",
                r["max_rel_param_difference"],
                f"<= {10 * r['tolerance']} (params), 1 capture",
                r["ok"],
            )
        for r in (table.get("scoring") or {}).get("margin", []):
            add("table", f"scoring margin {r['model']} engine / bare", r["ratio"], ">= 0.9", r["meets_target"])
        strategies = (table.get("scoring") or {}).get("strategies", {})
        if strategies:
            same = all(r["same_picks"] for r in strategies.values())
            add("table", "scoring built-ins: picks on the device = on the CPU", same, "all", same)
        packing = table.get("packing")
        for r in (packing or {}).get("runs", []):
            target, met = None, None
            if r["concurrent"] == 4:
                target, met = f">= {packing['target_four_over_one']}", packing["meets_target"]
            add(
                "table",
                f"packing {r['concurrent']} trials at once / 1, trial-rounds per GPU-minute",
                r["speedup_over_one"],
                target,
                met,
            )
    ray = _read(out / "ray.json")
    if ray:
        run = ray.get("run")
        if run:
            label = f"warmstart run --workers 1 --gpus-per-worker {run['gpus_per_worker']:g}: seconds"
            add("ray", label, run["ray_train_seconds"], None, None)
            add(
                "ray",
                "Ray Train rows = in-process rows (test_distributed's criteria)",
                run["max_test_acc_difference"],
                "<= 0.03 test_acc, same picks",
                run["ok"],
            )
        suite = ray.get("suite")
        if suite:
            for r in suite["runs"]:
                once = r["every_round_once"]["ok"]
                add(
                    "ray",
                    f"suite {r['flag']} {r['at_once']}: trial-rounds/min",
                    r["trial_rounds_per_minute"],
                    "every (trial, round) once",
                    once,
                )
            if suite["four_over_one"] is not None:
                add(
                    "ray",
                    "suite 4 trials per GPU / 1",
                    suite["four_over_one"],
                    f">= {suite['target_four_over_one']}",
                    suite["meets_target"],
                )
    cluster = _read(out / "cluster.json")
    if cluster:
        for n, ratio in cluster.get("scaling", {}).items():
            aim = cluster["aims"].get(str(n))
            met = cluster.get("meets_aims", {}).get(str(n))
            add("cluster", f"{n} nodes / 1 node, trials per hour", ratio, None if aim is None else f">= {aim}", met)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--section", action="append", default=[], metavar="NAME:EXIT:SECONDS:LIMIT")
    parser.add_argument("--quiet", action="store_true", help="write summary.json only")
    args = parser.parse_args(argv)
    sections = []
    for item in args.section:
        name, code, seconds, limit = item.split(":")
        status = "ok" if code == "0" else "cut at its time limit" if code in ("124", "137") else f"exit {code}"
        if code == "skip":
            status = "skipped"
        sections.append({"section": name, "status": status, "seconds": float(seconds), "limit_seconds": float(limit)})
    rows = figures(args.out)
    (args.out / "summary.json").write_text(json.dumps({"sections": sections, "figures": rows}, indent=2))
    if args.quiet:
        return 0
    print("\nsummary (every figure with its target; summary.json)")
    for s in sections:
        print(f"  section {s['section']:<10} {s['status']:<24} {s['seconds']:6.0f} s of {s['limit_seconds']:.0f}")
    for r in rows:
        value = r["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        verdict = "" if r["met"] is None else ("ok" if r["met"] else "MISSED")
        target = f"(target {r['target']})" if r["target"] else ""
        print(f"  {r['section']:<8} {r['figure']:<58} {shown:>10} {target} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
