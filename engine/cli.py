"""The command line: ``warmstart run`` and ``warmstart list`` (also ``python -m engine``)."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
import traceback

# Only light modules here: `warmstart --help` and a refused config must not wait for
# torch, pandas, pyarrow or Ray (tests/cli_api/test_api.py checks it).  A command imports what
# pulls them in when it runs.
import engine.compute.builtins  # noqa: F401  (every registry loads its built-ins on first use, not here)
from engine import __version__
from engine.errors import ConfigError, StoreUnavailable, TrialError
from engine.schema.catalogue import REGISTRIES
from engine.schema.plugins import load_plugins
from engine.trial.progress import ConsoleReporter

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
        "import a module or file that registers strategies, datasets or models (repeatable)",
    )


def _add_shared_fs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shared-fs",
        action="store_true",
        help="--out is a path on a file system mounted at the same place on every node of the cluster",
    )


def _add_suite_args(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--out", metavar="DIR_OR_URI", help=f"results directory or URI (default: {default_out})")
    parser.add_argument(
        "--address", metavar="auto|HOST:PORT", help="join this Ray cluster instead of starting a local one"
    )
    parser.add_argument("--resume", action="store_true", help="continue the same suite in --out after an interruption")
    _add_shared_fs(parser)
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


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as every other bad input: one line, exit 2 (from ``main``),
    naming where the options are listed, instead of the usage text and a second line."""

    def error(self, message: str):
        raise ConfigError(f"{message} (`{self.prog} --help` lists the options)")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="warmstart",
        description="Rounds of online and active learning: random init, warm start, shrink and perturb.",
    )
    top.add_argument("--version", action="version", version=f"warmstart {__version__}")
    top.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (also: WARMSTART_DEBUG=1)"
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_command(sub)
    _add_suite_command(sub)
    _add_quickstart_command(sub)
    _add_report_command(sub)
    checker = sub.add_parser("check", help="verify that a results folder's rows, status and checkpoints are intact")
    checker.add_argument("results", metavar="DIR_OR_URI", help="a results directory or URI")
    _add_live(sub)
    lister = sub.add_parser("list", help="list datasets, models, init and acquisition strategies")
    _add_repeated(
        lister, "--plugin", "MODULE_OR_FILE.py", "plugins", "also list the strategies this module or file registers"
    )
    return top


def _add_run_command(sub: argparse._SubParsersAction) -> None:
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
    _add_shared_fs(run)


def _add_suite_command(sub: argparse._SubParsersAction) -> None:
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
        "import a module or file that registers strategies, datasets or models (repeatable)",
    )
    _add_repeated(
        suite,
        "--set",
        "KEY=VALUE",
        "sets",
        "override a key of the suite's base config, e.g. --set scaling.gpus_per_worker=0 (repeatable)",
    )
    suite.add_argument(
        "--trials-per-gpu",
        metavar="N|auto",
        help="run N trials on each GPU at once (auto: from the measured packing table); trial ids are unchanged",
    )


def _add_quickstart_command(sub: argparse._SubParsersAction) -> None:
    what, details = _suite_header("quickstart")
    quick = sub.add_parser(
        "quickstart", help=f"run the quickstart suite: {what}", description=f"The quickstart suite: {details}"
    )
    _add_suite_args(quick, default_out="results/quickstart")


def _add_report_command(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="write figures, summary tables and the paper's claims for results")
    report.add_argument(
        "results",
        metavar="DIR_OR_URI",
        nargs="+",
        help="one or more results directories or URIs (warmstart run/suite --out), read as one table",
    )
    report.add_argument(
        "--out", metavar="DIR", help="where to write the report (default: DIR_OR_URI/_report; needed for several)"
    )
    report.add_argument(
        "--watch",
        action="store_true",
        help="rewrite the report every --every seconds while a suite runs (the page reloads itself); Ctrl-C ends it",
    )
    report.add_argument(
        "--every", metavar="N", type=float, default=30.0, help="with --watch: seconds between rewrites (default 30)"
    )


