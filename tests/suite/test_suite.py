"""Suite files: grid expansion, validation, the --out guard and the summary (no Ray here)."""

from __future__ import annotations

import dataclasses
import hashlib
import textwrap

import pytest

from engine.errors import ConfigError
from engine.schema.registry import PluginChanged
from engine.storage.store import read_manifest
from engine.suite.options import SuiteOptions, set_up_suite
from engine.suite.suite_file import check_pools, load_suite, locate
from engine.suite.tune import describe_point, prepare_out


def write(tmp_path, text: str, name: str = "suite.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


THREE_BY_THREE = """
    name: tiny
    base:
      rounds: {initial: 100, per_round: 100, max_rounds: 2}
    grid:
      init:
        - {name: random}
        - {name: warm}
        - {name: shrink_perturb, shrink: 0.4, perturb: 0.1}
      seed: [0, 1, 2]
"""


def test_suite_options_are_checked_when_built_and_the_set_up_writes_nothing(tmp_path, monkeypatch):
    with pytest.raises(
        ConfigError, match=r"'max_concurrent' parameter \(--max-concurrent\) must be an int >= 1. Got 0"
    ):
        SuiteOptions.build("tiny", max_concurrent=0)
    with pytest.raises(ConfigError, match=r"'--trials-per-gpu' option must be 'auto' or an integer in \[1, 64\]"):
        SuiteOptions("tiny", trials_per_gpu=0)
    options = SuiteOptions.build("tiny", "file:///tmp/x", trials_per_gpu="2", sets=["seed=1"])
    assert (options.out, options.trials_per_gpu, options.sets) == ("/tmp/x", 2, ("seed=1",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.resume = True
    monkeypatch.chdir(tmp_path)
    setup = set_up_suite(SuiteOptions.build(write(tmp_path, THREE_BY_THREE), max_concurrent=2))
    assert (setup.out, setup.options.max_concurrent) == ("results/tiny", 2)  # the default out, filled in
    assert setup.trial_ids == tuple(t.trial_id for t in setup.suite.trials) and len(setup.trial_ids) == 9
    assert set(setup.rounds.values()) == {2}
    assert [p for p in (tmp_path / "results").rglob("*") if p.is_file()] == []  # no manifest yet, no rows
    with pytest.raises(ConfigError, match="packs trials that run on GPUs"):
        set_up_suite(SuiteOptions.build(write(tmp_path, THREE_BY_THREE), trials_per_gpu=2))


def test_mappings_times_seeds_is_nine_validated_trials(tmp_path):
    suite = load_suite(write(tmp_path, THREE_BY_THREE))
    assert suite.name == "tiny"
    assert len(suite.trials) == 9
    assert [t.config.init.name for t in suite.trials[:3]] == ["random", "random", "random"]
    assert [t.config.seed for t in suite.trials[:3]] == [0, 1, 2]
    assert {t.config.suite for t in suite.trials} == {"tiny"}
    assert len({t.trial_id for t in suite.trials}) == 9
    # The base applies to every trial; component defaults are filled in.
    assert {t.config.rounds.max_rounds for t in suite.trials} == {2}
    assert suite.trials[-1].config.init.bn_stats == "fresh"
    # Stable ids: the same file gives the same ids.
    again = load_suite(write(tmp_path, THREE_BY_THREE)).trials
    assert [t.trial_id for t in again] == [t.trial_id for t in suite.trials]
    assert suite.grid_keys() == ["init"]


def test_dotted_keys_cross_into_the_shrink_perturb_grid(tmp_path):
    suite = load_suite(
        write(
            tmp_path,
            """
            name: grid
            base: {init: {name: shrink_perturb, shrink: 0.5, perturb: 0.01}}
            grid:
              init.shrink: [0.1, 0.3]
              init.perturb: [0.0001, 0.001, 0.01]
            """,
        )
    )
    pairs = [(t.config.init.shrink, t.config.init.perturb) for t in suite.trials]
    assert pairs == [(s, p) for s in (0.1, 0.3) for p in (0.0001, 0.001, 0.01)]
    assert suite.grid_keys() == ["init.shrink", "init.perturb"]


def test_a_mapping_replaces_the_subtree(tmp_path):
    suite = load_suite(
        write(
            tmp_path,
            """
            name: replace
            base:
              init: {name: shrink_perturb, shrink: 0.9, perturb: 0.01}
              convergence: {patience: 5, max_epochs: 50}
            grid:
              init: [{name: shrink_perturb, shrink: 0.2}]
              convergence: [{train_acc: 0.95}]
            """,
        )
    )
    (trial,) = suite.trials
    assert trial.config.init.to_dict() == {"name": "shrink_perturb", "shrink": 0.2, "perturb": 0.1, "bn_stats": "fresh"}
    # The section is its defaults plus the mapping: the base's patience is gone.
    assert trial.config.convergence.to_dict() == {
        "train_acc": 0.95,
        "patience": None,
        "min_delta": 0.0,
        "max_epochs": 1000,
        "on_diverge": "stop",
    }


def test_a_list_of_grids_concatenates(tmp_path):
    suite = load_suite(
        write(
            tmp_path,
            """
            name: two
            grid:
              - {model: [{name: mlp}], seed: [0, 1]}
              - {model: [{name: logreg}], convergence.patience: [3]}
            """,
        )
    )
    assert [(t.config.model.name, t.config.convergence.patience) for t in suite.trials] == [
        ("mlp", None),
        ("mlp", None),
        ("logreg", 3),
    ]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (
            "init.shrink: [0.5, 1.5]",
            "trial 2 (init.shrink=1.5): The 'shrink' parameter of shrink_perturb must be a float in [0, 1]. Got 1.5.",
        ),
        ("init: [{name: warmest}]", "Unknown init strategy 'warmest'; known:"),
        ("rounds.per_rond: [5]", "Did you mean 'per_round'?"),
        ("seed: []", "must have a non-empty list of values"),
        ("seed: [0, 0]", "trials 1 and 2 (seed=0) are the same config"),
    ],
)
def test_invalid_trials_are_named_and_nothing_runs(tmp_path, grid, message):
    path = write(tmp_path, f"name: bad\nbase: {{init: {{name: shrink_perturb}}}}\ngrid:\n  {grid}\n")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_suite_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="needs a 'name'"):
        load_suite(write(tmp_path, "base: {}\n"))
    with pytest.raises(ConfigError, match="Unknown suite key 'grids'"):
        load_suite(write(tmp_path, "name: x\ngrids: {}\n"))
    with pytest.raises(ConfigError, match="shipped: .*quickstart"):
        locate("no_such_suite")
    assert locate("quickstart").endswith("engine/suites/quickstart.yaml")


