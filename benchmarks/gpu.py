"""The GPU check: is a trial's step cheap for the host, and does acquisition stay on the GPU?

    python -m benchmarks.gpu [--smoke] [--device cuda|cpu] [--out DIR] [--skip-packing]

Run by ``benchmarks/gpu_check.sh`` (its first section: no Ray needed).  Sections, each
also in ``DIR/gpu_check.json``:

steps      resnet18 width 64, width 16 and the mlp (CIFAR-sized random data, batch 128,
           Adam 1e-3): ms per step and images/s of a bare eager loop (fp32), a bare loop
           captured as one CUDA graph (fp32, ``torch.cuda.CUDAGraph``), optionally the bare
           loop through ``torch.compile(mode="reduce-overhead")`` (``--compile``), and the
           engine's ``fit`` with the option sets: ``plain`` (fp32 eager), ``graphs``
           (fp32, ``performance.cuda_graphs``), ``auto-graphs`` (bf16, channels_last,
           fused: the GPU default before graphs) and ``auto`` (the same with graphs: the
           default now).  The engine's graphed step runs through one StepRunner per option
           set, as a trial does: the first call captures (its seconds are the capture
           seconds), later calls copy a model in and replay.  Targets on an H100/H200:
           resnet18 >= 40k images/s at widths 64 and 16, the mlp >= 3x the eager steps
           per second, the engine's graphed step within 1.1x of the bare graphed loop.
same       the graphed engine against the eager engine over 3 rounds of a growing
           training set through one StepRunner: the losses and parameters agree (fp32
           within 1e-3 relative, bf16 within 2e-2) and the graph is captured once.
scoring    margin acquisition on the device / a bare gather+forward (benchmarks.perf's
           scoring section, at its GPU sizes); and every built-in strategy's picks from
           outputs on the GPU against the same outputs on the CPU.
packing    benchmarks.packing: trial-rounds per GPU-minute of a 16-trial digits/resnet18
           λ×σ grid (6 rounds each, at most 100 epochs a round; ``--packing-trials``,
           ``--packing-rounds``) at 1, 2, 4 and 8 (``--packs``)
           concurrent trials (processes); writes the packing
           table ``warmstart suite --trials-per-gpu auto`` reads (DIR/packing.json).

``--smoke`` runs the same code at toy sizes in seconds (on a CPU the graph variants are
left out: CUDA graphs need CUDA); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import perf, round_vs_plain
from engine.compute.models import build_model
from engine.compute.train import PLAIN, OptimizerSpec, Performance, StepRunner, fit, make_optimizer, resolve_performance
from engine.schema.catalogue import ACQUISITION_STRATEGIES
from engine.schema.config import DEFAULTS
from strategies.acquisition import PoolOutputs, pick

BATCH = 128
LR = 1e-3
TARGETS = {"resnet18_images_per_s": 40_000, "mlp_graph_over_eager": 3.0, "engine_over_bare_graphed": 1.1}


@dataclass(frozen=True)
class StepCase:
    name: str
    model: str
    params: dict
    n: int
    epochs: int


STEP_CASES = [
    StepCase("resnet18-64", "resnet18", {"width": 64}, 8192, 2),
    StepCase("resnet18-16", "resnet18", {"width": 16}, 8192, 2),
    StepCase("mlp", "mlp", {}, 8192, 4),
]
SMOKE_CASES = [StepCase("resnet18-4", "resnet18", {"width": 4}, 160, 1), StepCase("mlp", "mlp", {}, 160, 1)]
SHAPE = (3, 32, 32)


def auto_options(device: torch.device, conv: bool) -> Performance:
    return resolve_performance(DEFAULTS["performance"], device, conv, DEFAULTS["eval"]["batch_size"])


def option_sets(device: torch.device, conv: bool) -> dict[str, Performance]:
    auto = auto_options(device, conv)
    sets = {
        "plain": PLAIN,
        "graphs": replace(PLAIN, cuda_graphs=True),
        "auto-graphs": replace(auto, cuda_graphs=False),
        "auto": replace(auto, cuda_graphs=True),
    }
    if device.type != "cuda":  # nothing to capture on a CPU
        sets = {name: p for name, p in sets.items() if not p.cuda_graphs}
    return sets


# --- bare loops: no engine -------------------------------------------------------------------


class BareGraphed:
    """A hand-written step (fp32, Adam capturable) captured once as a CUDA graph; each
    batch is gathered into the static input buffers, then the graph replays."""

    def __init__(self, model, x, y) -> None:
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=LR, capturable=True)
        self.sx, self.sy = x[:BATCH].clone(), y[:BATCH].clone()
        began = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(self.sx), self.sy).backward()
                self.optimizer.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.loss = F.cross_entropy(model(self.sx), self.sy)
            self.loss.backward()
            self.optimizer.step()
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - began

    def run(self, x, y, epochs: int) -> int:
        n, steps = y.shape[0], 0
        g = torch.Generator(device=x.device).manual_seed(0)
        for _ in range(epochs):
            order = torch.randperm(n, device=x.device, generator=g)
            for start in range(0, n - BATCH + 1, BATCH):  # full batches only
                idx = order[start : start + BATCH]
                torch.index_select(x, 0, idx, out=self.sx)
                torch.index_select(y, 0, idx, out=self.sy)
                self.graph.replay()
                steps += 1
        return steps


def bare_compiled(model, x, y, epochs: int):
    """The bare step through torch.compile(mode="reduce-overhead") (CUDA graphs by Inductor)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, capturable=True)

    @torch.compile(mode="reduce-overhead")
    def step(xb, yb):
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def run() -> int:
        n, steps = y.shape[0], 0
        g = torch.Generator(device=x.device).manual_seed(0)
        for _ in range(epochs):
            order = torch.randperm(n, device=x.device, generator=g)
            for start in range(0, n - BATCH + 1, BATCH):
                idx = order[start : start + BATCH]
                torch.compiler.cudagraph_mark_step_begin()
                step(x[idx], y[idx])
                steps += 1
        return steps

    return run


