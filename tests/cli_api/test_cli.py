"""engine/cli.py: ``warmstart run`` and ``warmstart list``, in-process and as a subprocess.

Every invalid input: exit status 2, exactly one line on stderr starting with
'warmstart: error:', no traceback, and nothing created under --out."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from engine.cli import main
from engine.compute.data import DATASETS
from engine.compute.models import MODELS
from strategies.acquisition import ACQUISITION_STRATEGIES
from strategies.init import INIT_STRATEGIES

# Subprocesses too: one intra-op thread (see one_torch_thread in conftest.py).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
FAST = ["--set", "device=cpu", "--set", "rounds.max_rounds=2"]
ROUND_LINE = re.compile(
    r"^\s*(\d+)/(\d+)\s+(\d+)\s+(\d+)\s+(threshold|plateau|max_epochs)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$"
)

PLUGIN = '''
import numpy as np
from strategies.acquisition import register
from strategies.init import register as register_init


@register("lowest_confidence_plugin", needs=("probs",))
def lowest_confidence_plugin(outputs, k, rng, temperature: float = 2.0):
    """Least confident samples first."""
    return np.argsort(outputs.probs.max(1).values.numpy(), kind="stable")[:k]


@register_init("halve_plugin")
def halve_plugin(prev, fresh, factor: float = 0.5):
    """Halve the previous weights."""
    return prev
'''


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(capsys, out_dir, *argv: str) -> str:
    """Run ``warmstart run --out out_dir *argv``; check the one-line refusal; return it."""
    code, _, err = run_cli(capsys, "run", "--out", str(out_dir), *argv)
    assert code == 2, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("warmstart: error: "), err
    assert "Traceback" not in err
    assert not os.path.exists(out_dir), f"{out_dir} was created: {os.listdir(out_dir)}"
    return lines[0]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- bad input: one line, status 2, nothing written ------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--set", "init.name=bogus"], ["'bogus'", "random", "warm", "shrink_perturb"]),
        (["--set", "acquisition.name=no_such_rule"], ["'no_such_rule'", "margin", "random"]),
        (["--set", "model.name=vgg"], ["'vgg'", "mlp", "resnet18", "logreg"]),
        (["--set", "dataset.name=mnist"], ["'mnist'", "digits", "cifar10"]),
        (["--set", "init.shrink=1.5"], ["'shrink'", "[0, 1]", "1.5"]),
        (["--set", "init.perturb=-0.5"], ["'perturb'", ">= 0", "-0.5"]),
        (["--set", "rounds.per_round=0"], ["'rounds.per_round'", "Got 0"]),
        (["--set", "rounds.per_round=-3"], ["'rounds.per_round'"]),
        (["--set", "rounds.per_round=1199"], ["'rounds.per_round'", "1198", "1199"]),
        (["--set", "rounds.initial=5000"], ["'rounds.initial'", "1198"]),
        (["--set", "convergence.train_acc=0"], ["'convergence.train_acc'", "(0, 1]"]),
        (["--set", "convergence.train_acc=1.5"], ["'convergence.train_acc'", "(0, 1]"]),
        (["--set", "dataset.holdout=1"], ["'dataset.holdout'", "(0, 1)"]),
        (["--set", "batch_size=abc"], ["'batch_size'", "'abc'"]),
        (["--set", "bogus_key=1"], ["'bogus_key'"]),
        (["--set", "rounds.per_rond=3"], ["'rounds.per_rond'", "Did you mean 'per_round'"]),
        (["--set", "convergance.train_acc=0.9"], ["'convergance'", "Did you mean 'convergence'"]),
        (["--set", "no-equals-sign"], ["dotted.key=value"]),
        (
            ["--set", "init.foo=1"],
            ["'foo'", "shrink_perturb(shrink=0.4, perturb=0.1, bn_stats='fresh')"],
        ),
        (["--set", "acquisition.temperature=2"], ["'temperature'", "random()"]),
        (["--set", "model.widht=3"], ["'widht'", "mlp(activation='tanh', bias=True, width=100, depth=3"]),
        (["--plugin", "/nonexistent/plugin_file.py"], ["plugin_file.py"]),
        (["--plugin", "no_such_module_xyz"], ["no_such_module_xyz"]),
    ],
)
def test_invalid_values_refused(capsys, tmp_path, argv, expected):
    line = assert_refused(capsys, tmp_path / "out", *argv)
    for part in expected:
        assert part in line, line


def test_missing_config_file_refused(capsys, tmp_path):
    line = assert_refused(capsys, tmp_path / "out", "--config", str(tmp_path / "absent.yaml"))
    assert "absent.yaml" in line


@pytest.mark.parametrize(
    "text, expected",
    [
        ("seed: 0\ninit: name: warm\n", ["Malformed YAML", "bad.yaml", "line 2"]),
        ("rounds:\n  per_round: [1, 2\nseed: 1\n", ["Malformed YAML", "bad.yaml", "line"]),
        ("- seed\n- 0\n", ["bad.yaml", "mapping"]),
        ("rounds:\n  per_rond: 3\n", ["'rounds.per_rond'", "'per_round'"]),
        ("init: {name: shrink_perturb, shrink: 2}\n", ["'shrink'", "[0, 1]"]),
    ],
)
def test_bad_config_file_refused(capsys, tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = assert_refused(capsys, tmp_path / "out", "--config", str(path))
    for part in expected:
        assert part in line, line


def test_missing_dataset_refused(capsys, tmp_path):
    root = tmp_path / "empty_root"
    root.mkdir()
    line = assert_refused(
        capsys,
        tmp_path / "out",
        "--set",
        "dataset.name=cifar10",
        "--set",
        f"dataset.root={root}",
        "--set",
        "dataset.download=false",
    )
    assert str(root) in line
    assert "cifar-10" in line
    assert os.listdir(root) == []  # nothing downloaded or half-written there either


def test_plugin_that_fails_to_import_refused(capsys, tmp_path):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("raise RuntimeError('boom')\n")
    line = assert_refused(capsys, tmp_path / "out", "--plugin", str(plugin))
    assert "broken_plugin.py" in line and "boom" in line


def test_refused_input_leaves_existing_out_untouched(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli(capsys, "run", "--out", str(out), "--set", "init.shrink=1.5")
    assert code == 2 and err.startswith("warmstart: error:")
    assert sorted(os.listdir(out)) == ["keep.txt"]


def test_holdout_leaving_no_evaluation_samples_refused(capsys, tmp_path):
    line = assert_refused(capsys, tmp_path / "out", *FAST, "--set", "dataset.holdout=0.0001")
    assert "'dataset.holdout'" in line


@pytest.mark.slow
def test_invalid_input_as_subprocess(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--out", str(out), "--set", "init.shrink=1.5"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ONE_THREAD,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip("\n").splitlines()
    assert lines == ["warmstart: error: The 'shrink' parameter of shrink_perturb must be a float in [0, 1]. Got 1.5."]
    assert done.stdout == ""
    assert not out.exists()


# --- a valid run -----------------------------------------------------------------------------


def test_valid_run_prints_a_line_per_round_and_writes_rows(capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "run", "--out", str(out), *FAST, "--set", "rounds.per_round=50")
    assert code == 0, err
    assert "Traceback" not in err
    lines = [m for m in (ROUND_LINE.match(line) for line in stdout.splitlines()) if m]
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in lines] == [(1, 2, 100), (2, 2, 150)]
    table = pd.read_parquet(out).sort_values("round")
    assert list(table["round"]) == [1, 2]
    assert list(table["n_labeled"]) == [100, 150]
    for m, (_, row) in zip(lines, table.iterrows(), strict=True):
        assert int(m[4]) == row["epochs"]
        assert m[5] == row["stop_reason"]
        assert float(m[6]) == pytest.approx(row["train_acc"], abs=1e-4)
        assert float(m[7]) == pytest.approx(row["test_acc"], abs=1e-4)
    assert table["trial_id"].nunique() == 1
    assert table["trial_id"].iloc[0] in stdout


@pytest.mark.slow
def test_valid_run_as_subprocess(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--out", str(out), *FAST, "--set", "init=warm"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ONE_THREAD,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    table = pd.read_parquet(out)
    assert sorted(table["round"]) == [1, 2]
    assert set(table["cfg.init.name"]) == {"warm"}
    assert len([line for line in done.stdout.splitlines() if ROUND_LINE.match(line)]) == 2


def test_quiet_run_prints_no_round_lines(capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "run", "--quiet", "--out", str(out), *FAST)
    assert code == 0
    assert not [line for line in stdout.splitlines() if ROUND_LINE.match(line)]
    assert len(pd.read_parquet(out)) == 2


def test_run_with_config_file(capsys, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            seed: 3
            device: cpu
            init: {name: shrink_perturb, shrink: 0.6, perturb: 0.01}
            rounds: {initial: 80, per_round: 40, max_rounds: 2}
            """
        )
    )
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", "--config", str(config), "--set", "seed=4", "--out", str(out))
    assert code == 0, err
    table = pd.read_parquet(out).sort_values("round")
    assert list(table["n_labeled"]) == [80, 120]
    assert set(table["seed"]) == {4}
    assert set(table["shrink"]) == {0.6} and set(table["perturb"]) == {0.01}


