"""docs/writing-strategies.md cannot rot: its code is exactly docs/examples/, its commands
run (through engine.cli.main, in-process), its sample `warmstart list` output is what the
command prints, its test snippet passes, and its suite file validates.  Also: `warmstart
list` describes every built-in strategy in one good line."""

from __future__ import annotations

import copy
import re
import shlex
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from engine.cli import main
from engine.schema import plugins
from engine.schema.config import DEFAULTS, merge, validate
from strategies.acquisition import ACQUISITION_STRATEGIES
from strategies.init import INIT_STRATEGIES

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "writing-strategies.md").read_text()
FAST = ["--set", "device=cpu", "--set", "rounds.max_rounds=2", "--set", "convergence.max_epochs=3", "--quiet"]


@pytest.fixture
def isolated(monkeypatch):
    """Strategies the plugin registers vanish after the test; the plugin counts as not loaded;
    relative plugin paths resolve from the repository root, as the guide says."""
    for registry in (ACQUISITION_STRATEGIES, INIT_STRATEGIES):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.chdir(ROOT)
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith("warmstart_plugin_"):
            del sys.modules[name]


def block_after(marker: str) -> str:
    """The fenced code block that follows ``marker`` in the guide."""
    at = GUIDE.index(marker)
    match = re.compile(r"```[a-z]*\n(.*?)```", re.S).search(GUIDE, at)
    return match.group(1)


def test_the_guide_shows_the_example_files_exactly():
    shown = re.findall(r"<!-- file: (\S+) -->", GUIDE)
    assert shown == ["docs/examples/my_strategies.py", "docs/examples/my_suite.yaml"]
    for path in shown:
        assert block_after(f"<!-- file: {path} -->") == (ROOT / path).read_text(), path


@pytest.mark.usefixtures("isolated")
def test_the_guide_commands_run_with_the_example_plugin(tmp_path, capsys):
    commands = [shlex.split(line) for line in block_after("<!-- commands -->").splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["warmstart", "list"], ["warmstart", "run"]]

    assert main(commands[0][1:]) == 0
    listed = capsys.readouterr().out
    sample = block_after("`warmstart list` now shows, among the built-ins:")
    for line in sample.splitlines():
        assert line in listed.splitlines(), line

    run = commands[1][1:]
    out = tmp_path / "mine"
    run[run.index("--out") + 1] = str(out)
    assert main([*run, *FAST]) == 0, capsys.readouterr().err
    table = pd.read_parquet(out)
    assert sorted(table["round"]) == [1, 2]
    assert set(table["cfg.acquisition.name"]) == {"tempered_entropy"} and set(table["cfg.init.name"]) == {"shrink_only"}
    assert set(table["shrink"]) == {0.5} and set(table["perturb"]) == {0.0}  # its `effective`
    assert len(table["acquired"].iloc[1]) == 100


@pytest.mark.usefixtures("isolated")
def test_the_guide_test_snippet_passes():
    plugins.load_plugins(["docs/examples/my_strategies.py"])
    snippet = block_after("## Testing your strategy")
    namespace: dict = {}
    exec(compile(snippet, "writing-strategies.md", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0]()


@pytest.mark.usefixtures("isolated")
def test_the_example_strategies_refuse_bad_parameters(capsys, tmp_path):
    out = tmp_path / "bad"
    code = main(
        ["run", "--plugin", "docs/examples/my_strategies.py", "--out", str(out)]
        + ["--set", "acquisition={name: tempered_entropy, temperature: -1}"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err == ("warmstart: error: The 'temperature' parameter of tempered_entropy must be a float > 0. Got -1.")
    assert "`The 'temperature' parameter of tempered_entropy must be a float > 0. Got -1.`" in GUIDE


@pytest.mark.usefixtures("isolated")
def test_the_example_suite_validates_with_its_plugin():
    suite = yaml.safe_load((ROOT / "docs" / "examples" / "my_suite.yaml").read_text())
    assert set(suite) == {"name", "base", "grid"}
    base = merge(DEFAULTS, suite["base"])
    base = merge(base, {"plugins": plugins.load_plugins(base["plugins"])})
    validate(base)
    names = set()
    for key, values in suite["grid"].items():
        for value in values:
            cfg = validate(merge(base, {key: copy.deepcopy(value)}))
            if key in ("init", "acquisition"):
                names.add(getattr(cfg, key).name)
    assert {"shrink_only", "tempered_entropy"} <= names


# --- warmstart list: every strategy, its parameters and one line of description ----------------------

NEW = {
    "entropy()  [needs: probs]": "Highest predictive entropy −Σ p·log p over the classes.",
    "least_confidence()  [needs: probs]": "Lowest top-class probability (the least confident predictions).",
    "badge()  [needs: probs, embeddings]": "k-means++ seeding on gradient embeddings",
    "coreset()  [needs: embeddings, labeled_embeddings]": "k-center greedy on embeddings",
    "bald(mc_samples=20)  [needs: mc_probs]": "needs model.dropout > 0",
    "reset_head()": "Warm start except the head (the last linear layer), which starts fresh.",
    "shrink_perturb_gaussian(shrink=0.4, perturb=0.01, bn_stats='fresh')": "θ ← shrink·θ_prev + N(0, perturb²)",
    "warm_partial(blocks=None)": "Warm-start the first `blocks` blocks (default: half, rounded down), fresh for the rest.",
}


def test_list_describes_every_strategy_in_one_line(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for signature, description in NEW.items():
        at = lines.index(f"  {signature}")
        assert lines[at + 1].startswith("      ") and description in lines[at + 1], signature
    for registry in (INIT_STRATEGIES, ACQUISITION_STRATEGIES):
        # The built-ins; plugins other tests loaded into this process are theirs to describe.
        for entry in (e for e in registry.entries() if e.fn.__module__.startswith("strategies.")):
            assert entry.doc and "\n" not in entry.doc and len(entry.doc) <= 110, entry.name
            assert entry.doc[0].isupper() or entry.doc[0] == "k", entry.name
            assert entry.doc.endswith((".", ")")), entry.name
    acquisition = "\n".join(lines[lines.index("acquisition strategies:") :])
    for name in ("entropy", "least_confidence", "badge", "coreset", "bald"):
        assert f"  {name}(" in acquisition
    assert all(f"  {n}(" not in acquisition for n in ("reset_head", "warm_partial", "shrink_perturb_gaussian"))
