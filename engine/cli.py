"""The command line: ``warmstart run`` and ``warmstart list`` (also ``python -m engine``)."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from engine.registry import ConfigError

EXIT_USAGE = 2


def _add_repeated(parser: argparse.ArgumentParser, flag: str, metavar: str, dest: str, help: str) -> None:
    parser.add_argument(flag, metavar=metavar, action="append", default=[], dest=dest, help=help)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML experiment config (keys as in the README)")
    _add_repeated(
        parser,
        "--set",
        "KEY=VALUE",
        "sets",
        "override one config key, e.g. --set init.name=warm (repeatable; VALUE in YAML syntax)",
    )
    _add_repeated(
        parser,
        "--plugin",
        "MODULE_OR_FILE.py",
        "plugins",
        "import a module or file that registers strategies (repeatable)",
    )


def _add_suite_args(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--out", metavar="DIR_OR_URI", help=f"results directory or URI (default: {default_out})")
    parser.add_argument(
        "--address", metavar="auto|HOST:PORT", help="join this Ray cluster instead of starting a local one"
    )
    parser.add_argument("--resume", action="store_true", help="continue the same suite in --out after an interruption")
    parser.add_argument(
        "--max-concurrent", type=int, metavar="N", help="at most N trials at once (default: as resources allow)"
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="warmstart",
        description="Rounds of online and active learning: random init, warm start, shrink and perturb.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run one trial and append its rounds to a Parquet dataset")
    _add_config_args(run)
    run.add_argument(
        "--out", metavar="DIR_OR_URI", default="results/run", help="results directory or URI (default: results/run)"
    )
    run.add_argument("--quiet", action="store_true", help="no per-round lines")
    run.add_argument(
        "--workers", type=int, metavar="N", help="run on Ray Train with N data-parallel workers (scaling.workers)"
    )
    run.add_argument("--gpus-per-worker", type=float, metavar="G", help="GPUs per worker (scaling.gpus_per_worker)")
    run.add_argument(
        "--address", metavar="auto|HOST:PORT", help="join this Ray cluster instead of starting a local one"
    )

    suite = sub.add_parser("suite", help="run a suite (a grid of trials) on Ray Tune into one Parquet table")
    suite.add_argument(
        "suite", metavar="FILE_OR_NAME", help="a suite YAML file, or the name of one in benchmarks/suites/"
    )
    _add_suite_args(suite, default_out="results/<suite name>")
    _add_repeated(
        suite,
        "--plugin",
        "MODULE_OR_FILE.py",
        "plugins",
        "import a module or file that registers strategies (repeatable)",
    )
    _add_repeated(
        suite,
        "--set",
        "KEY=VALUE",
        "sets",
        "override a key of the suite's base config, e.g. --set scaling.gpus_per_worker=0 (repeatable)",
    )

    quick = sub.add_parser("quickstart", help="run the quickstart suite on the embedded digits dataset")
    _add_suite_args(quick, default_out="results/quickstart")

    report = sub.add_parser("report", help="write figures and summary tables for a results table")
    report.add_argument("results", metavar="DIR_OR_URI", help="a results directory or URI (warmstart run/suite --out)")
    report.add_argument("--out", metavar="DIR", help="where to write the report (default: DIR_OR_URI/_report)")

    lister = sub.add_parser("list", help="list datasets, models, init and acquisition strategies")
    _add_repeated(
        lister, "--plugin", "MODULE_OR_FILE.py", "plugins", "also list the strategies this module or file registers"
    )
    return top


def cmd_run(args: argparse.Namespace) -> int:
    from engine.config import build
    from engine.loop import Silent, load_data, plan_rounds, resolve_device, run_rounds
    from engine.progress import ConsoleReporter
    from engine.store import TrialStore

    # Everything that can be refused is checked before anything is written under --out.
    sets = list(args.sets)
    if args.workers is not None:
        sets.append(f"scaling.workers={args.workers}")
    if args.gpus_per_worker is not None:
        sets.append(f"scaling.gpus_per_worker={args.gpus_per_worker}")
    if args.address and not any(s.startswith("scaling.workers=") for s in sets):
        sets.append("scaling.workers=1")  # joining a cluster means running there
    cfg = build(args.config, sets, args.plugins)
    on_ray = cfg.scaling.workers is not None
    # The driver of a Ray run loads the data only to check the plan; the workers load their own.
    device = torch.device("cpu") if on_ray else resolve_device(cfg.device)
    data = load_data(cfg, device)
    plan = plan_rounds(cfg, data.pool_y.shape[0])
    trial_id = cfg.trial_id()
    store = TrialStore(args.out, trial_id)
    saved = store.saved_config()
    if saved is not None and type(cfg)(saved).identity() != cfg.identity():
        raise ConfigError(
            f"{args.out} already holds trial {trial_id!r} with a different config; choose another --out or trial_id."
        )
    checkpoint = store.load_checkpoint()

    reporter = ConsoleReporter(sys.stdout)
    print(
        f"trial {trial_id}: {cfg.dataset.name} ({plan.n_pool} pool, {data.eval_y.shape[0]} {cfg.dataset.eval}), "
        f"{cfg.model.name}, init {cfg.init.name}, acquisition {cfg.acquisition.name}, "
        f"{plan.rounds} rounds of {plan.per_round} after {plan.initial}, "
        + (f"on Ray Train with {cfg.scaling.workers} worker(s)" if on_ray else f"on {device.type}")
    )
    if checkpoint is not None:
        if checkpoint["round"] >= plan.rounds:
            print(f"already complete: {plan.rounds} rounds in {args.out}")
            return 0
        print(f"resuming after round {checkpoint['round']} (found in {args.out})")
    if not args.quiet:
        reporter.header()
    began = time.perf_counter()
    if on_ray:
        from engine.distributed import run_trial_on_ray

        del data  # the workers load their own copy
        run_trial_on_ray(cfg, args.out, args.address, None if args.quiet else reporter, plan.rounds)
    else:
        run_rounds(cfg, data, store, device, reporter=Silent() if args.quiet else reporter)
    total = time.perf_counter() - began
    rows = store.rows()
    last = max(rows, key=lambda r: r["round"])
    print(f"done: {len(rows)} rounds in {total:.1f}s, final test_acc {last['test_acc']:.4f}; rows in {args.out}")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    import pandas as pd

    from engine.suite import check_pools, load_suite
    from engine.tune import format_summary, run_suite, summarize

    suite = load_suite(args.suite, getattr(args, "plugins", []), getattr(args, "sets", []))
    check_pools(suite)  # missing datasets and impossible round counts fail before anything runs
    out = args.out or f"results/{suite.name}"
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1. Got {args.max_concurrent}.")
    print(f"suite {suite.name}: {len(suite.trials)} trials -> {out}", flush=True)
    began = time.perf_counter()
    failed = run_suite(suite, out, args.address, args.resume, args.max_concurrent)
    print(f"\nsuite {suite.name} finished in {time.perf_counter() - began:.0f}s")
    try:
        frame = pd.read_parquet(out)
    except (FileNotFoundError, ValueError, OSError):
        frame = None
    if frame is not None and len(frame):
        print(format_summary(summarize(suite, frame)))
        try:
            _write_report(out)
        except ConfigError as exc:  # a report is a bonus: its problems must not fail the suite
            print(f"report not written: {exc}", file=sys.stderr)
    if failed:
        print(f"\n{len(failed)} trial(s) failed:", file=sys.stderr)
        for trial_id, error, details in failed:
            print(f"  {trial_id}: {error}\n    traceback: {details}", file=sys.stderr)
        print("completed rounds are saved; re-run with --resume to retry the failed trials", file=sys.stderr)
        return 1
    return 0


def _write_report(results: str, out: str | None = None) -> None:
    from engine.report import write_report

    lines = write_report(results, out)
    print(f"report: {lines[0]}")
    for line in lines[1:]:
        if line.startswith("note: "):
            print(f"  {line}")


def cmd_report(args: argparse.Namespace) -> int:
    _write_report(args.results, args.out)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    args.suite = "quickstart"
    return cmd_suite(args)


def cmd_list(args: argparse.Namespace) -> int:
    from engine.data import DATASETS
    from engine.models import MODELS
    from engine.plugins import load_plugins
    from strategies.acquisition import ACQUISITION_STRATEGIES
    from strategies.init import INIT_STRATEGIES

    load_plugins(args.plugins)
    for title, registry in (
        ("datasets", DATASETS),
        ("models", MODELS),
        ("init strategies", INIT_STRATEGIES),
        ("acquisition strategies", ACQUISITION_STRATEGIES),
    ):
        print(f"{title}:")
        for entry in registry.entries():
            needs = entry.extra.get("needs")
            suffix = f"  [needs: {', '.join(needs)}]" if needs else ""
            print(f"  {entry.signature()}{suffix}")
            if entry.doc:
                print(f"      {entry.doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        commands = {
            "run": cmd_run,
            "suite": cmd_suite,
            "quickstart": cmd_quickstart,
            "report": cmd_report,
            "list": cmd_list,
        }
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"warmstart: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:
        from engine.distributed import TrialFailed

        if not isinstance(exc, TrialFailed):
            raise
        print(f"warmstart: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\nwarmstart: interrupted; completed rounds are saved, re-run the same command to resume", file=sys.stderr
        )
        return 130