# --- warmstart list ----------------------------------------------------------------------------


def test_list_prints_every_registered_name_with_parameters(capsys):
    code, stdout, err = run_cli(capsys, "list")
    assert code == 0, err
    for name in ("digits", "cifar10", "cifar100", "svhn", "mnist1d", "files"):
        assert re.search(rf"^\s+{name}\(", stdout, re.M), name
    assert set(DATASETS.names()) >= {"digits", "cifar10", "cifar100", "svhn", "mnist1d", "files"}
    assert "mnist1d(size=10000, " in stdout
    for expected in (
        "resnet18(width=16",
        "mlp(activation='tanh', bias=True, width=100, depth=3",
        "logreg(bias=True)",
        "random()",
        "warm()",
        "shrink_perturb(shrink=0.4, perturb=0.1, bn_stats='fresh')",
        "margin()",
    ):
        assert expected in stdout, expected
    for registry in (MODELS, INIT_STRATEGIES, ACQUISITION_STRATEGIES):
        for entry in registry.entries():
            assert entry.name in stdout
            for key, value in entry.defaults.items():
                assert f"{key}={value!r}" in stdout
    # the sections in order, each name under its own heading
    sections = [line for line in stdout.splitlines() if line and not line.startswith(" ")]
    assert sections == ["datasets:", "models:", "init strategies:", "acquisition strategies:"]
    acquisition = stdout.split("acquisition strategies:")[1]
    assert "margin()" in acquisition and "shrink_perturb(" not in acquisition
    assert "needs: probs" in acquisition


