"""docs/own-data.md cannot rot: its code is exactly docs/examples/, its data-writing
snippets run, its commands run (through engine.cli.main, in-process) on the files they
write, its sample `warmstart list` output and its errors are what the commands print,
and its model test passes.  The commands run in a scratch directory that sees the
repository's docs/ under the same relative path, so the data files land there."""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from engine.cli import main
from engine.compute.data import DATASETS, load_raw
from engine.compute.models import MODELS
from engine.schema import plugins
from engine.schema.config import DEFAULTS, merge, validate

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "own-data.md").read_text()
FAST = ["--set", "device=cpu", "--set", "rounds.max_rounds=2", "--set", "convergence.max_epochs=3", "--quiet"]
PLUGIN = "docs/examples/my_dataset_and_model.py"


@pytest.fixture
def scratch(monkeypatch, tmp_path):
    """Datasets and models the plugin registers vanish after the test; the plugin counts as
    not loaded; the working directory is a scratch one with docs/ linked into it."""
    for registry in (DATASETS, MODELS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(plugins, "_loaded", {})
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    monkeypatch.chdir(tmp_path)
    modules = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - modules:
        if name.startswith("warmstart_plugin_"):
            del sys.modules[name]


def block_after(marker: str) -> str:
    """The fenced code block that follows ``marker`` in the guide."""
    at = GUIDE.index(marker)
    match = re.compile(r"```[a-z]*\n(.*?)```", re.S).search(GUIDE, at)
    return match.group(1)


def commands_after(marker: str) -> list[list[str]]:
    return [shlex.split(line) for line in block_after(marker).splitlines() if line.strip()]


def write_the_data() -> dict:
    namespace: dict = {}
    exec(compile(block_after("<!-- write the data -->"), "own-data.md", "exec"), namespace)
    return namespace


def test_the_guide_shows_the_example_files_exactly():
    shown = re.findall(r"<!-- file: (\S+) -->", GUIDE)
    assert shown == ["docs/examples/my_data.yaml", "docs/examples/my_dataset_and_model.py"]
    for path in shown:
        assert block_after(f"<!-- file: {path} -->") == (ROOT / path).read_text(), path


def test_the_files_example_runs_on_the_data_it_writes(scratch, capsys):
    write_the_data()
    assert sorted(p.name for p in scratch.glob("my_*")) == ["my_test.npz", "my_train.npz"]
    (command,) = commands_after("<!-- commands: files -->")
    assert command[:2] == ["warmstart", "run"]
    assert main([*command[1:], *FAST]) == 0, capsys.readouterr().err
    table = pd.read_parquet(scratch / "results" / "my_data")
    assert sorted(table["round"]) == [1, 2] and list(table["n_labeled"]) == [50, 100]
    assert set(table["cfg.dataset.name"]) == {"files"} and set(table["cfg.model.name"]) == {"tabular_mlp"}
    assert table["test_acc"].iloc[-1] > 0.4  # 3 classes: better than chance


def test_the_other_formats_hold_the_same_data(scratch):
    namespace = write_the_data()
    exec(compile(block_after("<!-- write the other formats -->"), "own-data.md", "exec"), namespace)
    npz = load_raw("files", ".", False, {"train": "my_train.npz"})
    parquet = load_raw("files", ".", False, {"train": "my_train.parquet", "labels": "label"})
    pt = load_raw("files", ".", False, {"train": "my_train.pt"})
    for raw in (parquet, pt):
        np.testing.assert_array_equal(raw.train.inputs, npz.train.inputs)
        np.testing.assert_array_equal(raw.train.labels, npz.train.labels)
    assert npz.train.inputs.shape == (500, 12) and npz.num_classes == 3


@pytest.mark.usefixtures("scratch")
@pytest.mark.parametrize("marker", re.findall(r"<!-- error: (.*?) -->", GUIDE))
def test_the_errors_shown_are_what_warmstart_prints(marker, capsys, tmp_path):
    shown = re.search(re.escape(f"<!-- error: {marker} -->") + r"\n`(.*)`\n", GUIDE).group(1)
    out = tmp_path / "bad"
    assert main(["run", *shlex.split(marker), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == shown
    assert not out.exists()


@pytest.mark.usefixtures("scratch")
def test_the_plugin_commands_run(capsys):
    listing, run = commands_after("<!-- commands: plugin -->")
    assert listing[:2] == ["warmstart", "list"] and run[:2] == ["warmstart", "run"]
    assert main(listing[1:]) == 0
    listed = capsys.readouterr().out.splitlines()
    for line in block_after("`warmstart list` now shows, among the built-ins:").splitlines():
        assert line in listed, line
    assert main([*run[1:], *FAST]) == 0, capsys.readouterr().err
    table = pd.read_parquet("results/blobs")
    assert set(table["cfg.dataset.name"]) == {"blobs"} and set(table["cfg.model.name"]) == {"tabular_mlp"}
    assert len(table) == 2
    # A dataset's and a model's code identify the trial's code as a strategy's do: the file's hash.
    digest = hashlib.sha256((ROOT / PLUGIN).read_bytes()).hexdigest()[:12]
    assert set(table["plugins"]) == {f'{{"my_dataset_and_model.py": "{digest}"}}'}


@pytest.mark.usefixtures("scratch")
def test_the_plugin_model_refuses_inputs_it_cannot_take(capsys, tmp_path):
    code = main(["run", "--plugin", PLUGIN, "--set", "model=tabular_mlp", "--out", str(tmp_path / "bad"), *FAST])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "warmstart: error: tabular_mlp needs tabular inputs [F], got shape [1, 8, 8]."
    )


@pytest.mark.usefixtures("scratch")
def test_the_guide_model_test_passes():
    plugins.load_plugins([PLUGIN])
    namespace: dict = {}
    exec(compile(block_after("## Testing your model"), "own-data.md", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0]()


def test_the_mnist1d_example_config_validates():
    snippet = yaml.safe_load(block_after("## Dataset parameters: `mnist1d`"))
    cfg = validate(merge(DEFAULTS, snippet))
    assert (cfg.dataset.name, cfg.dataset.size, cfg.dataset.eval) == ("mnist1d", 4000, "test")


def test_the_model_table_lists_every_built_in_model():
    table = GUIDE[GUIDE.index("## What the built-in models take") :]
    builtin = [e.name for e in MODELS.entries() if e.fn.__module__ == "engine.compute.models"]
    assert sorted(re.findall(r"^\| `(\w+)` \|", table, re.M)) == sorted(builtin)
