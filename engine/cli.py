"""The command line: ``warmstart run`` and ``warmstart list`` (also ``python -m engine``)."""

from __future__ import annotations

import argparse
import sys
import time

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
    _add_repeated(
        parser,
        "--tracker",
        "tensorboard|mlflow[=URI]|wandb[=PROJECT]",
        "trackers",
        "log every round to an experiment tracker, as the suite's 'tracking' (repeatable)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="warmstart",
        description="Rounds of online and active learning: random init, warm start, shrink and perturb.",
    )
    from engine import __version__

    top.add_argument("--version", action="version", version=f"warmstart {__version__}")
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
        "suite",
        metavar="FILE_OR_NAME",
        help="a suite YAML file, or the name of a shipped suite (warmstart list shows them)",
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
    from engine.progress import ConsoleReporter
    from engine.runner import run_trial

    # Everything that can be refused is checked before anything is written under --out.
    sets = list(args.sets)
    if args.gpus_per_worker is not None:
        sets.append(f"scaling.gpus_per_worker={args.gpus_per_worker}")
    began = time.perf_counter()
    reporter = ConsoleReporter(sys.stdout, quiet=args.quiet)
    rows = run_trial(
        args.config,
        args.out,
        workers=args.workers,
        address=args.address,
        reporter=reporter,
        sets=sets,
        plugins=args.plugins,
    )
    if reporter.ran:
        print(
            f"done: {len(rows)} rounds in {time.perf_counter() - began:.1f}s, "
            f"final test_acc {rows[-1]['test_acc']:.4f}; rows in {args.out}"
        )
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    import pandas as pd

    from engine.search import format_search, read_record
    from engine.suite import check_pools, load_suite
    from engine.tune import format_summary, run_suite, summarize

    suite = load_suite(args.suite, getattr(args, "plugins", []), getattr(args, "sets", []), args.trackers)
    rounds = check_pools(suite)  # missing datasets and impossible round counts fail before anything runs
    out = args.out or f"results/{suite.name}"
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1. Got {args.max_concurrent}.")
    if suite.search.sampled:
        count = (
            f"{suite.search.num_samples} points x {len(suite.seeds)} seed(s) from a {suite.search.searcher} searcher"
        )
    else:
        count = f"{len(suite.trials)} trials"
    print(f"suite {suite.name}: {count} -> {out}", flush=True)
    began = time.perf_counter()
    try:
        failed = run_suite(suite, out, args.address, args.resume, args.max_concurrent, rounds=rounds)
    except KeyboardInterrupt:  # Tune stopped the trials; everything completed is saved
        print(
            f"\nwarmstart: interrupted; completed rounds are saved in {out}: "
            "re-run the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130
    print(f"\nsuite {suite.name} finished in {time.perf_counter() - began:.0f}s")
    try:
        frame = pd.read_parquet(out)
    except (FileNotFoundError, ValueError, OSError):
        frame = None
    if frame is not None and len(frame):
        print(format_summary(summarize(suite, frame)))
        if suite.search.per_point and (record := read_record(out)):
            print(format_search(record))
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
    from engine.data import DATASET_DOCS
    from engine.models import MODELS
    from engine.plugins import load_plugins
    from strategies.acquisition import ACQUISITION_STRATEGIES
    from strategies.init import INIT_STRATEGIES

    load_plugins(args.plugins)
    print("datasets:")
    for name, doc in sorted(DATASET_DOCS.items()):
        print(f"  {name:<22} {doc}")
    for title, registry in (
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