def _add_live(sub) -> None:
    """``warmstart live init|step|watch`` (docs/live.md)."""
    live = sub.add_parser("live", help="a live project: rounds fed by label files as they arrive (docs/live.md)")
    commands = live.add_subparsers(dest="live_command", required=True, metavar="init|step|watch|labelstudio")
    init = commands.add_parser("init", help="make a live project from an unlabelled pool and an evaluation set")
    init.add_argument(
        "--pool", metavar="POOL.parquet", required=True, help="the unlabelled data: an id column, features"
    )
    init.add_argument(
        "--eval", metavar="EVAL.parquet", required=True, help="the evaluation set: features, a label column"
    )
    init.add_argument("--out", metavar="DIR_OR_URI", required=True, help="the project's folder, or an object store URI")
    _add_config_args(init)
    step = commands.add_parser(
        "step", help="train the next round on the label files that arrived; write the next query"
    )
    step.add_argument("dir", metavar="DIR", help="the live project's folder or URI")
    watch = commands.add_parser("watch", help="run steps as label files arrive, until Ctrl-C")
    watch.add_argument("dir", metavar="DIR", help="the live project's folder or URI")
    watch.add_argument("--every", metavar="N[s]", default="30s", help="seconds between looks (default 30s)")
    _add_labelstudio(commands)


def cmd_live(args: argparse.Namespace) -> int:
    from engine.live import project, step

    if args.live_command == "init":
        made = project.init(args.pool, args.eval, args.out, args.config, args.sets, args.plugins)
        print(f"live project {made.out}: label the ids of {made.query_path(1)}, save them in {made.path('labels')}")
        print(f"then: warmstart live step {args.out}")
        return 0
    if args.live_command == "step":
        step.step(args.dir, say=lambda line: print(line, flush=True))
        return 0
    every = args.every.removesuffix("s")
    try:
        seconds = float(every)
    except ValueError:
        raise ConfigError(f"--every is a number of seconds such as 30 or 30s, not {args.every!r}.") from None
    step.watch(args.dir, seconds, say=lambda line: print(line, flush=True))
    return 0


def _add_labelstudio(live_sub) -> None:
    """``warmstart live labelstudio push|pull DIR --url URL [--project NAME]`` (docs/live.md);
    the commands set ``handler``, which ``main`` calls."""
    tool = live_sub.add_parser(
        "labelstudio",
        help="Label Studio as the annotator: push the query as tasks, pull finished annotations as a label file",
        description="The API key comes from the LABEL_STUDIO_API_KEY environment variable.",
    )
    actions = tool.add_subparsers(dest="labelstudio_command", required=True, metavar="push|pull")
    push = actions.add_parser(
        "push", help="the latest query (DIR/queries/round-NNNN.parquet) as tasks, its scores as predictions"
    )
    pull = actions.add_parser("pull", help="finished annotations not pulled before as DIR/labels/labelstudio-*.parquet")
    for command in (push, pull):
        command.add_argument("dir", metavar="DIR", help="the live project's folder")
        command.add_argument(
            "--url", required=True, metavar="URL", help="the Label Studio server, e.g. http://localhost:8080"
        )
        command.add_argument(
            "--project", metavar="NAME", help="the Label Studio project's title (default: warmstart <DIR's name>)"
        )
        command.add_argument(
            "--eval", metavar="EVAL.parquet", help="the evaluation set: its 'label' column gives the classes"
        )
        command.set_defaults(handler=cmd_labelstudio)
    push.add_argument("--pool", metavar="POOL.parquet", help="the pool (id and features) the query's ids come from")
    push.add_argument("--round", type=int, metavar="N", help="push the query of round N (default: the latest)")
    push.add_argument(
        "--view", choices=["auto", "image", "table"], default="auto", help="how a task shows an item (default: auto)"
    )
    push.add_argument("--shape", metavar="HxW|CxHxW", help="an item's image shape (default: a square of its values)")