# --- steps -----------------------------------------------------------------------------------


def step_case(case: StepCase, device: torch.device, repeats: int, compile_bare: bool) -> dict:
    torch.manual_seed(0)
    initial = build_model(case.model, case.params, SHAPE, 10).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(case.n, *SHAPE, device=device, generator=g)
    y = torch.randint(0, 10, (case.n,), device=device, generator=g)
    conv = case.model == "resnet18"
    runs, first, capture = {}, {}, {}

    def bare_eager():
        model = copy.deepcopy(initial)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        return round_vs_plain.plain_round(model, x, y, optimizer, BATCH, case.epochs, 0)[0]

    runs["bare eager"] = bare_eager
    if device.type == "cuda":
        holder = {}

        def bare_graphed():
            if "graph" not in holder:
                holder["graph"] = BareGraphed(copy.deepcopy(initial), x, y)
                capture["bare graphed"] = holder["graph"].capture_seconds
            return holder["graph"].run(x, y, case.epochs)

        runs["bare graphed"] = bare_graphed
        if compile_bare:
            torch._dynamo.reset()
            runs["bare compile-ro"] = bare_compiled(copy.deepcopy(initial), x, y, case.epochs)

    for name, options in option_sets(device, conv).items():
        runner = StepRunner(OptimizerSpec("adam", LR), options)

        def engine(options=options, runner=runner, name=name):
            model = copy.deepcopy(initial)  # a new round's model, copied into the runner's
            stats = fit(model, x, y, None, BATCH, perf.convergence(case.epochs), 0, runner=runner)
            if stats.capture_seconds:
                capture[f"engine {name}"] = stats.capture_seconds
            return stats.steps

        runs[f"engine {name}"] = engine

    errors = {}
    for name, run in list(runs.items()):  # first calls: capture, compile, cuDNN's choices
        try:
            first[name] = perf.timed(run, device)[0]
        except Exception as exc:  # one broken variant must not cost the whole check
            errors[name] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"  {case.name} {name} failed: {errors[name]}", file=sys.stderr)
            del runs[name]
    passes = perf.interleaved(runs, repeats, device, f"steps {case.name}", warm_up=False)
    rows = {}
    for name in runs:
        seconds = [s for s, _ in passes[name]]
        steps = passes[name][0][1]
        median = statistics.median(seconds)
        rows[name] = {
            "steps": steps,
            "seconds": seconds,
            "median_seconds": median,
            "ms_per_step": 1000 * median / steps,
            "images_per_s": steps * BATCH / median,
            "first_call_seconds": first[name],
            "capture_seconds": capture.get(name),
        }
    # The engine runs the partial last batch too (eagerly); bare graphed and compiled loops
    # skip it: per-step figures compare like with like.
    result = {"case": case.name, "model": case.model, "params": case.params, "n": case.n, "epochs": case.epochs}
    result["runs"] = rows
    result["errors"] = errors
    graphed = rows.get("engine graphs")
    bare = rows.get("bare graphed")
    result["engine_over_bare_graphed"] = graphed["ms_per_step"] / bare["ms_per_step"] if graphed and bare else None
    if graphed:
        result["graphs_over_eager_steps_per_s"] = rows["engine plain"]["ms_per_step"] / graphed["ms_per_step"]
    return result