def test_check_pools_refuses_impossible_rounds_before_running(tmp_path):
    suite = load_suite(write(tmp_path, "name: big\ngrid:\n  rounds.per_round: [100, 5000]\n"))
    with pytest.raises(ConfigError, match=r"trial 2 \(rounds.per_round=5000\).*pool size 1198"):
        check_pools(suite)
    missing = load_suite(
        write(
            tmp_path,
            f"name: gone\nbase: {{dataset: {{name: cifar10, root: {tmp_path}/none, download: false}}}}\n",
            "m.yaml",
        )
    )
    with pytest.raises(ConfigError, match="cifar-10-batches-py"):
        check_pools(missing)


def test_out_guard(tmp_path):
    out = str(tmp_path / "out")
    suite = load_suite(write(tmp_path, THREE_BY_THREE))
    prepare_out(suite, out, resume=False)  # fresh: records the suite
    with pytest.raises(ConfigError, match="pass --resume"):
        prepare_out(suite, out, resume=False)
    prepare_out(suite, out, resume=True)
    other = load_suite(write(tmp_path, THREE_BY_THREE.replace("name: tiny", "name: other"), "o.yaml"))
    for resume in (False, True):
        with pytest.raises(ConfigError, match="holds suite 'tiny', not 'other'"):
            prepare_out(other, out, resume=resume)
    changed = load_suite(write(tmp_path, THREE_BY_THREE.replace("[0, 1, 2]", "[0, 1]"), "c.yaml"))
    with pytest.raises(ConfigError, match="changed since"):
        prepare_out(changed, out, resume=True)
    # A directory with rows from a plain run is not a suite's.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x-round0001.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match="not from suite 'tiny'"):
        prepare_out(suite, str(plain), resume=True)