def cmd_labelstudio(args: argparse.Namespace) -> int:
    from engine.live import labelstudio

    if args.labelstudio_command == "push":
        done = labelstudio.push(
            args.dir,
            args.url,
            args.project,
            pool=args.pool,
            eval=args.eval,
            round=args.round,
            view=args.view,
            shape=args.shape,
        )
    else:
        done = labelstudio.pull(args.dir, args.url, args.project, eval=args.eval)
    print(done.summary())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from engine.trial.runner import run_trial

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
        shared_fs=args.shared_fs,
    )
    last = rows[-1] if rows else None
    if last is not None and last["stop_reason"] == "diverged" and last["cfg.convergence.on_diverge"] == "stop":
        print(
            f"warmstart: error: trial {last['trial_id']} diverged in round {last['round']} (non-finite training "
            f"loss) and stopped there; its {len(rows)} round(s) are saved in {args.out}. Lower optimizer.lr, or set "
            "convergence.on_diverge=continue to go on.",
            file=sys.stderr,
        )
        return 1
    if reporter.ran:
        print(
            f"done: {len(rows)} rounds in {time.perf_counter() - began:.1f}s, "
            f"final test_acc {last['test_acc']:.4f}; rows in {args.out}"
        )
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    from engine.suite.options import set_up_suite
    from engine.suite.tune import run_suite

    setup = set_up_suite(_suite_options(args))  # every refusal, before anything is written
    packed = setup.options.trials_per_gpu
    if packed is not None:
        print(f"packing {packed} trials per GPU (each asks for 1/{packed} of its GPUs)")
    print(setup.headline(), flush=True)
    began = time.perf_counter()
    try:
        failed = run_suite(setup)
    except KeyboardInterrupt:  # Tune stopped the trials; everything completed is saved
        print(
            f"\nwarmstart: interrupted; completed rounds are saved in {setup.out}: "
            "re-run the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130
    print(f"\nsuite {setup.suite.name} finished in {time.perf_counter() - began:.0f}s")
    _summarise_suite(setup.out, setup.suite.search.per_point)
    if failed:
        _list_failures(failed)
        return 1
    return 0


def _suite_options(args: argparse.Namespace):
    """``warmstart suite``'s (or ``quickstart``'s, which has no --plugin, --set or
    --trials-per-gpu) options as one ``SuiteOptions``, checked."""
    from engine.suite.options import SuiteOptions

    return SuiteOptions.build(
        args.suite,
        args.out,
        resume=args.resume,
        address=args.address,
        max_concurrent=args.max_concurrent,
        trials_per_gpu=getattr(args, "trials_per_gpu", None),
        shared_fs=args.shared_fs,
        plugins=getattr(args, "plugins", ()),
        sets=getattr(args, "sets", ()),
        trackers=args.trackers,
    )


def _summarise_suite(out: str, searched: bool) -> None:
    """After a suite: its summary (what the report writes to summary.md), what its search did,
    and its report; nothing when no round completed."""
    from engine.analysis import results
    from engine.analysis.tables import summary_text
    from engine.suite.search import format_search, read_record

    try:
        frame = results.load(out)
    except ConfigError:  # no completed round to summarise
        return
    print(summary_text(frame))
    if searched and (record := read_record(out)):
        print(format_search(record))
    try:
        _write_report(out)
    except ConfigError as exc:  # a report is a bonus: its problems must not fail the suite
        print(f"report not written: {exc}", file=sys.stderr)


def _list_failures(failed: list[tuple[str, str, str]]) -> None:
    print(f"\n{len(failed)} trial(s) failed:", file=sys.stderr)
    for trial_id, error, details in failed:
        print(f"  {trial_id}: {error}\n    traceback: {details}", file=sys.stderr)
    print("completed rounds are saved; re-run with --resume to retry the failed trials", file=sys.stderr)


def _write_report(results: str, out: str | None = None, refresh: int | None = None, notes: bool = True) -> None:
    from engine.analysis.report import write_report

    lines = write_report(results, out, refresh=refresh)
    print(f"report: {lines[0]}", flush=True)
    for line in lines[1:] if notes else []:
        if line.startswith("note: "):
            print(f"  {line}")


def _not_yet(error: str, results: list[str]) -> bool:
    """Whether ``report --watch`` waits on this error: no rows yet, or a results folder a suite
    started beside it has not created yet (its parent folder exists: a mistyped parent fails)."""
    if "no warmstart rows" in error:
        return True
    return "the path does not exist" in error and all(
        "://" in path or os.path.isdir(os.path.dirname(os.path.abspath(path))) for path in results
    )


def _watch_report(results: list[str], out: str | None, every: float, sleep=time.sleep) -> None:
    """``report --watch``: the report rewritten every ``every`` seconds, its page reloading
    itself as often, until Ctrl-C, which writes it once more as a page that stays still.
    Results without rows yet (a suite just started), or a folder the suite has not created
    yet, are waited for."""
    if not every >= 1:
        raise ConfigError(f"--every must be at least 1 second, not {every:g}.")
    refresh, waiting, written = max(1, round(every)), None, False
    print(f"watching {', '.join(results)}: the report is rewritten every {refresh} s; Ctrl-C ends it", flush=True)
    try:
        while True:
            try:
                _write_report(results, out, refresh=refresh, notes=not written)
                written, waiting = True, None
            except ConfigError as exc:
                if not _not_yet(str(exc), results):  # rows not written yet: wait; anything else: an error
                    raise
                if str(exc) != waiting:
                    print(f"waiting: {exc}", flush=True)
                    waiting = str(exc)
            sleep(refresh)
    except KeyboardInterrupt:
        if written:
            _write_report(results, out, notes=False)  # the last page: no reloading once nobody rewrites it
        print("stopped watching", flush=True)


def _suite_header(name: str) -> tuple[str, str]:
    """A shipped suite's header comment, so the help says what the suite file runs: (its first
    sentence, its first two paragraphs), without the leading ``<name>:``.  Read as text: no YAML
    parser at ``--help`` time."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "suites", f"{name}.yaml")
    paragraphs: list[list[str]] = [[]]
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            text = line[1:].strip()
            if text:
                paragraphs[-1].append(text)
            elif paragraphs[-1]:
                paragraphs.append([])
    texts = [" ".join(p) for p in paragraphs if p]
    texts[0] = texts[0].removeprefix(f"{name}: ")
    return texts[0].split(". ")[0].rstrip("."), " ".join(texts[:2])


def cmd_report(args: argparse.Namespace) -> int:
    if args.watch:
        _watch_report(args.results, args.out, args.every)
    else:
        _write_report(args.results, args.out)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    args.suite = "quickstart"
    return cmd_suite(args)


def cmd_check(args: argparse.Namespace) -> int:
    from engine.storage.check import check

    trials = check(args.results)
    for trial in trials:
        print(trial.line())
    bad = sum(1 for t in trials if t.problems)
    print(f"{len(trials)} trial(s) checked under {args.results}: " + (f"{bad} with problems" if bad else "all intact"))
    return 1 if bad else 0


def cmd_list(args: argparse.Namespace) -> int:
    load_plugins(args.plugins)
    for registry in REGISTRIES.values():
        print(f"{registry.plural}:")
        for entry in registry.entries():
            needs = entry.extra.get("needs")
            suffix = f"  [needs: {', '.join(needs)}]" if needs else ""
            print(f"  {entry.signature()}{suffix}")
            if entry.doc:
                print(f"      {entry.doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except ConfigError as exc:  # an unknown option, a missing value: one line, as any bad input
        _explain(exc, debug=False)
        return EXIT_USAGE
    debug = args.debug or os.environ.get("WARMSTART_DEBUG", "") not in ("", "0")
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM (a scheduler, `kill`) ends a run like Ctrl-C: completed rounds saved, locks
    # released, the embedded Ray instance shut down, the same resume hint.
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        commands = {
            "run": cmd_run,
            "suite": cmd_suite,
            "quickstart": cmd_quickstart,
            "report": cmd_report,
            "list": cmd_list,
            "check": cmd_check,
            "live": cmd_live,
        }
        handler = getattr(args, "handler", None) or commands[args.command]  # a subcommand's own, or the command's
        return handler(args)
    except ConfigError as exc:
        _explain(exc, debug)
        return EXIT_USAGE
    except (TrialError, OSError) as exc:  # a strategy that failed, a full disk, a busy trial, divergence
        down = _store_down(exc, args)
        if down is None and isinstance(exc, OSError):
            raise
        if down is not None:  # the object store stopped answering past its timeouts and retries
            words = ["warmstart", *(sys.argv[1:] if argv is None else argv)]
            if args.command in ("suite", "quickstart") and "--resume" not in words:
                words.append("--resume")
            when = "when it answers again" if "stopped answering" in str(down) else "then"
            exc, cause = StoreUnavailable(f"{down}; {when}, resume with: {shlex.join(words)}"), exc
            exc.__cause__ = cause  # --debug shows where it happened
        _explain(exc, debug)
        return 1
    except KeyboardInterrupt:
        print(
            "\nwarmstart: interrupted; completed rounds are saved, re-run the same command to resume", file=sys.stderr
        )
        _exit_if_the_store_hangs(130)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _store_down(exc: Exception, args: argparse.Namespace) -> StoreUnavailable | None:
    """The object store's failure during a run (past its retries), as StoreUnavailable; None otherwise."""
    out = getattr(args, "out", None) or getattr(args, "results", None)
    if isinstance(exc, StoreUnavailable):
        return exc
    if not isinstance(out, str) or "://" not in out:
        return None
    from engine.storage.object_store import outage, store_failure

    return outage(exc, out) if store_failure(str(exc)) else None


def _exit_if_the_store_hangs(code: int) -> None:
    """Exit now when a request to an object store still hangs in another thread: pyarrow's
    exit handler would wait for it (minutes for a silent endpoint) before the process ends."""
    module = sys.modules.get("engine.storage.object_store")
    if module is not None and module.request_in_flight():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _explain(exc: Exception, debug: bool) -> None:
    """One line; the whole traceback (the cause's too) only with --debug or WARMSTART_DEBUG=1."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"warmstart: error: {exc}", file=sys.stderr)