# --- graphed = eager -------------------------------------------------------------------------


def same_results(device: torch.device, smoke: bool) -> list[dict]:
    """3 rounds (growing training set) through one graphed StepRunner against eager rounds."""
    if device.type != "cuda":
        return []
    sizes = (300, 420, 550) if smoke else (1000, 1300, 1700)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(sizes[-1], *SHAPE, device=device, generator=g)
    y = torch.randint(0, 10, (sizes[-1],), device=device, generator=g)
    out = []
    for name, graphed, tolerance in (
        ("fp32", replace(PLAIN, cuda_graphs=True), 1e-3),
        ("auto (bf16)", replace(auto_options(device, True), cuda_graphs=True), 2e-2),
    ):
        eager_options = replace(graphed, cuda_graphs=False)
        runner = StepRunner(OptimizerSpec("adam", LR), graphed)
        worst_loss, worst_param = 0.0, 0.0
        for round_, n in enumerate(sizes, start=1):
            torch.manual_seed(round_)
            model = build_model("resnet18", {"width": 16}, SHAPE, 10).to(device)
            a, b = copy.deepcopy(model), copy.deepcopy(model)
            opt = make_optimizer(a, "adam", LR, 0.0, 0.9, eager_options.fused_optimizer)
            sa = fit(a, x[:n], y[:n], opt, BATCH, perf.convergence(2), round_, performance=eager_options)
            sb = fit(b, x[:n], y[:n], None, BATCH, perf.convergence(2), round_, runner=runner)
            worst_loss = max(worst_loss, abs(sa.train_loss - sb.train_loss) / abs(sa.train_loss))
            for p, q in zip(a.parameters(), b.parameters(), strict=True):
                worst_param = max(worst_param, ((p - q).norm() / p.norm().clamp_min(1e-12)).item())
        out.append(
            {
                "options": name,
                "rounds": len(sizes),
                "captures": runner.captures,
                "capture_seconds": runner.capture_seconds,
                "max_rel_loss_difference": worst_loss,
                "max_rel_param_difference": worst_param,
                "tolerance": tolerance,
                "ok": runner.captures == 1 and worst_loss <= tolerance and worst_param <= 10 * tolerance,
            }
        )
    return out


# --- scoring ---------------------------------------------------------------------------------


