"""Faults and hostile inputs (docs/guarantees.md): results are complete or say why
not, strategies fail in one line, paths stay inside --out, and resources are checked
before they are waited for.  CLI runs go through engine.cli.main in-process."""

from __future__ import annotations

import errno
import glob
import hashlib
import linecache
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import warmstart as ws
from engine.cli import main
from engine.errors import ConfigError
from engine.schema import plugins
from engine.schema.records import columns_with
from engine.schema.registry import PluginChanged
from engine.storage.check import check
from engine.storage.store import TrialStore
from strategies import acquisition
from strategies.acquisition import ACQUISITION_STRATEGIES
from strategies.init import INIT_STRATEGIES
from tests.cli_support import cli, one_line, plain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--set", "device=cpu", "--set", "rounds.max_rounds=3", "--set", "convergence.max_epochs=6", "--quiet"]
TIMINGS = set(columns_with("timing"))  # times, and the rounds' UTC start and end


def rows(out) -> list[dict]:
    """The table's rows as comparable plain values, timings left out."""
    frame = pd.read_parquet(out).sort_values("round")
    return [{k: plain(v) for k, v in r.items() if k not in TIMINGS} for r in frame.to_dict("records")]


def trial_of(out) -> str:
    (name,) = {os.path.basename(p).rsplit("-round", 1)[0] for p in glob.glob(f"{out}/*.parquet")}
    return name


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-round margin trial and its rows, as the reference every fault must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["run", "--out", str(out), "--set", "acquisition.name=margin", *FAST]) == 0
    return out, rows(out)