def test_describe_point_names_components_by_their_name():
    # (the suite's summary is engine.analysis.results.summary, tested in tests/analysis/test_summary.py)
    assert describe_point({"init": {"name": "warm"}, "seed": 1}) == "init=warm seed=1"
    point = {"init": {"name": "shrink_perturb", "shrink": 0.4, "perturb": 0.1}}
    assert describe_point(point) == "init=shrink_perturb(0.4, 0.1)"


def test_set_overrides_the_base_before_the_grid(tmp_path):
    path = write(tmp_path, THREE_BY_THREE)
    suite = load_suite(path, sets=["scaling.gpus_per_worker=0.5", "rounds.max_rounds=4", "init.shrink=0.9"])
    assert {t.config.scaling.gpus_per_worker for t in suite.trials} == {0.5}
    assert {t.config.rounds.max_rounds for t in suite.trials} == {4}
    # The grid still wins over the base: its mappings replace the init subtree.
    assert suite.trials[-1].config.init.shrink == 0.4
    with pytest.raises(ConfigError, match="Unknown config key 'scaling.gpu'"):
        load_suite(path, sets=["scaling.gpu=1"])


def test_check_pools_knows_pretraining(tmp_path):
    # The trial runs on half the pool (599 of 1198): 700 per round no longer fits.
    path = write(
        tmp_path,
        "name: pre\nbase: {pretrain: {dataset: digits, fraction: 0.5}}\ngrid:\n  rounds.per_round: [100, 700]\n",
    )
    with pytest.raises(ConfigError, match=r"trial 2 \(rounds.per_round=700\).*pool size 599"):
        check_pools(load_suite(path))
    # A missing source dataset fails here, before any trial starts.
    source = f"{{pretrain: {{dataset: cifar10}}, dataset: {{root: {tmp_path}/none, download: false}}}}"
    missing = load_suite(write(tmp_path, f"name: src\nbase: {source}\n", "s.yaml"))
    with pytest.raises(ConfigError, match="cifar-10-batches-py"):
        check_pools(missing)


def test_resume_refuses_a_suite_whose_plugin_changed(tmp_path, monkeypatch):
    """The manifest records the suite's plugins' code; --resume with another version of it is
    refused in one line before anything is written (each trial's rows would mix two versions)."""
    from engine.schema import plugins
    from strategies.acquisition import ACQUISITION_STRATEGIES

    monkeypatch.setattr(ACQUISITION_STRATEGIES, "_entries", dict(ACQUISITION_STRATEGIES._entries))
    monkeypatch.setattr(plugins, "_loaded", {})
    plugin = tmp_path / "suite_plugin.py"
    body = "from strategies.acquisition import register\n@register('suite_pick')\ndef pick(outputs, k, rng):\n"
    plugin.write_text(body + "    return list(range(k))\n")
    old = hashlib.sha256(plugin.read_bytes()).hexdigest()[:12]
    text = f"name: coded\nbase:\n  plugins: [{plugin}]\n  acquisition: {{name: suite_pick}}\ngrid:\n  seed: [0, 1]\n"
    path, out = write(tmp_path, text), str(tmp_path / "out")
    prepare_out(load_suite(path), out, resume=False)
    assert read_manifest(out)["plugins"] == {"suite_plugin.py": old}
    prepare_out(load_suite(path), out, resume=True)  # the same code: resumes

    plugin.write_text(body + "    return list(range(1, k + 1))\n")
    new = hashlib.sha256(plugin.read_bytes()).hexdigest()[:12]
    with pytest.warns(PluginChanged):
        changed = load_suite(path)  # the edited file is imported again in this process
    manifest = read_manifest(out)
    with pytest.raises(ConfigError) as info:
        prepare_out(changed, out, resume=True)
    assert str(info.value) == (
        f"Plugin suite_plugin.py changed since suite 'coded' ran in {out}: sha256 {old} then, {new} now, and its "
        "trials would mix two versions of that code; restore it, or run the new one into another --out."
    )
    assert read_manifest(out) == manifest