def strategies_on_device(device: torch.device, smoke: bool) -> dict:
    """Every built-in's picks from outputs on ``device`` against the same outputs on the CPU."""
    n, classes, dim, k = (300, 10, 16, 20) if smoke else (4000, 10, 64, 100)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, classes, generator=g) * 3
    cpu = PoolOutputs(
        n,
        probs=torch.softmax(logits, 1),
        logits=logits,
        embeddings=torch.randn(n, dim, generator=g),
        labeled_embeddings=torch.randn(n // 4, dim, generator=g),
        mc_probs=torch.softmax(torch.randn(5, n, classes, generator=g), 2),
    )
    moved = cpu.to(device)
    result = {}
    for name in ACQUISITION_STRATEGIES.names():
        began = time.perf_counter()
        on_device = pick(name, moved, k, np.random.default_rng(0), {"mc_samples": 5} if name == "bald" else {})
        seconds = time.perf_counter() - began
        on_cpu = pick(name, cpu, k, np.random.default_rng(0), {"mc_samples": 5} if name == "bald" else {})
        result[name] = {
            "same_picks": on_device.tolist() == on_cpu.tolist(),
            "overlap": len(set(on_device.tolist()) & set(on_cpu.tolist())) / k,
            "seconds": seconds,
        }
    return result


SMOKE_SCORING = [
    perf.ScoreCase("mlp", {"width": 16}, 512, 128, 512),
    perf.ScoreCase("resnet18", {"width": 4}, 256, 64, 256),
]


def scoring(device: torch.device, smoke: bool, repeats: int) -> dict:
    """margin through the engine / bare, at benchmarks.perf's sizes (x8 on a GPU)."""
    cases = SMOKE_SCORING if smoke else perf.SCORING_CASES
    rows = [
        perf.scoring(
            case, device, auto_options(device, case.model == "resnet18"), smoke, repeats, 10 if smoke else perf.K
        )
        for case in cases
    ]
    return {"margin": rows, "strategies": strategies_on_device(device, smoke)}


# --- the report ------------------------------------------------------------------------------


def verdict(ok) -> str:
    return "-" if ok is None else ("ok" if ok else "MISSED")


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"gpu check: {m.get('gpu', 'no GPU')}, torch {m['torch']}, {m['date']}, load {m.get('load_average')}")
    if report["smoke"]:
        print("smoke run: toy sizes, the figures are not measurements")
    print("\nsteps: batch 128, Adam 1e-3; ms per step and images/s (first call: capture / compile / warm-up)")
    print(f"  {'case':<12} {'variant':<20} {'ms/step':>8} {'images/s':>10} {'first s':>8} {'capture s':>9}")
    for case in report["steps"]:
        for name, r in case["runs"].items():
            cap = "-" if r["capture_seconds"] is None else f"{r['capture_seconds']:.2f}"
            print(
                f"  {case['case']:<12} {name:<20} {r['ms_per_step']:>8.3f} {r['images_per_s']:>10.0f} "
                f"{r['first_call_seconds']:>8.2f} {cap:>9}"
            )
        ratio = case.get("engine_over_bare_graphed")
        if ratio is not None:
            target = TARGETS["engine_over_bare_graphed"]
            print(
                f"  {case['case']:<12} engine graphs / bare graphed ms: {ratio:.3f} (<= {target}: {verdict(ratio <= target)})"
            )
        speedup = case.get("graphs_over_eager_steps_per_s")
        if speedup is not None:
            print(f"  {case['case']:<12} engine graphs / engine plain steps per second: {speedup:.2f}x")
        if case["model"] == "resnet18" and "engine auto" in case["runs"]:
            best = max(case["runs"][k]["images_per_s"] for k in ("engine auto", "engine graphs"))
            target = TARGETS["resnet18_images_per_s"]
            print(f"  {case['case']:<12} best engine images/s {best:.0f} (>= {target}: {verdict(best >= target)})")
        if case["model"] == "mlp" and speedup is not None:
            target = TARGETS["mlp_graph_over_eager"]
            print(f"  {case['case']:<12} mlp graphs over eager (>= {target}x): {verdict(speedup >= target)}")

    print("\nsame: graphed engine against eager engine, 3 growing rounds through one StepRunner")
    if not report["same"]:
        print("  skipped: no CUDA")
    for r in report["same"]:
        print(
            f"  {r['options']:<12} captures {r['captures']}  capture {r['capture_seconds']:.2f} s  "
            f"loss rel diff {r['max_rel_loss_difference']:.2e}  param rel diff {r['max_rel_param_difference']:.2e}  "
            f"{verdict(r['ok'])}"
        )

    print("\nscoring: margin on the device, engine / bare gather+forward samples per second (target >= 0.9)")
    for r in report["scoring"]["margin"]:
        print(
            f"  {r['model']:<10} pool {r['pool_unlabeled']:>7} batch {r['batch_size']:>5} "
            f"engine {r['engine_samples_per_s']:>11.0f}/s bare {r['bare_samples_per_s']:>11.0f}/s "
            f"ratio {r['ratio']:.3f} {verdict(r['meets_target'])}"
        )
    same = report["scoring"]["strategies"]
    answers = [
        f"{name} " + ("yes" if r["same_picks"] else f"no ({r['overlap']:.0%} overlap)") for name, r in same.items()
    ]
    print("  built-ins on the device, same picks as on the CPU: " + ", ".join(answers))

    packing = report.get("packing")
    if packing is None:
        print("\npacking: skipped")
    else:
        from benchmarks.packing import print_table

        print_table(packing)