@pytest.mark.slow
def test_list_with_plugin_shows_its_strategies(tmp_path):
    """As a subprocess (the console script), so the plugin's registrations stay out of this process."""
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN)
    done = subprocess.run(["warmstart", "list", "--plugin", str(plugin)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "lowest_confidence_plugin(temperature=2.0)" in done.stdout
    assert "halve_plugin(factor=0.5)" in done.stdout
    assert "Least confident samples first." in done.stdout
    init_part, acquisition_part = done.stdout.split("acquisition strategies:")
    assert "halve_plugin" in init_part.split("init strategies:")[1]
    assert "lowest_confidence_plugin" in acquisition_part
    assert "shrink_perturb(shrink=0.4, perturb=0.1, bn_stats='fresh')" in done.stdout


@pytest.mark.slow
def test_plugin_strategy_usable_in_run_and_its_params_checked(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN)
    base = [sys.executable, "-m", "engine", "run", "--plugin", str(plugin), *FAST]
    out = tmp_path / "bad"
    bad = subprocess.run(
        [*base, "--out", str(out), "--set", "acquisition={name: lowest_confidence_plugin, temp: 3.0}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ONE_THREAD,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "lowest_confidence_plugin(temperature=2.0)" in bad.stderr
    assert not out.exists()

    out = tmp_path / "good"
    good = subprocess.run(
        [*base, "--out", str(out), "--set", "acquisition.name=lowest_confidence_plugin", "--set", "init=halve_plugin"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ONE_THREAD,
    )
    assert good.returncode == 0, good.stderr
    table = pd.read_parquet(out)
    assert set(table["cfg.acquisition.name"]) == {"lowest_confidence_plugin"}
    assert set(table["cfg.init.name"]) == {"halve_plugin"}
    assert sorted(table["n_labeled"]) == [100, 200]


def test_quickstart_help_says_what_the_suite_file_runs(capsys):
    """The help is read from engine/suites/quickstart.yaml: it names the suite's dataset (the
    file's base config), not another."""
    import yaml

    from engine.suite.suite_file import locate

    with open(locate("quickstart"), encoding="utf-8") as f:
        dataset = yaml.safe_load(f)["base"]["dataset"]["name"]
    for argv in (["quickstart", "--help"], ["--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        said = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "run the quickstart suite: " in said or "The quickstart suite: " in said
        assert dataset == "mnist1d" and "MNIST-1D" in said and "digits" not in said


@pytest.mark.slow
def test_a_plugin_file_edited_between_two_runs_stops_the_resume_with_one_line(tmp_path):
    """The same trial continued into the same --out after its plugin file changed: exit 2,
    one line naming the plugin and both hashes, nothing written; the rows say which code
    made them."""
    plugin, out = tmp_path / "mine.py", tmp_path / "out"
    plugin.write_text(PLUGIN)
    old = hashlib.sha256(plugin.read_bytes()).hexdigest()[:12]
    base = [sys.executable, "-m", "engine", "run", "--plugin", str(plugin), "--out", str(out), "--quiet"]
    base += ["--set", "device=cpu", "--set", "acquisition.name=lowest_confidence_plugin"]

    def run(rounds: int) -> subprocess.CompletedProcess:
        argv = [*base, "--set", f"rounds.max_rounds={rounds}"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=ONE_THREAD)

    assert run(1).returncode == 0
    rows = pd.read_parquet(out)
    assert rows["plugins"].tolist() == [f'{{"mine.py": "{old}"}}']
    plugin.write_text(PLUGIN.replace('kind="stable")[:k]', 'kind="stable")[-k:]'))  # most confident now
    new = hashlib.sha256(plugin.read_bytes()).hexdigest()[:12]
    assert new != old
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    done = run(2)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"warmstart: error: Plugin mine.py changed since trial {rows['trial_id'][0]} ran round 1 in {out}: sha256 "
        f"{old} then, {new} now, and one trial must not mix two versions of its code; restore that code, or run the "
        "new one into another out or under another trial_id."
    ]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files  # the write probe leaves none


@pytest.mark.parametrize(
    "argv, said",
    [
        (["run", "--set", "-=0"], "argument --set: expected one argument (`warmstart run --help` lists the options)"),
        ([], "the following arguments are required: COMMAND (`warmstart --help` lists the options)"),
        (["run", "--bogus"], "unrecognized arguments: --bogus (`warmstart --help` lists the options)"),
        (["run", "--workers", "two"], "argument --workers: invalid int value: 'two' (`warmstart run --help`"),
    ],
)
def test_a_malformed_command_line_is_one_line_and_exit_2(argv, said, capsys, tmp_path, monkeypatch):
    """argparse's own errors read as every other bad input: one line, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"warmstart: error: {said}")
    assert len(captured.err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