def copy_of(finished, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    return out


# --- results are complete, or the engine says why not --------------------------------------


def test_a_deleted_row_is_found_recomputed_and_the_others_verified(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    trial = trial_of(out)
    os.remove(f"{out}/{trial}-round0002.parquet")
    (report,) = check(str(out))
    assert report.problems == ["no readable row for round(s) 2"]
    code, _, err = cli(capsys, "run", "--out", str(out), "--set", "acquisition.name=margin", *FAST)
    assert code == 0, err
    assert "rows of round(s) 2 are missing or unreadable" in err and "bit for bit" in err
    assert rows(out) == finished[1]  # round 2 recomputed exactly, rounds 1 and 3 reproduced
    assert not check(str(out))[0].problems


def test_a_tampered_row_fails_the_integrity_check_and_nothing_is_overwritten(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    trial = trial_of(out)
    path = f"{out}/{trial}-round0001.parquet"
    frame = pd.read_parquet(path)
    frame["test_acc"] = 0.5
    frame.to_parquet(path)
    before = open(path, "rb").read()
    os.remove(f"{out}/{trial}-round0003.parquet")
    code, _, err = cli(capsys, "run", "--out", str(out), "--set", "acquisition.name=margin", *FAST)
    assert code == 1
    assert "Integrity check failed: round 1" in err and "test_acc was 0.5" in err
    assert open(path, "rb").read() == before


def rewrite_row(path: str, **change) -> None:
    """Change values of a saved row in place, keeping its Parquet schema (nulls stay null)."""
    table = pq.read_table(path)
    (row,) = table.to_pylist()
    row.update({k: (v(row[k]) if callable(v) else v) for k, v in change.items()})
    pq.write_table(pa.Table.from_pylist([row], schema=table.schema), path)


# The saved rows say another CPU capability computed them than the one this process runs on.
OTHER_ISA = "AVX2" if torch.backends.cpu.get_cpu_capability() != "AVX2" else "AVX512"


def _rerun_without_round_3(finished, tmp_path, capsys, **change) -> tuple[int, str, str, str]:
    """Rows 1 and 2 changed as ``change`` says (every row: the other CPU capability where asked),
    round 3's row deleted so that the trial is recomputed from round 1 and both are checked."""
    out = copy_of(finished, tmp_path)
    trial = trial_of(out)
    isa = change.pop("cpu_isa", None)
    for round_ in (1, 2):
        path = f"{out}/{trial}-round{round_:04d}.parquet"
        rewrite_row(path, **(change if round_ == 1 else {}), **({"cpu_isa": isa} if isa else {}))
    os.remove(f"{out}/{trial}-round0003.parquet")
    code, _, err = cli(capsys, "run", "--out", str(out), "--set", "acquisition.name=margin", *FAST)
    return code, err, str(out), trial


def test_a_row_from_another_cpu_within_the_tolerance_is_kept_with_a_note(finished, tmp_path, capsys):
    """A mixed cluster: the row was computed with other vectorised kernels, its floats differ in the last bit."""
    nudged = lambda x: math.nextafter(x, math.inf)  # noqa: E731 - one ulp up
    code, err, out, trial = _rerun_without_round_3(finished, tmp_path, capsys, cpu_isa=OTHER_ISA, test_loss=nudged)
    assert code == 0, err
    (note,) = [line for line in err.splitlines() if "computed on" in line]
    here = torch.backends.cpu.get_cpu_capability()
    threads = f"{finished[1][0]['threads']} thread(s)"  # the same threads: only the CPU capability differs
    assert f"({OTHER_ISA}, {threads}, torch {torch.__version__})" in note
    assert f"({here}, {threads}, torch {torch.__version__})" in note
    assert "not bit for bit" in note
    table = rows(out)
    assert [r["round"] for r in table] == [1, 2, 3]
    # The saved rows are kept as they were (written once); round 3 is this machine's.
    assert table[0]["test_loss"] == nudged(finished[1][0]["test_loss"]) and table[0]["cpu_isa"] == OTHER_ISA
    assert table[2] == finished[1][2]
    assert not check(out)[0].problems


def test_a_row_computed_with_other_threads_is_checked_as_another_machines(finished, tmp_path, capsys):
    """Some kernels split their sums by thread: a row computed with another thread count (a
    suite's one-CPU trial resumed by a run of its own) is checked within the tolerance."""
    threads = finished[1][0]["threads"]
    nudged = lambda x: math.nextafter(x, math.inf)  # noqa: E731 - one ulp up
    code, err, out, _ = _rerun_without_round_3(finished, tmp_path, capsys, threads=threads + 1, test_loss=nudged)
    assert code == 0, err
    (note,) = [line for line in err.splitlines() if "computed on" in line]
    assert f"{threads + 1} thread(s)" in note and f"{threads} thread(s)" in note
    assert [r["round"] for r in rows(out)] == [1, 2, 3]


@pytest.mark.parametrize(
    "change, column",
    [
        ({"test_loss": lambda x: x * 1.01}, "test_loss"),  # far beyond float noise
        ({"epochs": lambda n: n + 1}, "epochs"),  # a count is never within a tolerance
        ({"acquired": lambda a: a[:-1] + [a[-1] + 1]}, "acquired"),  # nor a pick
    ],
)
def test_a_row_from_another_cpu_beyond_the_tolerance_stops_in_one_line(finished, tmp_path, capsys, change, column):
    code, err, out, trial = _rerun_without_round_3(finished, tmp_path, capsys, cpu_isa=OTHER_ISA, **change)
    assert code == 1
    # The note that the rows come from another machine, then the error in one line naming both.
    line = one_line("\n".join(line for line in err.splitlines() if not line.startswith("note:")))
    assert "Integrity check failed: round 1" in line and f"({column} was" in line
    here = torch.backends.cpu.get_cpu_capability()
    threads = f"{finished[1][0]['threads']} thread(s)"
    assert f"({OTHER_ISA}, {threads}, torch" in line and f"({here}, {threads}, torch" in line
    assert "Nothing was overwritten" in line
    assert not os.path.exists(f"{out}/{trial}-round0003.parquet")


def test_on_the_same_kind_of_machine_one_ulp_is_a_failed_integrity_check(finished, tmp_path, capsys):
    nudged = lambda x: math.nextafter(x, math.inf)  # noqa: E731
    code, err, _, _ = _rerun_without_round_3(finished, tmp_path, capsys, test_loss=nudged)
    assert code == 1
    assert "Integrity check failed: round 1" in err and "(test_loss was" in err and "computed on" not in err


def test_a_corrupt_checkpoint_is_passed_over_for_the_previous_generation(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    trial = trial_of(out)
    newest = f"{out}/_warmstart/{trial}/checkpoint-0003.pt"
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    (report,) = check(str(out))
    assert not report.problems and any("checkpoint-0003.pt" in n and "corrupt" in n for n in report.notes)
    # The trial resumes from round 2's checkpoint and re-runs round 3, which must match its row.
    code, _, err = cli(
        capsys, "run", "--out", str(out), "--set", "acquisition.name=margin", *FAST, "--set", "rounds.max_rounds=4"
    )
    assert code == 0, err
    assert "checkpoint-0003.pt" in err and "corrupt" in err
    # Round 3 re-ran under max_rounds 4 (its row records that); everything it computed is the same.
    grown = [{k: v for k, v in r.items() if k != "cfg.rounds.max_rounds"} for r in rows(out)]
    same = [{k: v for k, v in r.items() if k != "cfg.rounds.max_rounds"} for r in finished[1]]
    assert len(grown) == 4 and grown[:3] == same


def test_every_checkpoint_corrupt_recomputes_from_round_one_and_checks_the_rows(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    for path in glob.glob(f"{out}/_warmstart/*/checkpoint-*.pt"):
        with open(path, "wb") as f:
            f.write(b"not a checkpoint")
    (report,) = check(str(out))
    assert any("corrupt" in p for p in report.problems)
    code, _, err = cli(capsys, "run", "--out", str(out), "--set", "acquisition.name=margin", *FAST)
    assert code == 0, err
    assert "no intact checkpoint" in err
    assert rows(out) == finished[1]
    assert not check(str(out))[0].problems


def _tmpfs(path, size: str, options: str = "") -> bool:
    """Mount a small tmpfs at ``path`` where this process may (root with CAP_SYS_ADMIN)."""
    path.mkdir()
    opts = f"size={size}" + (f",{options}" if options else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


def _umount(path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def test_a_full_disk_stops_in_one_line_leaves_no_temporary_file_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "small"
    mounted = _tmpfs(out, "96k")
    calls = {"n": 0}
    if not mounted:  # no tmpfs here: the same OSError the kernel raises, on the third write
        import engine.storage.store

        real = engine.storage.store.os.fsync

        def full(fd):
            calls["n"] += 1
            if calls["n"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd)

        monkeypatch.setattr(engine.storage.store.os, "fsync", full)
    try:
        code, _, err = cli(capsys, "run", "--out", str(out), "--set", "rounds.max_rounds=8", *FAST[:4], "--quiet")
        assert code == 1, err
        assert "No space left on device" in one_line(err)
        assert not glob.glob(f"{out}/**/.tmp-*", recursive=True) and not glob.glob(f"{out}/.tmp-*")
        written = sorted(pd.read_parquet(out)["round"]) if glob.glob(f"{out}/*.parquet") else []
        assert written == list(range(1, len(written) + 1))  # complete rows only, in order
    finally:
        if mounted:
            _umount(out)


def test_out_that_is_a_file_or_read_only_is_refused_up_front(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    code, _, err = cli(capsys, "run", "--out", str(a_file), *FAST)
    assert code == 2 and "is a file, not a folder" in one_line(err)
    read_only = tmp_path / "ro"
    if _tmpfs(read_only, "1m", "ro"):
        try:
            code, _, err = cli(capsys, "run", "--out", str(read_only / "out"), *FAST)
        finally:
            _umount(read_only)
    else:  # root ignores permission bits: the kernel's answer on a read-only file system, simulated
        import engine.storage.store

        def read_only_fs(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(engine.storage.store.os, "replace", read_only_fs)
        code, _, err = cli(capsys, "run", "--out", str(read_only / "out"), *FAST)
    assert code == 2 and "Read-only file system" in one_line(err)
    code, _, err = cli(capsys, "report", str(tmp_path), "--out", str(a_file))
    assert code == 2 and "warmstart: error:" in one_line(err)


def test_a_second_process_on_the_same_trial_is_refused_while_the_first_holds_it(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), *FAST[:4], "--set", "rounds.max_rounds=1", "--quiet"]) == 0
    trial = trial_of(out)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; from engine.storage.store import TrialStore; s = TrialStore({str(out)!r}, {trial!r}); s.lock(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = cli(capsys, "run", "--out", str(out), *FAST[:4], "--set", "rounds.max_rounds=2", "--quiet")
        assert code == 1
        assert f"is already running in pid {holder.pid}" in one_line(err)
        assert sorted(pd.read_parquet(out)["round"]) == [1]  # no work done twice
    finally:
        holder.kill()
        holder.wait()
    # The lock died with its process: no stale lock to clear by hand.
    assert main(["run", "--out", str(out), *FAST[:4], "--set", "rounds.max_rounds=2", "--quiet"]) == 0
    assert sorted(pd.read_parquet(out)["round"]) == [1, 2]


# --- strategies fail cleanly, and their identity is honest ---------------------------------


@pytest.fixture
def isolated(monkeypatch):
    for registry in (ACQUISITION_STRATEGIES, INIT_STRATEGIES):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(plugins, "_loaded", {})


def plugin(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.usefixtures("isolated")
def test_a_failing_strategy_ends_the_trial_in_one_line_and_its_fix_is_another_trial(tmp_path, capsys):
    broken = plugin(
        tmp_path,
        "failing.py",
        """
        from strategies.acquisition import register

        @register("picky", needs=("probs",))
        def picky(outputs, k, rng):
            raise ValueError("no good samples left")
        """,
    )
    out = str(tmp_path / "out")
    code, _, err = cli(capsys, "run", "--out", out, "--plugin", broken, "--set", "acquisition.name=picky", *FAST)
    assert code == 1
    assert one_line(err) == (
        "warmstart: error: The acquisition strategy 'picky' failed in round 2: ValueError: no good samples left"
    )
    assert sorted(pd.read_parquet(out)["round"]) == [1]  # the completed round is kept
    code, _, err = cli(
        capsys, "--debug", "run", "--out", out, "--plugin", broken, "--set", "acquisition.name=picky", *FAST
    )
    assert code == 1 and "Traceback" in err and "no good samples left" in err
    fixed = plugin(
        tmp_path,
        "fixed.py",
        """
        from strategies.acquisition import register

        @register("picky", needs=("probs",))
        def picky(outputs, k, rng):
            return list(range(k))
        """,
    )
    plugins._loaded.clear()
    ACQUISITION_STRATEGIES._entries.pop("picky")
    # Round 1 was made with failing.py: the fixed code does not continue that trial...
    code, _, err = cli(capsys, "run", "--out", out, "--plugin", fixed, "--set", "acquisition.name=picky", *FAST)
    assert code == 2 and "Plugin failing.py changed since trial" in one_line(err)
    assert "(not used) now" in err and sorted(pd.read_parquet(out)["round"]) == [1]
    # ... it runs as a trial of its own.
    args = ["run", "--out", out, "--plugin", fixed, "--set", "acquisition.name=picky", "--set", "trial_id=fixed", *FAST]
    assert main(args) == 0
    table = pd.read_parquet(out)
    assert sorted(table[table["trial_id"] == "fixed"]["round"]) == [1, 2, 3]


@pytest.mark.usefixtures("isolated")
def test_strategies_that_break_their_contract_are_named_with_what_was_expected(tmp_path, capsys):
    path = plugin(
        tmp_path,
        "bad.py",
        """
        import torch
        from strategies.acquisition import register
        from strategies.init import register as register_init

        @register("too_few")
        def too_few(outputs, k, rng):
            return list(range(k - 1))

        @register_init("wrong_head")
        def wrong_head(prev, fresh):
            fresh.head = torch.nn.Linear(fresh.head.in_features, 5)
            return fresh
        """,
    )
    code, _, err = cli(
        capsys, "run", "--out", str(tmp_path / "a"), "--plugin", path, "--set", "acquisition.name=too_few", *FAST
    )
    assert code == 1
    assert "'too_few' in round 2 broke its contract: expected 100 distinct integer positions" in one_line(err)
    code, _, err = cli(
        capsys, "run", "--out", str(tmp_path / "b"), "--plugin", path, "--set", "init.name=wrong_head", *FAST
    )
    assert code == 1
    assert "init strategy 'wrong_head' in round 2 broke its contract" in one_line(err)
    assert "'head.weight' has shape (5, 100) (expected (10, 100))" in err


@pytest.mark.usefixtures("isolated")
def test_a_plugin_cannot_silently_replace_a_built_in_and_an_override_changes_the_identity(tmp_path, capsys):
    body = """
        from strategies.acquisition import register

        @register("margin", needs=("probs",){extra})
        def margin(outputs, k, rng):
            '''Not the built-in margin.'''
            return list(range(k))
        """
    silent = plugin(tmp_path, "silent.py", body.format(extra=""))
    code, _, err = cli(capsys, "run", "--out", str(tmp_path / "x"), "--plugin", silent, *FAST)
    assert code == 2 and "acquisition strategy 'margin' is already registered" in one_line(err)
    assert not (tmp_path / "x").exists()

    plugins._loaded.clear()
    builtin = str(tmp_path / "builtin")
    assert main(["run", "--out", builtin, "--set", "acquisition.name=margin", *FAST]) == 0
    loud = plugin(tmp_path, "loud.py", body.format(extra=", override=True"))
    out = str(tmp_path / "override")
    assert main(["run", "--out", out, "--plugin", loud, "--set", "acquisition.name=margin", *FAST]) == 0
    ours, theirs = pd.read_parquet(builtin), pd.read_parquet(out)
    assert ours["trial_id"][0] != theirs["trial_id"][0]  # another computation, another trial
    assert ours["overrides"].isna().all() and ours["plugins"].isna().all()
    digest = hashlib.sha256(open(loud, "rb").read()).hexdigest()[:12]
    assert set(theirs["overrides"]) == {'{"acquisition": "margin=loud.py"}'}
    assert set(theirs["plugins"]) == {f'{{"loud.py": "{digest}"}}'}


def notebook_cell(namespace: dict, text: str) -> bytes:
    """Run ``text`` as IPython runs a cell: compiled under a cell's name whose source
    ``linecache`` (so ``inspect.getsource``) finds; returns the cell's bytes."""
    name = f"<ipython-input-{uuid.uuid4().hex[:12]}>"
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    exec(compile(text, name, "exec"), namespace)
    return text.encode()


@pytest.mark.usefixtures("isolated")
def test_a_notebook_cell_edited_between_runs_stops_the_resume_in_one_line(tmp_path):
    """A notebook registers a strategy, runs 2 rounds, edits the cell, runs again into the
    same out: the cell run again replaces the strategy with a warning, and the trial does
    not continue with rows of two versions; the code restored, it continues."""
    cell = '@register("nb_lowest")\ndef nb_lowest(outputs, k, rng):\n    return list(range({start}, {start} + k))\n'
    namespace = {"__name__": "__main__", "register": acquisition.register}

    def run_cell(text: str) -> str:
        return hashlib.sha256(notebook_cell(namespace, text)).hexdigest()[:12]  # what getsource finds: the cell

    old = run_cell(cell.format(start=0))
    config = {"device": "cpu", "acquisition": {"name": "nb_lowest"}, "convergence": {"max_epochs": 4}}
    out = str(tmp_path / "out")
    two = ws.run_trial({**config, "rounds": {"max_rounds": 2}}, out)
    assert two["plugins"].tolist() == [f'{{"__main__.nb_lowest": "{old}"}}'] * 2
    assert two["overrides"].isna().all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_cell(cell.format(start=0)) == old  # the same cell again: silent

    edited = cell.format(start=7)
    new = hashlib.sha256(edited.encode()).hexdigest()[:12]
    with pytest.warns(PluginChanged, match=f"'nb_lowest' replaced by a changed version of __main__.nb_lowest "
                      rf"\(sha256 {old} -> {new}\)"):  # fmt: skip
        run_cell(edited)
    files = [p for p in glob.glob(f"{out}/**", recursive=True) if os.path.isfile(p)]
    before = {p: os.path.getmtime(p) for p in files}
    trial_id = two["trial_id"][0]
    for attempt in (lambda: ws.run_trial({**config, "rounds": {"max_rounds": 3}}, out), lambda: ws.Trial(config, out)):
        with pytest.raises(ConfigError) as info:
            attempt()
        assert str(info.value) == (
            f"Plugin __main__.nb_lowest changed since trial {trial_id} ran round 1 in {out}: sha256 {old} then, {new} "
            "now, and one trial must not mix two versions of its code; restore that code, or run the new one into "
            "another out or under another trial_id."
        )
    now = [p for p in glob.glob(f"{out}/**", recursive=True) if os.path.isfile(p)]
    assert {p: os.path.getmtime(p) for p in now} == before  # no file written (the write probe leaves none)

    with pytest.warns(PluginChanged):
        run_cell(cell.format(start=0))  # the code restored: the trial goes on
    three = ws.run_trial({**config, "rounds": {"max_rounds": 3}}, out)
    assert three["round"].tolist() == [1, 2, 3] and set(three["trial_id"]) == {trial_id}
    assert set(three["plugins"]) == {f'{{"__main__.nb_lowest": "{old}"}}'}


@pytest.mark.usefixtures("isolated")
def test_a_notebook_helper_edited_between_runs_stops_the_resume_too(tmp_path):
    """The strategy's cell unchanged, the helper it calls (another cell) edited and run again:
    the strategy now runs other code, so the trial does not continue (the hash covers the
    functions of __main__ a builder names, as they are when the trial starts)."""
    namespace = {"__name__": "__main__", "register": acquisition.register}

    def run_cell(text: str) -> bytes:
        return notebook_cell(namespace, text)

    helper = "def nb_first(k):\n    return list(range({start}, {start} + k))\n"
    cell = run_cell('@register("nb_helped")\ndef nb_helped(outputs, k, rng):\n    return nb_first(k)\n')

    def digest(helper_text: bytes) -> str:
        return hashlib.sha256(cell + b"\0nb_first\0" + helper_text).hexdigest()[:12]

    old = digest(run_cell(helper.format(start=0)))
    config = {"device": "cpu", "acquisition": {"name": "nb_helped"}, "convergence": {"max_epochs": 4}}
    out = str(tmp_path / "out")
    two = ws.run_trial({**config, "rounds": {"max_rounds": 2}}, out)
    assert two["plugins"].tolist() == [f'{{"__main__.nb_helped": "{old}"}}'] * 2
    new = digest(run_cell(helper.format(start=5)))  # no warning: no registration ran again
    with pytest.raises(ConfigError) as info:
        ws.run_trial({**config, "rounds": {"max_rounds": 3}}, out)
    assert str(info.value).startswith(
        f"Plugin __main__.nb_helped changed since trial {two['trial_id'][0]} ran round 1 in {out}: "
        f"sha256 {old} then, {new} now"
    )
    run_cell(helper.format(start=0))  # the helper restored: the trial goes on
    three = ws.run_trial({**config, "rounds": {"max_rounds": 3}}, out)
    assert three["round"].tolist() == [1, 2, 3] and set(three["plugins"]) == {f'{{"__main__.nb_helped": "{old}"}}'}


@pytest.mark.usefixtures("isolated")
def test_a_strategy_redefined_between_two_rounds_of_a_live_trial_stops_it_in_one_line(tmp_path):
    """ws.Trial, round 1, then the strategy's cell edited and run again: the next round would
    run the new code under the old hash, so it is refused and nothing is written; the code
    restored, the same Trial goes on."""
    cell = '@register("nb_live")\ndef nb_live(outputs, k, rng):\n    return list(range({start}, {start} + k))\n'
    namespace = {"__name__": "__main__", "register": acquisition.register}

    def run_cell(text: str) -> str:
        return hashlib.sha256(notebook_cell(namespace, text)).hexdigest()[:12]

    old = run_cell(cell.format(start=0))
    out = str(tmp_path / "out")
    config = {"device": "cpu", "acquisition": {"name": "nb_live"}, "convergence": {"max_epochs": 4}}
    trial = ws.Trial({**config, "rounds": {"max_rounds": 3}}, out)
    assert next(trial).round == 1
    with pytest.warns(PluginChanged):
        new = run_cell(cell.format(start=7))
    files = sorted(os.listdir(out))
    with pytest.raises(ConfigError) as info:
        next(trial)
    assert str(info.value) == (
        f"Plugin __main__.nb_live changed while trial {trial.trial_id} ran, before its round 2: sha256 {old} then, "
        f"{new} now, and one trial must not mix two versions of its code; restore that code to go on, or run the "
        "new one into another out or under another trial_id."
    )
    assert sorted(os.listdir(out)) == files  # round 2 not written
    with pytest.warns(PluginChanged):
        run_cell(cell.format(start=0))
    assert [r.round for r in trial] == [2, 3]
    assert set(pd.read_parquet(out)["plugins"]) == {f'{{"__main__.nb_live": "{old}"}}'}


@pytest.mark.usefixtures("isolated")
def test_divergence_ends_the_round_and_stops_the_trial(tmp_path, capsys):
    path = plugin(
        tmp_path,
        "poison.py",
        """
        import torch
        from strategies.init import register

        @register("poison")
        def poison(prev, fresh):
            with torch.no_grad():
                prev.head.bias.fill_(float("inf"))
            return prev
        """,
    )
    out = str(tmp_path / "out")
    argv = [
        "run",
        "--out",
        out,
        "--plugin",
        path,
        "--set",
        "init.name=poison",
        *FAST[:4],
        "--set",
        "rounds.max_rounds=3",
    ]
    code, _, err = cli(capsys, *argv, "--quiet")
    assert code == 1 and "diverged in round 2" in one_line(err)
    table = pd.read_parquet(out).sort_values("round")
    assert table["stop_reason"].tolist() == ["threshold", "diverged"] or table["stop_reason"].tolist()[1] == "diverged"
    assert table["epochs"].tolist()[1] == 1  # not 1,000 epochs of NaN
    code, _, err = cli(capsys, *argv, "--quiet")  # resuming a stopped trial runs nothing more
    assert code == 1 and len(pd.read_parquet(out)) == 2
    code, _, err = cli(capsys, *argv, "--set", "convergence.on_diverge=continue", "--quiet")
    assert code == 0, err
    assert len(pd.read_parquet(out)) == 3


# --- resources are checked before they are waited for ----------------------------------------


def test_an_unsatisfiable_worker_request_is_refused_up_front(tmp_path, capsys, ray_address):
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    out = tmp_path / "out"
    code, _, err = cli(capsys, "run", "--out", str(out), "--workers", "99", *FAST)
    assert code == 2
    assert f"99 worker(s) need 99 CPU (1 CPU and 0 GPU each), but the local Ray instance has {cpus} CPU" in one_line(
        err
    )
    assert not out.exists()


def test_an_unreachable_address_fails_fast_naming_it(tmp_path, capsys):
    began = time.monotonic()
    code, _, err = cli(capsys, "run", "--out", str(tmp_path / "out"), "--address", "127.0.0.1:9", *FAST)
    assert code == 2 and "Cannot reach a Ray cluster at '127.0.0.1:9'" in one_line(err)
    assert time.monotonic() - began < 60  # a generous bound: the point is no multi-minute hang


def test_progress_of_a_results_folder_that_does_not_exist_yet(tmp_path):
    store = TrialStore(str(tmp_path / "not-yet"), "t")
    assert store.rows() == [] and store.load_status() is None


@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path):
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time, ray; from engine.trial.distributed import init_ray; init_ray(None, num_cpus=1); "
            "print(ray._private.worker._global_node.get_session_dir_path(), flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    session = os.path.basename(driver.stdout.readline().strip())
    from engine.trial.reaper import session_processes

    assert session and session_processes(session)  # the instance is up: there is something to leave behind
    driver.kill()  # SIGKILL: no atexit, no ray.shutdown
    driver.wait()
    deadline = time.monotonic() + 60
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_processes(session) == []


def test_a_refused_suite_prints_only_its_error_line(tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    suite.write_text("name: tiny\nbase: {device: cpu, rounds: {max_rounds: 1}}\ngrid: {seed: [0, 1]}\n")
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    code, out, err = cli(capsys, "suite", str(suite), "--out", str(a_file))
    assert code == 2 and out == ""
    assert "is a file, not a folder" in one_line(err)
    code, out, err = cli(capsys, "suite", str(suite), "--out", str(tmp_path / "x"), "--set", "optimizer.lr=-1")
    assert code == 2 and out == "" and "'optimizer.lr'" in one_line(err)
    assert not (tmp_path / "x").exists()


def test_a_joined_cluster_is_waited_for_with_a_message_then_refused(ray_address, capsys):
    from engine.errors import ConfigError
    from engine.trial.distributed import check_resources

    began = time.monotonic()
    with pytest.raises(ConfigError, match=r"did not offer 99 CPU within 1s \(scaling.resource_timeout\)"):
        check_resources(99, 0.0, ray_address, timeout=1.0)
    assert time.monotonic() - began < 30
    assert "waiting up to 1s for the cluster to offer 99 CPU" in capsys.readouterr().err
    check_resources(1, 0.0, ray_address, timeout=1.0)  # what the cluster has passes at once


@pytest.mark.slow
def test_sigterm_ends_a_run_like_ctrl_c_and_it_resumes(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "engine", "run", "--out", str(out), *FAST[:4], "--set", "rounds.max_rounds=6"]
    argv += ["--set", "convergence.max_epochs=200"]
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not glob.glob(f"{out}/*-round0001.parquet") and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and "interrupted; completed rounds are saved" in err
    done = sorted(pd.read_parquet(out)["round"])
    assert done == list(range(1, len(done) + 1)) and len(done) < 6
    assert not glob.glob(f"{out}/**/.tmp-*", recursive=True)
    assert (
        main(
            [
                "run",
                "--out",
                str(out),
                *FAST[:4],
                "--set",
                "rounds.max_rounds=6",
                "--set",
                "convergence.max_epochs=200",
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(pd.read_parquet(out)["round"]) == [1, 2, 3, 4, 5, 6]