def machine(device: torch.device) -> dict:
    about = {
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        about["gpu"] = torch.cuda.get_device_name(device)
        about["cuda"] = torch.version.cuda
    return about


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, one pass: checks the code, not the speed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", metavar="DIR", default=os.environ.get("OUT") or "gpu_check_out")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved passes (default 5; smoke 1)")
    parser.add_argument("--compile", action="store_true", help="also the bare loop under torch.compile reduce-overhead")
    parser.add_argument("--skip-packing", action="store_true")
    parser.add_argument("--packs", default="1,2,4,8")
    parser.add_argument("--packing-trials", type=int, default=16, help="trials of the packing grid (at most 16)")
    parser.add_argument("--packing-rounds", type=int, default=6, help="rounds per trial of the packing grid")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}, but torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.smoke:
        print("error: no CUDA device: the GPU check needs one (--smoke runs its code at toy sizes)", file=sys.stderr)
        return 2
    repeats = args.repeats or (1 if args.smoke else 5)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(device), "smoke": args.smoke, "targets": TARGETS, "command": sys.argv}
    cases = SMOKE_CASES if args.smoke else STEP_CASES
    print("steps ...", file=sys.stderr, flush=True)
    report["steps"], report["errors"] = [], {}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))  # the machine, even if cut at once

    def section(name: str, run, default):
        """One section; its failure is recorded and the others still run (one GPU session, one
        try), and the JSON is rewritten after each, so a run cut short keeps what it measured."""
        print(f"{name} ...", file=sys.stderr, flush=True)
        try:
            return run()
        except Exception as exc:
            report["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"  {name} failed: {report['errors'][name]}", file=sys.stderr)
            return default
        finally:
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))

    for i, case in enumerate(cases):
        row = section(
            f"steps {case.name}", lambda case=case, i=i: step_case(case, device, repeats, args.compile and i == 0), None
        )
        if row is not None:
            report["steps"].append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["same"] = section("same", lambda: same_results(device, args.smoke), [])
    report["scoring"] = section(
        "scoring", lambda: scoring(device, args.smoke, repeats), {"margin": [], "strategies": {}}
    )
    report["packing"] = None
    if not args.skip_packing:
        from benchmarks import packing

        packs = [int(p) for p in args.packs.split(",")]
        if args.smoke:
            measure = lambda: packing.measure("mlp", packs, 2, 2, str(device), "thread", 2)  # noqa: E731
        else:
            measure = lambda: packing.measure(  # noqa: E731
                "resnet18", packs, args.packing_rounds, 100, str(device), "process", args.packing_trials
            )
        report["packing"] = section("packing", measure, None)
        if report["packing"] is not None:
            packing.write_table(report["packing"], str(out / "packing.json"))
    with contextlib.suppress(Exception):
        report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    for name, error in report["errors"].items():
        print(f"FAILED section {name}: {error}")
    print(f"\nwrote {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
